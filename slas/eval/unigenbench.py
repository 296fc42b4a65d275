"""UniGenBench++: prompt files, testpoint vocabulary, judge prompt, answer parser, aggregation.

Follows CodeGoat24/UniGenBench ``eval/src/eval_common.py`` (commit named in
``judge_prompts.json``; arXiv:2508.20751, arXiv:2510.18701): prompt CSVs
``index,prompt_<lang>,sub_dims_<lang>`` whose JSON cell lists the testpoints and one description
each; the judge text of ``build_system_prompt``; the answer rules of
``parse_evaluation_response``; the scores of ``calculate_scores`` (a testpoint is correct iff
its score ``== 1``, accuracy micro-averaged inside each dimension over all prompts and images,
unparsed judgements left out). Overall is the leaderboard's unweighted mean of the 10 primary
dimensions. Everything is pure apart from reading the two input files.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from slas.errors import SlasError

Lang = Literal["en", "zh"]

CATEGORIES = {c: f"test_prompts_{c}.csv" for c in ("en", "en_long", "zh", "zh_long")}
"""Benchmark category -> upstream prompt file name (``data/`` of the upstream repo)."""

PRIMARY_DIMENSIONS: tuple[str, ...] = (
    "Style", "World Knowledge", "Attribute", "Action", "Relation",
    "Compound", "Grammar", "Layout", "Logical Reasoning", "Text",
)
"""The 10 primary dimensions under their paper/leaderboard column names, in table order."""

_PAPER_NAME = {"Relationship": "Relation", "Entity Layout": "Layout", "Text Generation": "Text"}

# The 27 testpoint names (English, Chinese). The Chinese dictionary of judge_prompts.json lists
# them in a different order, so the pairing is explicit; it was checked row by row against the
# matching en/zh prompt files (same index -> same testpoints in the same order).
SUB_DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("Style", "风格"), ("World Knowledge", "世界知识"),
    ("Attribute - Color", "属性-颜色"), ("Attribute - Expression", "属性-表情"),
    ("Attribute - Material", "属性-材质"), ("Attribute - Quantity", "属性-数量"),
    ("Attribute - Shape", "属性-形状"), ("Attribute - Size", "属性-大小"),
    ("Action - Animal", "动作-动物动作"), ("Action - Contact Interaction", "动作-实体间有接触互动"),
    ("Action - Full-body (Character/Anthropomorphic)", "动作-人物/拟人全身动作"),
    ("Action - Hand (Character/Anthropomorphic)", "动作-人物/拟人手部动作"),
    ("Action - Non-contact Interaction", "动作-实体间无接触互动"), ("Action - State", "动作-状态"),
    ("Relationship - Comparison", "关系-比较关系"), ("Relationship - Composition", "关系-构成关系"),
    ("Relationship - Inclusion", "关系-包含关系"), ("Relationship - Similarity", "关系-相似关系"),
    ("Compound - Feature Matching", "复合考点-不同实体特征匹配"),
    ("Compound - Imagination", "复合考点-想象力"),
    ("Grammar - Consistency", "语法-统一性"), ("Grammar - Negation", "语法-否定"),
    ("Grammar - Pronoun Reference", "语法-代词指代"),
    ("Entity Layout - Two-Dimensional Space", "实体布局-二维空间"),
    ("Entity Layout - Three-Dimensional Space", "实体布局-三维空间"),
    ("Logical Reasoning", "逻辑推理"), ("Text Generation", "文本生成"),
)
"""(English name, Chinese name) of every sub-dimension, grouped by primary in table order."""

TO_ENGLISH: dict[str, str] = {n: en for en, zh in SUB_DIMENSIONS for n in (en, zh)}
"""Any testpoint name (English or Chinese) -> its English name."""


def primary_of(testpoint: str) -> str:
    """Paper column of a testpoint: the name before the first ``-`` (upstream
    ``cp.split("-", 1)[0]``) without its trailing space, renamed as in the paper tables."""
    if testpoint not in TO_ENGLISH:
        raise SlasError(f"unknown UniGenBench testpoint {testpoint!r}; valid: {sorted(TO_ENGLISH)}")
    head = TO_ENGLISH[testpoint].split("-", 1)[0].strip()
    return _PAPER_NAME.get(head, head)


@dataclass(frozen=True)
class JudgePrompts:
    """The official judge texts (``judge_prompts.json``), per language: ``explanation``
    (testpoint name -> definition, 27 each), ``template`` (``str.format`` with fields prompt,
    testpoint, explanation, test_explanation), ``config`` (JSON keys and headers, upstream
    ``LANG_CONFIGS``); and the file's ``sha256``."""

    explanation: Mapping[str, Mapping[str, str]]
    template: Mapping[str, str]
    config: Mapping[str, Mapping[str, str]]
    sha256: str


def load_judge_prompts(path: str | os.PathLike) -> JudgePrompts:
    """Read ``judge_prompts.json`` and check it holds both languages and all 27 testpoints."""
    path = Path(path)
    if not path.is_file():
        raise SlasError(f"{path}: judge prompt file not found; pass data/unigenbench/"
                        "judge_prompts.json")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
        out = JudgePrompts(data["explanation_dict"], data["system_prompt_template"],
                           data["lang_config"], hashlib.sha256(raw).hexdigest())
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise SlasError(f"{path}: not a UniGenBench judge prompt file ({err!r}); use the "
                        "shipped judge_prompts.json") from None
    for lang, col in (("en", 0), ("zh", 1)):
        expected = {pair[col] for pair in SUB_DIMENSIONS}
        if set(out.explanation.get(lang, {})) != expected or lang not in out.template:
            raise SlasError(f"{path}: the {lang!r} section does not list the 27 official "
                            "testpoints; use the shipped judge_prompts.json")
    return out


class UniGenBenchRecord(NamedTuple):
    """One prompt row.

    Attributes:
        index: the row's ``index`` (names its images ``<index>_<j>.png``).
        prompt: text-to-image prompt.
        testpoints: testpoint names in the file's language, in file order.
        descriptions: one description per testpoint.
        lang: ``"en"`` or ``"zh"``.
        line: line number in the CSV file (1 = header).
        repaired: whether the JSON needed the missing-comma repair.
        themes: the remaining JSON fields (primary/secondary theme, subjects, sentence form).
    """

    index: int
    prompt: str
    testpoints: tuple[str, ...]
    descriptions: tuple[str, ...]
    lang: Lang
    line: int
    repaired: bool
    themes: dict


class UniGenBenchPrompts(NamedTuple):
    """A loaded prompt file: ``records`` in file order, its ``lang`` (from the header),
    ``path``, ``sha256`` of its bytes (pin it in results: upstream files changed over time) and
    the CSV ``repaired_lines`` whose JSON needed the repair."""

    records: list[UniGenBenchRecord]
    lang: Lang
    path: Path
    sha256: str
    repaired_lines: tuple[int, ...]


# Two string literals separated only by whitespace: the missing-comma defect of en_long row 509.
_MISSING_COMMA = re.compile(r'(?<!\\)"(\s+)"')


def parse_sub_dims(
    text: str, judge_prompts: JudgePrompts, lang: Lang, where: str, *, repair: bool = True
) -> tuple[tuple[str, ...], tuple[str, ...], dict, bool]:
    """Parse and validate one ``sub_dims`` JSON cell (keys and vocabulary of ``lang``).

    The repair (SOURCES.md, en_long row 509) is tried only when the cell is not valid JSON: it
    puts ``", "`` between two string literals that only whitespace separates. ``where``
    (``"<file> line <n>"``) prefixes messages; ``repair=False`` reports the raw defect.

    Returns:
        ``(testpoints, descriptions, other fields, repaired)``.
    """
    cfg = judge_prompts.config[lang]
    repaired = False
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        fixed = _MISSING_COMMA.sub(r'",\1"', text) if repair else text
        try:
            obj, repaired = json.loads(fixed), True
        except json.JSONDecodeError:
            raise SlasError(f"{where}: sub_dims_{lang} is not valid JSON ({err.msg} at column "
                            f"{err.colno}); fix the cell") from None
    tp_key, desc_key = cfg["testpoint_key"], cfg["desc_key"]
    if not isinstance(obj, dict):
        raise SlasError(f"{where}: sub_dims_{lang} must be a JSON object")
    tps, descs = obj.get(tp_key), obj.get(desc_key)
    for key, val in ((tp_key, tps), (desc_key, descs)):
        if not isinstance(val, list) or not val or not all(isinstance(v, str) for v in val):
            raise SlasError(f"{where}: {key!r} must be a non-empty list of strings, got {val!r}")
    if len(tps) != len(descs):
        raise SlasError(f"{where}: {len(tps)} testpoints but {len(descs)} descriptions; "
                        f"{tp_key!r} and {desc_key!r} need one entry each")
    vocab = judge_prompts.explanation[lang]
    unknown = [t for t in tps if t not in vocab]
    if unknown:
        raise SlasError(f"{where}: unknown testpoint(s) {unknown}; valid: {sorted(vocab)}")
    themes = {k: v for k, v in obj.items() if k not in (tp_key, desc_key)}
    return tuple(tps), tuple(descs), themes, repaired


def load_prompts(
    path: str | os.PathLike, judge_prompts: JudgePrompts, *, repair: bool = True
) -> UniGenBenchPrompts:
    """Read and validate a UniGenBench prompt CSV (any of the four files, or a subset).

    The file is UTF-8 with header ``index,prompt_<lang>,sub_dims_<lang>`` (gives the language).
    Every row needs a unique integer ``index``, a non-empty prompt and a valid ``sub_dims`` cell
    (``parse_sub_dims``; ``repair`` as there). Returns ``UniGenBenchPrompts``.
    """
    path = Path(path)
    if not path.is_file():
        raise SlasError(f"{path}: UniGenBench prompt file not found; pass one of "
                        f"{sorted(CATEGORIES.values())}")
    raw = path.read_bytes()
    try:
        reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
        header = next(reader, None)
    except UnicodeDecodeError:
        raise SlasError(f"{path}: not UTF-8; save the CSV as UTF-8") from None
    langs = [g for g in ("en", "zh") if header == ["index", f"prompt_{g}", f"sub_dims_{g}"]]
    if not langs:
        raise SlasError(f"{path} line 1: header must be index,prompt_en,sub_dims_en or "
                        f"index,prompt_zh,sub_dims_zh, got {header}")
    lang = langs[0]
    records: list[UniGenBenchRecord] = []
    seen: set[int] = set()
    for row in reader:
        where = f"{path} line {reader.line_num}"
        if len(row) != 3:
            raise SlasError(f"{where}: expected 3 fields (index, prompt, sub_dims), got {len(row)}")
        try:
            index = int(row[0])
        except ValueError:
            raise SlasError(f"{where}: index must be an integer, got {row[0]!r}") from None
        if index < 0 or index in seen:
            raise SlasError(f"{where}: index {index} is negative or repeated; indices are unique")
        if not row[1].strip():
            raise SlasError(f"{where}: empty prompt_{lang}")
        tps, descs, themes, fixed = parse_sub_dims(row[2], judge_prompts, lang, where,
                                                   repair=repair)
        seen.add(index)
        records.append(UniGenBenchRecord(index, row[1], tps, descs, lang, reader.line_num, fixed,
                                         themes))
    if not records:
        raise SlasError(f"{path}: no prompt rows after the header")
    return UniGenBenchPrompts(records, lang, path, hashlib.sha256(raw).hexdigest(),
                              tuple(r.line for r in records if r.repaired))


def build_judge_prompt(record: UniGenBenchRecord, judge_prompts: JudgePrompts) -> str:
    """The judge's text for one prompt row, byte-for-byte as upstream ``build_system_prompt``.

    ``explanation`` = header + ``":「"`` + ``"\\n<name>: <definition>"`` per testpoint +
    ``"\\n」"``; ``test_explanation`` the same with the description header and this row's
    descriptions; ``testpoint`` is the Python ``str`` of the testpoint list.
    """
    lang = record.lang
    cfg, vocab = judge_prompts.config[lang], judge_prompts.explanation[lang]
    explanation = cfg["checkpoint_header"] + ":「"
    explanation += "".join(f"\n{t}: {vocab[t]}" for t in record.testpoints) + "\n」"
    test_explanation = cfg["checkpoint_desc_header"] + ":「"
    test_explanation += "".join(
        f"\n{t}: {d}" for t, d in zip(record.testpoints, record.descriptions, strict=True)
    ) + "\n」"
    return judge_prompts.template[lang].format(
        prompt=record.prompt, testpoint=str(list(record.testpoints)),
        explanation=explanation, test_explanation=test_explanation,
    )


class ParsedAnswer(NamedTuple):
    """One parsed judge answer: ``ok``; ``analysis`` and ``scores`` (as written by the judge),
    one per testpoint, empty unless ok; ``error`` says why an answer is unusable ("" if ok)."""

    ok: bool
    analysis: tuple
    scores: tuple
    error: str


_ANALYSIS = re.compile(r"<analysis>(.*?)</analysis>", re.DOTALL)
_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)


def parse_judgement(text: str | None, n_testpoints: int) -> ParsedAnswer:
    """Parse ``<analysis>[...]</analysis>`` and ``<score>[...]</score>`` (upstream
    ``parse_evaluation_response``): first match of each tag, stripped, ``ast.literal_eval``;
    both must be lists (or tuples) with exactly ``n_testpoints`` entries. Upstream only calls
    ``len``; requiring a list also rejects a bare string whose length happens to match.
    """
    if text is None:
        return ParsedAnswer(False, (), (), "empty answer")
    found = _ANALYSIS.search(text), _SCORE.search(text)
    if None in found:
        return ParsedAnswer(False, (), (), "missing <analysis> or <score> tag")
    values = []
    for tag, match in zip(("analysis", "score"), found, strict=True):
        try:
            value = ast.literal_eval(match.group(1).strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return ParsedAnswer(False, (), (), f"<{tag}> is not a Python literal")
        if not isinstance(value, (list, tuple)) or len(value) != n_testpoints:
            got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
            return ParsedAnswer(False, (), (), f"<{tag}> needs a list of {n_testpoints} entries, "
                                f"got {got}")
        values.append(tuple(value))
    return ParsedAnswer(True, values[0], values[1], "")


class Judgement(NamedTuple):
    """One judged image (a results row): ``key`` (image path), prompt ``index``,
    ``testpoints`` (English or Chinese names), ``scores`` (one per testpoint, None = dropped:
    the answer never parsed) and the ``judge`` model name ("" if unknown)."""

    key: str
    index: int
    testpoints: tuple[str, ...]
    scores: tuple | None
    judge: str


class DimensionScore(NamedTuple):
    """``correct`` testpoints out of ``total`` judged ones; ``accuracy`` in [0, 1]."""

    correct: int
    total: int
    accuracy: float


class UniGenBenchSummary(NamedTuple):
    """Aggregated scores.

    Attributes:
        sub: English sub-dimension name -> score (judged ones, ``SUB_DIMENSIONS`` order).
        primary: paper column -> score (judged ones, ``PRIMARY_DIMENSIONS`` order).
        overall: unweighted mean of the ``primary`` accuracies, in [0, 1].
        n_judged: images whose judgement parsed; n_dropped: images whose judgement never
            parsed (left out of every count).
        missing_primaries: columns without judged testpoints (Overall then is not comparable).
        judges: judge model names found in the results.
    """

    sub: dict[str, DimensionScore]
    primary: dict[str, DimensionScore]
    overall: float
    n_judged: int
    n_dropped: int
    missing_primaries: tuple[str, ...]
    judges: tuple[str, ...]


def _scores(counts: Mapping[str, list[int]], order: Sequence[str]) -> dict[str, DimensionScore]:
    return {k: DimensionScore(counts[k][0], counts[k][1], counts[k][0] / counts[k][1])
            for k in order if counts.get(k, [0, 0])[1] > 0}


def aggregate(judgements: Sequence[Judgement]) -> UniGenBenchSummary:
    """Micro accuracy per sub- and primary dimension, and Overall (upstream
    ``calculate_scores`` plus the leaderboard's mean over the 10 primaries).

    A testpoint is correct iff its score ``== 1`` (so ``1``, ``1.0`` and ``True`` count, ``"1"``
    does not, as upstream). Dropped judgements (``scores is None``) are counted, not scored.
    """
    sub: dict[str, list[int]] = {}
    primary: dict[str, list[int]] = {}
    n_dropped = 0
    for j in judgements:
        if j.scores is None:
            n_dropped += 1
            continue
        if len(j.scores) != len(j.testpoints):
            raise SlasError(f"result for {j.key}: {len(j.scores)} scores for "
                            f"{len(j.testpoints)} testpoints; re-judge this image")
        for tp, score in zip(j.testpoints, j.scores, strict=True):
            if tp not in TO_ENGLISH:
                raise SlasError(f"result for {j.key}: unknown testpoint {tp!r}")
            hit = int(score == 1)
            for table, name in ((sub, TO_ENGLISH[tp]), (primary, primary_of(tp))):
                table.setdefault(name, [0, 0])
                table[name][0] += hit
                table[name][1] += 1
    prim = _scores(primary, PRIMARY_DIMENSIONS)
    if not prim:
        raise SlasError(f"no usable judgements ({n_dropped} dropped of {len(judgements)}); "
                        "check the judge's answers in the results file")
    return UniGenBenchSummary(
        sub=_scores(sub, [en for en, _ in SUB_DIMENSIONS]),
        primary=prim,
        overall=math.fsum(s.accuracy for s in prim.values()) / len(prim),
        n_judged=len(judgements) - n_dropped,
        n_dropped=n_dropped,
        missing_primaries=tuple(p for p in PRIMARY_DIMENSIONS if p not in prim),
        judges=tuple(sorted({j.judge for j in judgements if j.judge})),
    )


def summary_to_dict(summary: UniGenBenchSummary) -> dict:
    """JSON-ready summary in upstream's layout (``primary_dimensions`` / ``sub_dimensions`` of
    ``{correct, total, accuracy}``) plus ``overall``, counts and judges."""
    return {
        "primary_dimensions": {k: v._asdict() for k, v in summary.primary.items()},
        "sub_dimensions": {k: v._asdict() for k, v in summary.sub.items()},
        "overall": summary.overall,
        "n_judged": summary.n_judged,
        "n_dropped": summary.n_dropped,
        "missing_primaries": list(summary.missing_primaries),
        "judges": list(summary.judges),
    }


def format_table(summaries: Mapping[str, UniGenBenchSummary], *, digits: int = 2) -> str:
    """Markdown table, one row per model: the 10 primary columns and Overall, in percent.

    Below the table, one line per model gives the judged/dropped counts and the judge, and
    flags rows whose Overall averages fewer than 10 columns.
    """
    if not summaries:
        raise SlasError("format_table: no summaries to format")
    cols = [*PRIMARY_DIMENSIONS, "Overall"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    notes = []
    for name, s in summaries.items():
        cells = [f"{100 * s.primary[p].accuracy:.{digits}f}" if p in s.primary else "—"
                 for p in PRIMARY_DIMENSIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{100 * s.overall:.{digits}f}** |")
        note = (f"{name}: {s.n_judged} judged images, {s.n_dropped} dropped; judge: "
                f"{', '.join(s.judges) or 'unknown'}.")
        if s.missing_primaries:
            note += (f" No testpoints for {list(s.missing_primaries)}: Overall averages "
                     f"{10 - len(s.missing_primaries)} columns and is not comparable.")
        notes.append(note)
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
