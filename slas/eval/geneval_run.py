"""Score a generated GenEval folder: detect, classify colours, apply the rules, summarise.

The folder is the official layout written by ``slas.eval.generate.generate_geneval`` (and by
djghosh13/geneval ``generation/diffusers_generate.py``); scoring follows upstream
``evaluation/evaluate_images.py`` image by image (``slas.eval.geneval.evaluate_image``) and
aggregation ``evaluation/summary_scores.py`` (``slas.eval.geneval_io.summarize``).

Resumable: each scored image is appended to ``results.jsonl`` at once; a rerun skips the images
already there (matched by ``<prompt folder>/<image name>``, so a moved folder still resumes) and
a line torn by a crash is dropped and redone. ``scoring.json`` records the backend and the
thresholds; resuming with different ones is refused, so one results file never mixes scorers.
The file is rewritten in folder order at the end, in upstream's row format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from slas.errors import SlasError
from slas.eval.geneval import (
    GENEVAL_COLORS,
    ColorClassifier,
    Detector,
    GenEvalThresholds,
    evaluate_image,
)
from slas.eval.geneval_io import (
    GenEvalRow,
    GenEvalSummary,
    format_summary,
    load_generation_folder,
    make_row,
    read_results,
    write_results,
)

RESULTS = "results.jsonl"
SCORING = "scoring.json"


class ScoreResult(NamedTuple):
    """What ``score_folder`` did.

    Attributes:
        scored: images evaluated by this call.
        skipped: images whose row was already in the results file.
        rows: one row per image of the selection, in folder order (prompt, then image).
        results: the results file.
    """

    scored: int
    skipped: int
    rows: list[GenEvalRow]
    results: Path


def load_image(path: str | os.PathLike) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB, EXIF orientation applied (as upstream reads images)."""
    try:
        with Image.open(path) as img:
            return np.array(ImageOps.exif_transpose(img).convert("RGB"))
    except OSError as err:
        raise SlasError(f"{path}: cannot read the image ({err}); delete it and generate again"
                        ) from None


def image_key(filename: str | os.PathLike) -> str:
    """``<prompt folder>/<image name>`` of a layout path (``.../00012/samples/00003.png``)."""
    parts = Path(filename).parts
    if len(parts) < 3:
        raise SlasError(f"results row filename {filename!r} is not <root>/<idx>/samples/<n>.png")
    return f"{parts[-3]}/{parts[-1]}"


def _row_line(row: GenEvalRow) -> str:
    """One results line in ``write_results``' format (metadata/details as JSON strings)."""
    out = row._asdict()
    out["metadata"], out["details"] = json.dumps(row.metadata), json.dumps(row.details)
    return json.dumps(out) + "\n"


def _read_done(path: Path) -> dict[str, GenEvalRow]:
    """Rows already in ``path`` by image key; a torn last line (no newline) is cut off."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
    return {image_key(row.filename): row for row in read_results(path)}


def _layout_order(key: str) -> tuple:
    """Sort key of ``<prompt folder>/<image name>``: numerically, other names last."""
    folder, name = key.split("/")
    stem = name.split(".")[0]
    if folder.isdigit() and stem.isdigit():
        return (0, int(folder), int(stem), key)
    return (1, 0, 0, key)


def _check_scoring(path: Path, scoring: Mapping) -> None:
    """Write ``scoring.json``, or refuse when it records a different scorer."""
    scoring = json.loads(json.dumps(dict(scoring)))  # compare JSON values (tuples -> lists)
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise SlasError(f"{path}: not valid JSON; delete it together with "
                            f"{path.with_name(RESULTS)}") from None
        diff = sorted(k for k in set(old) | set(scoring) if old.get(k) != scoring.get(k))
        if diff:
            raise SlasError(f"{path}: the results were scored with another scorer (differ: "
                            f"{diff}); score into a new folder or delete {RESULTS} and {SCORING}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(scoring), indent=1) + "\n", encoding="utf-8")


def score_folder(
    root: str | os.PathLike,
    detector: Detector,
    color_classifier: ColorClassifier | None,
    *,
    scorer: Mapping[str, object] | None = None,
    thresholds: GenEvalThresholds | None = None,
    max_prompts: int | None = None,
    colors: Sequence[str] | None = GENEVAL_COLORS,
    show_progress: bool = False,
) -> ScoreResult:
    """Score every image of a GenEval folder into ``<root>/results.jsonl``, resumably.

    Args:
        root: the generation folder (``<root>/<%05d>/metadata.jsonl`` + ``samples/<n>.png``).
        detector: image ``[H, W, 3]`` uint8 -> detections per class.
        color_classifier: needed when a prompt asks for a colour.
        scorer: JSON-able description of the backend (detector, checkpoints) kept with the
            thresholds in ``scoring.json``; resuming with a different one is refused.
        thresholds: GenEval thresholds (None = ``GenEvalThresholds()``, the official ones).
        max_prompts: only prompt folders with index < this (None = all).
        colors: allowed colour words in the folder metadata (default: GenEval's ten; None =
            any word).
        show_progress: print a progress bar to stderr.

    Returns:
        ``ScoreResult``; ``slas.eval.geneval_io.summarize(result.rows)`` gives the scores.
    """
    root = Path(root)
    thresholds = thresholds or GenEvalThresholds()
    refs = load_generation_folder(root, colors)
    if max_prompts is not None:
        refs = [r for r in refs if r.prompt_index < max_prompts]
        if not refs:
            raise SlasError(f"{root}: no images among the first {max_prompts} prompts")
    results = root / RESULTS
    _check_scoring(root / SCORING, {**dict(scorer or {}), "thresholds": asdict(thresholds)})
    done = _read_done(results)
    todo = [r for r in refs if image_key(r.path) not in done]
    n_todo = len(todo)
    if show_progress:
        from tqdm import tqdm

        todo = tqdm(todo, desc="GenEval scoring", unit="image")
    with results.open("a", encoding="utf-8") as fh:
        for ref in todo:
            image = load_image(ref.path)
            result = evaluate_image(image, ref.metadata, detector(image), color_classifier,
                                    thresholds)
            row = make_row(ref.path, ref.metadata, result)
            fh.write(_row_line(row))
            fh.flush()
            done[image_key(ref.path)] = row
    write_results(results, [done[k] for k in sorted(done, key=_layout_order)])
    rows = [done[image_key(r.path)] for r in refs]
    return ScoreResult(n_todo, len(refs) - n_todo, rows, results)


def summary_to_dict(summary: GenEvalSummary, scorer: Mapping[str, object] | None = None) -> dict:
    """JSON-able summary: per-tag scores, Overall (macro mean), image/prompt percentages."""
    return {**summary._asdict(), "scorer": dict(scorer or {})}


def write_summary(out_dir: str | os.PathLike, summary: GenEvalSummary,
                  scorer: Mapping[str, object] | None = None) -> tuple[Path, Path]:
    """Write ``summary.json`` (``summary_to_dict``) and ``summary.md`` (``format_summary``)."""
    out_dir = Path(out_dir)
    js, md = out_dir / "summary.json", out_dir / "summary.md"
    js.write_text(json.dumps(summary_to_dict(summary, scorer), indent=1) + "\n", encoding="utf-8")
    md.write_text(format_summary(summary), encoding="utf-8")
    return js, md
