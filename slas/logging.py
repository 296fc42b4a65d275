"""Namespaced metrics to ``metrics.jsonl`` (always) and TensorBoard / wandb (when asked), plus
phase timers whose names are the metric keys (``time/rollout``, ...)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slas.errors import SlasError


class PhaseTimer:
    """Accumulates wall time per phase; ``pop()`` returns ``{"time/<phase>": seconds}``."""

    def __init__(self) -> None:
        self._times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{phase}"
            self._times[key] = self._times.get(key, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        times, self._times = self._times, {}
        return times


class MetricsLogger:
    """Writes one JSON object per logged step; mirrors scalars to the optional trackers."""

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                pass
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            import wandb as wandb_module  # a clear ImportError is the right message here

            self._wandb = wandb_module.init(dir=str(run_dir), config=dict(config or {}))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                if value is not None:
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def log_values(self, step: int, name: str, values: Any) -> None:
        """Append ``{"step", name: [floats]}`` to ``<run>/<name>.jsonl`` (e.g. advantages)."""
        with (self.path.parent / f"{name}.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, name: [round(float(v), 6) for v in values]}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_jsonl(path: Path, check: Callable[[dict[str, Any]], str | None] | None = None
               ) -> list[dict[str, Any]]:
    """The objects of the non-blank lines of a run's JSONL file, each with an integer ``step``
    and passing ``check`` (which returns a problem or None); a bad line -> SlasError file:line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SlasError(f"{path}: cannot be read as UTF-8 text ({err}); "
                        "point at a run directory the trainer wrote") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SlasError(f"{path}:{lineno}: unreadable JSON ({err.msg}); "
                            "repair or delete that line") from None
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            problem: str | None = 'expected a JSON object with an integer "step"'
        else:
            problem = check(row) if check else None
        if problem:
            raise SlasError(f"{path}:{lineno}: {problem}; repair or delete that line")
        out.append(row)
    return out


def read_metrics(run_dir: Path, check: Callable[[dict[str, Any]], str | None] | None = None
                 ) -> list[dict[str, Any]]:
    """All rows of ``<run_dir>/metrics.jsonl`` (none if absent), merged by step in step order:
    a step logged twice (training then evaluation, or a resumed run) keeps the last values."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for row in read_jsonl(path, check):
        rows.setdefault(row["step"], {}).update(row)
    return [rows[k] for k in sorted(rows)]
