"""GenEval files: prompt metadata, the generated-image folder layout, results JSONL and summary.

Formats follow djghosh13/geneval: ``prompts/evaluation_metadata.jsonl`` (one record per line),
the ``<root>/<%05d>/metadata.jsonl`` + ``samples/<n>.png`` layout read by
``evaluation/evaluate_images.py``, its ``results.jsonl`` rows, and the aggregation of
``evaluation/summary_scores.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from slas.errors import SlasError
from slas.eval.geneval import GENEVAL_COLORS, GENEVAL_TAGS, ImageResult, validate_metadata

_IMAGE_NAME = re.compile(r"\d+\.png")


class SampleRef(NamedTuple):
    """One generated image of the official folder layout.

    Attributes:
        prompt_index: number of the prompt folder (line index in the metadata file).
        image_index: number in the image file name (``00003.png`` -> 3).
        path: image file.
        metadata: the prompt's metadata record, shared by the images of one folder.
    """

    prompt_index: int
    image_index: int
    path: Path
    metadata: dict


class GenEvalRow(NamedTuple):
    """One results row (one image), as in upstream ``results.jsonl``.

    Attributes:
        filename: image path as given to the evaluator.
        tag: GenEval task.
        prompt: generation prompt.
        correct: the image passed every requirement.
        reason: failure messages joined by newlines ("" when correct).
        metadata: the prompt's metadata record.
        details: class name -> kept boxes as ``[x1, y1, x2, y2, score]``.
    """

    filename: str
    tag: str
    prompt: str
    correct: bool
    reason: str
    metadata: dict
    details: dict


class GenEvalSummary(NamedTuple):
    """Aggregate scores (upstream ``summary_scores.py``).

    Attributes:
        per_tag: tag -> fraction of that tag's images that are correct (0..1).
        overall: unweighted mean of ``per_tag`` over the tags present (the GenEval Overall).
        n_images: number of rows.
        pct_correct_images: percentage (0..100) of correct images.
        pct_correct_prompts: percentage (0..100) of prompts with at least one correct image.
    """

    per_tag: dict[str, float]
    overall: float
    n_images: int
    pct_correct_images: float
    pct_correct_prompts: float


def _parse_line(line: str, where: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise SlasError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None


def _require_prompt(record: Mapping, where: str) -> None:
    if not isinstance(record.get("prompt"), str):
        raise SlasError(f"{where}: field 'prompt' must be a string, got {record.get('prompt')!r}")


def load_metadata(
    path: str | os.PathLike, colors: Sequence[str] | None = GENEVAL_COLORS
) -> list[dict]:
    """Read and validate a GenEval ``evaluation_metadata.jsonl`` (one JSON object per line).

    Each line must satisfy ``validate_metadata`` and have a string ``prompt``. Blank lines are
    rejected because the line order is the prompt index of the folder layout.

    Args:
        path: the metadata file.
        colors: allowed colour words (default: the official ten), or None to accept any.

    Returns:
        The records, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise SlasError(f"{path}: GenEval metadata file not found; pass an existing .jsonl file")
    records: list[dict] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            where = f"{path} line {lineno}"
            if not line.strip():
                raise SlasError(f"{where}: empty line; every line must hold one JSON object")
            record = _parse_line(line, where)
            validate_metadata(record, where, colors)
            _require_prompt(record, where)
            records.append(record)
    if not records:
        raise SlasError(f"{path}: the metadata file is empty; it needs one JSON object per line")
    return records


def load_generation_folder(
    root: str | os.PathLike, colors: Sequence[str] | None = GENEVAL_COLORS
) -> list[SampleRef]:
    """List the images of the official GenEval output layout, sorted by prompt then image.

    Layout: ``<root>/<digits>/metadata.jsonl`` (that prompt's record as one JSON object) and
    ``<root>/<digits>/samples/<digits>.png``. As upstream, only all-digit folder names are read
    and other files (e.g. ``grid.png``) are ignored; both ``0000.png`` and ``00000.png`` are
    accepted. Unlike upstream's prefix match, the image name must match ``\\d+\\.png`` in full.

    Args:
        root: the output folder.
        colors: allowed colour words in the metadata, or None to accept any.

    Returns:
        One ``SampleRef`` per image.
    """
    root = Path(root)
    if not root.is_dir():
        raise SlasError(f"{root}: GenEval image folder not found; pass the generation output dir")
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    refs: list[SampleRef] = []
    for folder in folders:
        meta_path = folder / "metadata.jsonl"
        if not meta_path.is_file():
            raise SlasError(f"{meta_path}: missing; each prompt folder needs its metadata.jsonl")
        try:
            record = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SlasError(f"{meta_path}: invalid JSON ({err.msg} at line {err.lineno})") from None
        validate_metadata(record, str(meta_path), colors)
        _require_prompt(record, str(meta_path))
        samples = folder / "samples"
        if not samples.is_dir():
            raise SlasError(f"{samples}: missing; put the prompt's images in samples/<n>.png")
        images = sorted(
            (p for p in samples.iterdir() if p.is_file() and _IMAGE_NAME.fullmatch(p.name)),
            key=lambda p: int(p.stem),
        )
        refs.extend(SampleRef(int(folder.name), int(p.stem), p, record) for p in images)
    if not refs:
        raise SlasError(
            f"{root}: no images found; expected <root>/<digits>/samples/<digits>.png files"
        )
    return refs


def make_row(filename: str | os.PathLike, metadata: Mapping, result: ImageResult) -> GenEvalRow:
    """Build the results row of one evaluated image (upstream ``evaluate_image`` output)."""
    details = {
        name: [[float(v) for v in det.box[:4]] + [float(det.score)] for det in dets]
        for name, dets in result.kept.items()
    }
    return GenEvalRow(
        filename=str(filename), tag=metadata["tag"], prompt=metadata.get("prompt", ""),
        correct=bool(result.correct), reason=result.reason, metadata=dict(metadata),
        details=details,
    )


def write_results(path: str | os.PathLike, rows: Iterable[GenEvalRow]) -> None:
    """Write results JSONL, one row per image; replaces ``path`` atomically.

    ``metadata`` and ``details`` are stored as JSON strings, exactly as upstream's pandas
    output, so upstream ``summary_scores.py`` can read the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            out = row._asdict()
            out["metadata"] = json.dumps(row.metadata)
            out["details"] = json.dumps(row.details)
            fh.write(json.dumps(out) + "\n")
    os.replace(tmp, path)


def _json_field(obj: dict, key: str, where: str, default: object = None) -> dict:
    value = obj.get(key, default)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SlasError(f"{where}: field '{key}' is not valid JSON") from None
    if not isinstance(value, dict):
        raise SlasError(f"{where}: field '{key}' must be a JSON object, got {value!r}")
    return value


def read_results(path: str | os.PathLike) -> list[GenEvalRow]:
    """Read results JSONL written by ``write_results`` or by upstream ``evaluate_images.py``.

    ``metadata`` / ``details`` may be JSON strings (upstream) or objects; ``details`` may be
    absent.
    """
    path = Path(path)
    if not path.is_file():
        raise SlasError(f"{path}: GenEval results file not found")
    rows: list[GenEvalRow] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            where = f"{path} line {lineno}"
            if not line.strip():
                continue
            obj = _parse_line(line, where)
            if not isinstance(obj, dict):
                raise SlasError(f"{where}: expected a JSON object per line")
            missing = [k for k in ("filename", "tag", "prompt", "correct") if k not in obj]
            if missing:
                raise SlasError(f"{where}: missing field(s) {missing}")
            if not isinstance(obj["correct"], bool):
                got = obj["correct"]
                raise SlasError(f"{where}: field 'correct' must be true or false, got {got!r}")
            rows.append(GenEvalRow(
                filename=str(obj["filename"]), tag=str(obj["tag"]), prompt=str(obj["prompt"]),
                correct=obj["correct"], reason=str(obj.get("reason") or ""),
                metadata=_json_field(obj, "metadata", where),
                details=_json_field(obj, "details", where, default={}),
            ))
    return rows


def summarize(rows: Sequence[GenEvalRow]) -> GenEvalSummary:
    """Aggregate results as upstream ``summary_scores.py`` (GenEval section 1.6 of the notes).

    Per-tag score = mean of ``correct`` over that tag's images; Overall = unweighted mean of the
    per-tag scores (a macro average, not the image average). Only tags present in ``rows`` count:
    with a tag missing, Overall is the mean over the remaining ones (as upstream) and is not
    comparable with a full run; ``format_summary`` flags this. Prompts are identified by their
    metadata record (upstream groups by the metadata string); a prompt is correct if any of its
    images is. ``per_tag`` lists the six official tags first, in ``GENEVAL_TAGS`` order.
    """
    if not rows:
        raise SlasError("summarize: no result rows; evaluate at least one image first")
    by_tag: dict[str, list[bool]] = {}
    by_prompt: dict[str, bool] = {}
    for row in rows:
        by_tag.setdefault(row.tag, []).append(row.correct)
        key = json.dumps(row.metadata, sort_keys=True)
        by_prompt[key] = by_prompt.get(key, False) or row.correct
    order = [t for t in GENEVAL_TAGS if t in by_tag] + [t for t in by_tag if t not in GENEVAL_TAGS]
    per_tag = {t: sum(by_tag[t]) / len(by_tag[t]) for t in order}
    return GenEvalSummary(
        per_tag=per_tag,
        overall=sum(per_tag.values()) / len(per_tag),
        n_images=len(rows),
        pct_correct_images=100.0 * sum(r.correct for r in rows) / len(rows),
        pct_correct_prompts=100.0 * sum(by_prompt.values()) / len(by_prompt),
    )


def format_summary(summary: GenEvalSummary) -> str:
    """Markdown table of the per-tag scores and Overall, plus the image/prompt percentages."""
    lines = ["| task | score |", "|---|---|"]
    lines += [f"| {tag} | {score:.4f} |" for tag, score in summary.per_tag.items()]
    lines.append(f"| **overall** | **{summary.overall:.4f}** |")
    lines.append("")
    lines.append(
        f"{summary.n_images} images; {summary.pct_correct_images:.2f}% correct images, "
        f"{summary.pct_correct_prompts:.2f}% correct prompts."
    )
    missing = [t for t in GENEVAL_TAGS if t not in summary.per_tag]
    if missing:
        lines.append(
            f"Missing tags {missing}: overall averages only the tags present and is not "
            "comparable with a full GenEval run."
        )
    return "\n".join(lines) + "\n"
