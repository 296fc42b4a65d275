"""UniGenBench++ judge client: OpenAI-compatible chat completions, retries, resume.

Reproduces the request side of CodeGoat24/UniGenBench ``eval/src/eval_common.py`` and
``eval/vllm_request.py`` with the standard library only (urllib, threads):

- ``gemini`` backend (leaderboard judge ``gemini-2.5-pro``): one user message with the text
  first, then the image as a base64 data URL of the file's own bytes (MIME from its name);
- ``vllm`` backend (offline EvalModel served as ``QwenVL``): the image first, re-encoded as
  RGB JPEG quality 95, then the text;
- ``max_tokens`` 4096; up to ``max_retries`` (10) more tries when an answer does not parse.

Unlike upstream, a judge that stays unreachable is an error, never a silent drop: after its
retries ``OpenAIJudge`` raises ``SlasError`` naming the URL. Every finished judgement is
appended to a progress JSONL at once (upstream keeps ``<results>.progress.jsonl`` keyed by image
path), so rerunning the same command resumes without redoing finished work.
"""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
import mimetypes
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Literal, NamedTuple

from slas.errors import SlasError
from slas.eval.unigenbench import (
    Judgement,
    JudgePrompts,
    UniGenBenchPrompts,
    build_judge_prompt,
    parse_judgement,
)

Backend = Literal["gemini", "vllm"]
JudgeFn = Callable[[str, Path], "str | None"]
"""A judge: (judge prompt text, image path) -> answer text (None = no content)."""

DEFAULT_EXTRA_BODY: dict[str, dict] = {"gemini": {}, "vllm": {"do_sample": False}}
"""Extra request fields per backend when ``JudgeSettings.extra_body`` is None (the official
offline call asks for greedy decoding)."""

_RETRYABLE_HTTP = (408, 425, 429)


@dataclass(frozen=True)
class JudgeSettings:
    """How to reach the judge.

    Attributes:
        base_url: OpenAI-style base URL; requests go to ``<base_url>/chat/completions``
            (vLLM: ``http://host:8080/v1``; Gemini: its OpenAI-compatible base).
        model: model name sent in the request (``gemini-2.5-pro``; vLLM: the served name,
            ``QwenVL`` in the official instructions).
        backend: message layout and image encoding, ``"gemini"`` or ``"vllm"``.
        api_key: sent as ``Authorization: Bearer`` when given.
        max_tokens: answer length limit (official 4096).
        timeout_s: socket timeout of one request, seconds (upstream vLLM client: 300).
        max_retries: extra tries after a failed request (connection error, timeout, HTTP 5xx,
            408/425/429); upstream 10.
        backoff_s: first wait between tries; doubles each time up to ``backoff_max_s``
            (upstream ``min(2**attempt, 10)``).
        backoff_max_s: longest wait between tries.
        extra_body: extra JSON fields of the request; None = ``DEFAULT_EXTRA_BODY[backend]``.
    """

    base_url: str
    model: str
    backend: Backend = "gemini"
    api_key: str | None = field(default=None, repr=False)
    max_tokens: int = 4096
    timeout_s: float = 300.0
    max_retries: int = 10
    backoff_s: float = 1.0
    backoff_max_s: float = 10.0
    extra_body: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        if self.backend not in DEFAULT_EXTRA_BODY:
            raise SlasError(f"judge backend {self.backend!r} is unknown; use gemini or vllm")
        if not self.base_url.startswith(("http://", "https://")):
            raise SlasError(f"judge URL {self.base_url!r} must start with http:// or https://")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise SlasError("judge settings: need max_retries >= 0, timeout_s > 0, backoff_s >= 0")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def encode_image(path: str | os.PathLike, backend: Backend) -> str:
    """Image file -> data URL: the file's bytes (``gemini``) or RGB JPEG quality 95 (``vllm``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if backend == "vllm":
            with Image.open(path) as img:
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="JPEG", quality=95)
            return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        raw = path.read_bytes()
    except (OSError, UnidentifiedImageError) as err:
        raise SlasError(f"{path}: cannot read the image ({err}); regenerate it") from None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


def build_messages(text: str, image_url: str, backend: Backend) -> list[dict]:
    """One user message: text then image (``gemini``) or image then text (``vllm``)."""
    parts = [{"type": "text", "text": text},
             {"type": "image_url", "image_url": {"url": image_url}}]
    return [{"role": "user", "content": parts if backend == "gemini" else parts[::-1]}]


class OpenAIJudge:
    """Callable judge over an OpenAI-compatible ``/chat/completions`` endpoint.

    Thread-safe. Once one call has exhausted its retries, calls that are retrying at the same
    time give up at their next wait instead of each waiting out their own retries.
    """

    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        self._failed = 0  # bumped when a call gives up
        self._cond = threading.Condition()

    def __call__(self, text: str, image: Path) -> str | None:
        s = self.settings
        body = {"model": s.model, "messages": build_messages(text, encode_image(image, s.backend),
                                                             s.backend),
                "max_tokens": s.max_tokens,
                **(DEFAULT_EXTRA_BODY[s.backend] if s.extra_body is None else s.extra_body)}
        data = json.dumps(body).encode("utf-8")
        failed_at_start, last = self._failed, ""
        for attempt in range(s.max_retries + 1):
            try:
                return self._post(data)
            except _Retryable as err:
                last = str(err)
            if attempt == s.max_retries:
                break
            delay = min(s.backoff_s * 2 ** attempt, s.backoff_max_s)
            with self._cond:
                if self._cond.wait_for(lambda: self._failed != failed_at_start, timeout=delay):
                    break
        with self._cond:
            self._failed += 1
            self._cond.notify_all()
        raise SlasError(f"judge server {s.url} unreachable after {s.max_retries + 1} attempts "
                        f"(last error: {last}); start it or fix the judge URL, then rerun: "
                        "finished judgements are kept and will not be redone")

    def _post(self, data: bytes) -> str | None:
        s = self.settings
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        request = urllib.request.Request(s.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as err:
            try:
                detail = err.read()[:300].decode("utf-8", "replace")
            except OSError:
                detail = ""
            if err.code >= 500 or err.code in _RETRYABLE_HTTP:
                raise _Retryable(f"HTTP {err.code}: {detail}") from None
            raise SlasError(f"judge server {s.url} rejected the request with HTTP {err.code}: "
                            f"{detail}; check the judge model name, API key and URL") from None
        except (urllib.error.URLError, HTTPException, OSError) as err:  # includes timeouts
            raise _Retryable(repr(getattr(err, "reason", err))) from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"not a chat completion: {payload[:200]!r}") from None
        return content if isinstance(content, str) else None


class _Retryable(Exception):
    """A failed request worth trying again."""


class JudgeTask(NamedTuple):
    """One image to judge.

    Attributes:
        key: image path as a string (the progress/resume key).
        index: prompt index.
        image: image number j of ``<index>_<j><suffix>``.
        text: the judge prompt (``build_judge_prompt``).
        testpoints: the row's testpoints.
    """

    key: str
    index: int
    image: int
    text: str
    testpoints: tuple[str, ...]


def make_tasks(
    prompts: UniGenBenchPrompts,
    judge_prompts: JudgePrompts,
    image_dir: str | os.PathLike,
    *,
    images_per_prompt: int = 4,
    image_suffix: str = ".png",
) -> list[JudgeTask]:
    """One task per image ``<image_dir>/<index>_<j><suffix>``, j < ``images_per_prompt``
    (official: 4 and ``.png``). Every image must exist, as upstream requires."""
    image_dir = Path(image_dir)
    tasks, missing = [], []
    for rec in prompts.records:
        text = build_judge_prompt(rec, judge_prompts)
        for j in range(images_per_prompt):
            path = image_dir / f"{rec.index}_{j}{image_suffix}"
            if not path.is_file():
                missing.append(path)
            tasks.append(JudgeTask(str(path), rec.index, j, text, rec.testpoints))
    if missing:
        raise SlasError(f"{len(missing)} of {len(tasks)} images missing, first {missing[0]}; "
                        "generate them (slas.eval.generate) or fix --images/--images-per-prompt")
    return tasks


class JudgeRunStats(NamedTuple):
    """What one ``run_judgements`` call did: ``total`` tasks, ``skipped`` already in the
    progress file, ``judged`` now (parsed), ``dropped`` now (never parsed)."""

    total: int
    skipped: int
    judged: int
    dropped: int


def load_progress(path: str | os.PathLike) -> dict[str, dict]:
    """Rows of a progress JSONL by key. A torn last line (crash while writing) is cut off."""
    path = Path(path)
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with path.open("r+b") as fh:
            fh.truncate(len(raw))
    rows = {}
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            rows[row["key"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SlasError(f"{path} line {lineno}: not a progress row; delete the line to "
                            "redo that image") from None
    return rows


def _judge_one(task: JudgeTask, judge: JudgeFn, max_retries: int, stop: threading.Event):
    answer = None
    for attempt in range(max_retries + 1):
        if stop.is_set():
            return None
        answer = judge(task.text, Path(task.key))
        parsed = parse_judgement(answer, len(task.testpoints))
        if parsed.ok:
            return {"analysis": list(parsed.analysis), "scores": list(parsed.scores),
                    "output": answer, "attempts": attempt + 1, "error": ""}
    return {"analysis": None, "scores": None, "output": answer, "attempts": max_retries + 1,
            "error": parsed.error}


def run_judgements(
    tasks: Sequence[JudgeTask],
    judge: JudgeFn,
    progress_path: str | os.PathLike,
    *,
    judge_name: str,
    concurrency: int = 8,
    max_retries: int = 10,
    redo_dropped: bool = False,
) -> JudgeRunStats:
    """Judge every task not yet in the progress file, appending one JSON line per image.

    Args:
        tasks: from ``make_tasks``.
        judge: e.g. an ``OpenAIJudge``; it may raise ``SlasError`` (judge unreachable).
        progress_path: JSONL results file; created if absent, appended to otherwise.
        judge_name: recorded in every row (results of different judges are not comparable).
        concurrency: requests in flight at once (upstream runs 20 processes).
        max_retries: extra tries when an answer does not parse; after them the judgement is
            recorded as dropped (``scores: null``).
        redo_dropped: also redo images whose earlier judgement was dropped.

    Returns:
        ``JudgeRunStats``. On a judge error, rows finished so far are written before it is
        re-raised.
    """
    if concurrency < 1 or max_retries < 0:
        raise SlasError("run_judgements: need concurrency >= 1 and max_retries >= 0")
    path = Path(progress_path)
    done = load_progress(path)
    todo = [t for t in tasks if t.key not in done
            or (redo_dropped and done[t.key].get("scores") is None)]
    path.parent.mkdir(parents=True, exist_ok=True)
    stop, error, judged, dropped = threading.Event(), None, 0, 0
    with path.open("a", encoding="utf-8") as fh, ThreadPoolExecutor(concurrency) as pool:
        futures = {pool.submit(_judge_one, t, judge, max_retries, stop): t for t in todo}
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            if fut.exception() is not None:
                if error is None:
                    error = fut.exception()
                    stop.set()
                    for other in futures:
                        other.cancel()
                continue
            result, task = fut.result(), futures[fut]
            if result is None:
                continue
            row = {"key": task.key, "index": task.index, "image": task.image,
                   "testpoints": list(task.testpoints), "judge": judge_name, **result}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            if result["scores"] is None:
                dropped += 1
            else:
                judged += 1
    if error is not None:
        raise error
    return JudgeRunStats(len(tasks), len(tasks) - len(todo), judged, dropped)


def read_results(path: str | os.PathLike) -> list[Judgement]:
    """Judgements from a progress JSONL (``run_judgements``) or an upstream results CSV
    (columns ``testpoint``, ``result_json``, ``img_path``, ``index``; empty ``result_json`` =
    dropped). A key judged twice (``redo_dropped``) keeps its last row."""
    path = Path(path)
    if not path.is_file():
        raise SlasError(f"{path}: UniGenBench results file not found")
    if path.suffix != ".csv":
        return [Judgement(r["key"], int(r["index"]), tuple(r["testpoints"]),
                          None if r.get("scores") is None else tuple(r["scores"]),
                          r.get("judge", "")) for r in load_progress(path).values()]
    out = {}
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            try:
                tps = tuple(ast.literal_eval(row["testpoint"]))
                res = (row.get("result_json") or "").strip()
                parsed = None if res in ("", "null", "nan", "NaN") else json.loads(res)
                scores = None if parsed is None else tuple(parsed["score"])
                out[row["img_path"]] = Judgement(row["img_path"], int(row["index"]), tps,
                                                 scores, "")
            except (KeyError, ValueError, SyntaxError, TypeError):
                raise SlasError(f"{path} line {reader.line_num}: not an upstream UniGenBench "
                                "results row (index, testpoint, result_json, img_path)") from None
    return list(out.values())
