"""Atomic checkpoints of everything that determines the next training step (DESIGN §8).

A checkpoint is one file ``<run>/checkpoints/step_XXXXXX.pt`` written to a temporary name and
renamed into place, so a crash or a full disk leaves the previous checkpoint intact. It holds
plain tensors and containers only and loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slas.errors import SlasError

FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d{6,})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the newest ``keep_last``."""
    folder = checkpoint_dir(run_dir)
    final = folder / f"step_{step:06d}.pt"
    tmp = folder / f".{final.name}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        previous = latest_checkpoint(run_dir)
        kept = f"; the previous checkpoint {previous} is intact" if previous else ""
        raise SlasError(
            f"could not write checkpoint {final}: {err.strerror or err}{kept}; free "
            "space or choose another run.output_dir"
        ) from None
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    try:
        # mmap: a rank reads the pages it copies, not the whole file (a FLUX checkpoint with
        # AdamW moments is ~144 GB)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "mmap can only be used" in reason:  # torch's wording for a file that is not a zip
            reason = "not a torch.save zip archive (truncated or not written by slas)"
        raise SlasError(f"cannot read checkpoint {path}: {reason}; remove it to resume from "
                        "the previous checkpoint") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise SlasError(f"{path} is not a slas checkpoint of format {FORMAT_VERSION}")
    return state


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU, and CUDA when present)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
