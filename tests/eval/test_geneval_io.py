"""GenEval loaders on the shipped metadata, the folder layout, results JSONL and the summary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from slas.errors import SlasError
from slas.eval.geneval import Detection, ImageResult
from slas.eval.geneval_io import (
    GenEvalRow,
    format_summary,
    load_generation_folder,
    load_metadata,
    make_row,
    read_results,
    summarize,
    write_results,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "geneval"
METADATA = DATA / "evaluation_metadata.jsonl"


@pytest.fixture
def official() -> Path:
    if not METADATA.is_file():
        pytest.skip("shared/data/geneval not found; tests that read ../shared/data are skipped")
    return METADATA


def test_official_metadata_counts(official):
    rows = load_metadata(official)
    assert len(rows) == 553
    assert Counter(r["tag"] for r in rows) == {
        "single_object": 80, "two_object": 99, "counting": 80,
        "colors": 94, "position": 100, "color_attr": 100,
    }
    counts = Counter(r["include"][0]["count"] for r in rows if r["tag"] == "counting")
    assert counts == {2: 26, 3: 28, 4: 26}
    rels = Counter(r["include"][1]["position"][0] for r in rows if r["tag"] == "position")
    assert rels == {"below": 28, "right of": 27, "above": 26, "left of": 19}
    prompts = (DATA / "generation_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert [r["prompt"] for r in rows] == prompts


def test_malformed_line_names_file_and_line(official, tmp_path):
    lines = official.read_text(encoding="utf-8").splitlines()
    for lineno, bad, expected in [
        (7, lines[6][:-1], "line 7: invalid JSON"),
        (12, lines[11].replace('"tag": "single_object"', '"tag": "objects"'), "line 12: .*tag"),
        (300, lines[299].replace('"count": ', '"count": -'), "line 300: include.*count"),
    ]:
        copy = tmp_path / "meta.jsonl"
        copy.write_text("\n".join(lines[: lineno - 1] + [bad] + lines[lineno:]) + "\n")
        with pytest.raises(SlasError, match=expected) as err:
            load_metadata(copy)
        assert str(copy) in str(err.value)


def _make_folder(root: Path, records: list[dict], names: list[str]) -> None:
    for i, rec in enumerate(records):
        folder = root / f"{i:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(rec))
        for name in names:
            (folder / "samples" / name).write_bytes(b"")


def test_generation_folder_layout(tmp_path):
    recs = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a"},
            {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}],
             "prompt": "b"}]
    # 4-digit and 5-digit names are both accepted; grid.png and near-misses are ignored.
    _make_folder(tmp_path, recs, ["00010.png", "0002.png", "grid.png", "1.png.bak", "3.jpg"])
    (tmp_path / "notes").mkdir()
    refs = load_generation_folder(tmp_path)
    assert [(r.prompt_index, r.image_index, r.path.name) for r in refs] == [
        (0, 2, "0002.png"), (0, 10, "00010.png"), (1, 2, "0002.png"), (1, 10, "00010.png")]
    assert refs[2].metadata["prompt"] == "b"


def test_generation_folder_errors(tmp_path):
    with pytest.raises(SlasError, match="no images found"):
        load_generation_folder(tmp_path)
    (tmp_path / "00000" / "samples").mkdir(parents=True)
    with pytest.raises(SlasError, match="metadata.jsonl: missing"):
        load_generation_folder(tmp_path)
    (tmp_path / "00000" / "metadata.jsonl").write_text('{"tag": "counting", "prompt": "x"}')
    with pytest.raises(SlasError, match="'include'"):
        load_generation_folder(tmp_path)


def _row(tag: str, prompt: str, correct: bool) -> GenEvalRow:
    meta = {"tag": tag, "include": [{"class": prompt, "count": 1}], "prompt": prompt}
    return GenEvalRow(f"{prompt}.png", tag, prompt, correct, "" if correct else "no", meta, {})


def test_summary_macro_micro_and_prompts():
    # colors: prompt p1 with 4 images, 1 correct; prompt p2 with 4 images, 0 correct -> 1/8.
    # counting: prompt p3 with 2 images, both correct -> 2/2.
    rows = ([_row("colors", "p1", i == 0) for i in range(4)]
            + [_row("colors", "p2", False) for _ in range(4)]
            + [_row("counting", "p3", True) for _ in range(2)])
    s = summarize(rows)
    assert list(s.per_tag) == ["counting", "colors"]  # official tag order
    assert s.per_tag == {"counting": 1.0, "colors": 0.125}
    assert s.overall == pytest.approx((1.0 + 0.125) / 2)  # macro 0.5625
    assert s.pct_correct_images == pytest.approx(100 * 3 / 10)  # micro 30%
    assert s.pct_correct_prompts == pytest.approx(100 * 2 / 3)  # p1 (any) and p3 of 3
    assert s.n_images == 10
    text = format_summary(s)
    assert "| colors | 0.1250 |" in text and "**0.5625**" in text
    assert "30.00% correct images, 66.67% correct prompts" in text
    assert "Missing tags ['single_object', 'two_object', 'position', 'color_attr']" in text
    with pytest.raises(SlasError, match="no result rows"):
        summarize([])


def test_results_roundtrip_and_upstream_format(tmp_path):
    meta = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
            "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}
    kept = {"clock": [Detection((1.0, 2.0, 3.0, 4.0), 0.95, None)]}
    row = make_row("00000/samples/0000.png", meta,
                   ImageResult(False, "expected clock>=2, found 1", kept))
    assert row.details == {"clock": [[1.0, 2.0, 3.0, 4.0, 0.95]]}
    path = tmp_path / "out" / "results.jsonl"
    write_results(path, [row, row._replace(correct=True, reason="")])
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert isinstance(raw[0]["metadata"], str)  # a JSON string, as upstream writes it
    assert read_results(path) == [row, row._replace(correct=True, reason="")]
    # An upstream row (pandas output: metadata and details as strings, "/" escaped as "\/").
    upstream = tmp_path / "upstream.jsonl"
    line = json.dumps({"filename": "a/0000.png", "tag": "counting", "prompt": "p",
                       "correct": True, "reason": "", "metadata": json.dumps(meta),
                       "details": '{"clock": [[1.0, 2.0, 3.0, 4.0, 0.95]]}'})
    upstream.write_text(line.replace("/", "\\/") + "\n")
    assert "a\\/0000.png" in upstream.read_text()
    (got,) = read_results(upstream)
    assert got.filename == "a/0000.png" and got.metadata == meta and got.details == row.details
    bad = '{"filename": "b", "tag": "t", "prompt": "p", "correct": 1}'
    upstream.write_text(line + "\n" + bad + "\n")
    with pytest.raises(SlasError, match="line 2: field 'correct'"):
        read_results(upstream)
