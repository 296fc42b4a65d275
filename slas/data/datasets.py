"""Prompt datasets from files: HPD-v2 JSON, GenEval metadata, JSONL, and a suffix dispatcher.

- **HPD-v2** (Wu et al., arXiv:2306.09341; HF ``ymhao/HPDv2``): ``train.json`` is a list of
  ``{"human_preference": [int], "prompt": str, "file_path": [str]}``, one row per annotated
  *pair*, so prompts repeat; ``test.json`` is a list of ``{"prompt", "image_path", "rank",
  "raw_annotations"}`` (400 prompts); the HPS benchmark files (``benchmark/*.json``) are plain
  lists of prompt strings. :func:`load_hpd_prompts` reads all three, strips prompts, skips empty
  ones and (by default) keeps the first occurrence of each prompt, in file order. DanceGRPO
  trains on the same prompts as a text file (``assets/prompts.txt``, one per line), which
  :func:`slas.data.prompts.load_text_prompts` reads.
- **GenEval** (djghosh13/geneval ``prompts/evaluation_metadata.jsonl``): one validated record per
  line through :func:`slas.eval.geneval_io.load_metadata`; the record is the item's metadata.
- **JSONL**: one JSON object per line with a string ``prompt`` (key configurable); the whole
  record is the item's metadata.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slas.data.prompts import PromptItem, load_text_prompts
from slas.errors import SlasError


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise SlasError(f"{what} {path} not found; pass an existing file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SlasError(f"{path}: not valid UTF-8 ({err.reason}); save the file as UTF-8") from None
    except json.JSONDecodeError as err:
        raise SlasError(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg}); {what} "
                        "must be one JSON list") from None


def load_hpd_prompts(path: str | Path, dedupe: bool = True) -> list[PromptItem]:
    """Prompts of an HPD-v2 ``train.json`` / ``test.json`` or an HPS benchmark list.

    Args:
        path: the JSON file (a list of records with a string ``prompt``, or of strings).
        dedupe: keep only the first occurrence of each (stripped) prompt; ``train.json`` holds
            one row per preference pair, so without it prompts repeat.

    Returns:
        Items in file order with empty metadata. Empty prompts are skipped with a warning.
    """
    path = Path(path)
    data = _read_json(path, "HPD-v2 prompt file")
    if not isinstance(data, list):
        raise SlasError(f"{path}: expected a JSON list of HPD-v2 records (train.json/test.json) "
                        f"or of prompt strings, got a {type(data).__name__}")
    prompts: list[str] = []
    empty = 0
    for index, entry in enumerate(data):
        text = entry.get("prompt") if isinstance(entry, dict) else entry
        if not isinstance(text, str):
            raise SlasError(f"{path}: entry {index} has no string 'prompt' ({str(entry)[:80]}); "
                            "every record needs one")
        text = text.strip()
        if text:
            prompts.append(text)
        else:
            empty += 1
    if dedupe:
        prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise SlasError(f"{path}: holds no prompts ({len(data)} entries, {empty} empty)")
    if empty:
        warnings.warn(f"{path}: skipped {empty} empty prompt(s); {len(prompts)} kept",
                      stacklevel=2)
    return [PromptItem(p, {}) for p in prompts]


def load_geneval_prompts(path: str | Path,
                         colors: Sequence[str] | None = None) -> list[PromptItem]:
    """GenEval ``evaluation_metadata.jsonl`` (553 prompts) with each record as metadata.

    Args:
        path: the metadata file.
        colors: allowed colour words; None = the official ten (GenEval's classifier labels).
    """
    from slas.eval.geneval import GENEVAL_COLORS
    from slas.eval.geneval_io import load_metadata

    records = load_metadata(path, GENEVAL_COLORS if colors is None else colors)
    return [PromptItem(r["prompt"], dict(r)) for r in records]


def load_jsonl_prompts(path: str | Path, prompt_key: str = "prompt") -> list[PromptItem]:
    """One JSON object per line with a string ``prompt_key``; the record is the metadata.

    Blank lines are skipped and reported with a warning; any other bad line raises naming
    ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise SlasError(f"prompt file {path} not found; pass an existing .jsonl file")
    items: list[PromptItem] = []
    blank = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise SlasError(f"{path}: not valid UTF-8 ({err.reason}); save the file as UTF-8") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            blank += 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SlasError(f"{path}:{lineno}: invalid JSON ({err.msg}); each line must be "
                            "one JSON object") from None
        text = record.get(prompt_key) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise SlasError(f"{path}:{lineno}: needs a non-empty string {prompt_key!r} field")
        items.append(PromptItem(text.strip(), record))
    if not items:
        raise SlasError(f"prompt file {path} holds no prompts")
    if blank:
        warnings.warn(f"{path}: skipped {blank} blank line(s); {len(items)} prompts kept",
                      stacklevel=2)
    return items


def load_prompt_file(path: str | Path) -> list[PromptItem]:
    """Dispatch on the suffix: ``.txt`` text, ``.json`` HPD-v2, ``.jsonl`` JSONL records.

    GenEval metadata is JSONL too; read it with :func:`load_geneval_prompts` to validate it.
    """
    path = Path(path)
    loaders = {".txt": load_text_prompts, ".json": load_hpd_prompts, ".jsonl": load_jsonl_prompts}
    if path.suffix not in loaders:
        raise SlasError(f"prompt file {path}: unknown suffix {path.suffix!r}; use .txt (one "
                        "prompt per line), .json (HPD-v2 list) or .jsonl (records with 'prompt')")
    return loaders[path.suffix](path)
