"""Prompt files: HPD-v2 JSON, GenEval metadata, JSONL records, suffix dispatch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from slas.data.datasets import (
    load_geneval_prompts,
    load_hpd_prompts,
    load_jsonl_prompts,
    load_prompt_file,
)
from slas.errors import SlasError

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _shared(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{'/'.join(parts)} not found; tests that read ../shared/data are skipped")
    return path


def _train_json(prompts: list[str]) -> list[dict]:
    """HPD-v2 train.json rows: one per preference *pair*, so every prompt appears twice."""
    rows = []
    for k, p in enumerate(prompts):
        for pair in range(2):
            files = [f"train/{k:05d}_{pair}_{side}.jpg" for side in "ab"]
            rows.append({"human_preference": [pair, 1 - pair], "prompt": p, "file_path": files})
    return rows


# ----------------------------------------------------------------------------- HPD-v2


def test_hpd_train_json_built_from_the_real_prompts(tmp_path):
    prompts = load_prompt_file(_shared("hpdv2", "dancegrpo_prompts_head32.txt"))
    texts = [item.prompt for item in prompts]
    assert len(texts) == 32 and texts[0] == "A 3D render portrait of Pepe Frog as concept art."
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_train_json(texts)))
    items = load_hpd_prompts(path)
    assert [i.prompt for i in items] == texts  # 64 rows -> 32 prompts, file order kept
    assert all(i.metadata == {} for i in items)
    assert len(load_hpd_prompts(path, dedupe=False)) == 64


def test_hpd_test_json_and_benchmark_lists(tmp_path):
    test = [{"prompt": "  a cat on a mat ", "image_path": ["a.png", "b.png"], "rank": [2, 1],
             "raw_annotations": [[1, 2]]},
            {"prompt": "a dog", "image_path": [], "rank": [], "raw_annotations": []},
            {"prompt": "a cat on a mat", "image_path": [], "rank": [], "raw_annotations": []}]
    (tmp_path / "test.json").write_text(json.dumps(test))
    assert [i.prompt for i in load_hpd_prompts(tmp_path / "test.json")] == ["a cat on a mat",
                                                                            "a dog"]
    (tmp_path / "anime.json").write_text(json.dumps(["b", "a", "b", "   "]))
    with pytest.warns(UserWarning, match="skipped 1 empty prompt"):
        items = load_hpd_prompts(tmp_path / "anime.json")
    assert [i.prompt for i in items] == ["b", "a"]


def test_hpd_errors_name_file_and_entry(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"prompt": "ok"}, {"file_path": ["x.jpg"]}]))
    with pytest.raises(SlasError, match=r"train\.json: entry 1 has no string 'prompt'"):
        load_hpd_prompts(path)
    path.write_text(json.dumps({"prompt": "not a list"}))
    with pytest.raises(SlasError, match="expected a JSON list"):
        load_hpd_prompts(path)
    # Line 2 is ` {"prompt": }`: the value is missing where `}` stands, column 13.
    path.write_text('[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(SlasError, match=r"train\.json:2:13: invalid JSON"):
        load_hpd_prompts(path)
    with pytest.raises(SlasError, match=r"missing\.json not found"):
        load_hpd_prompts(tmp_path / "missing.json")
    path.write_text("[]")
    with pytest.raises(SlasError, match="holds no prompts"):
        load_hpd_prompts(path)


# ----------------------------------------------------------------------------- GenEval


def test_geneval_metadata_prompts():
    items = load_geneval_prompts(_shared("geneval", "evaluation_metadata.jsonl"))
    assert len(items) == 553
    counts = Counter(i.metadata["tag"] for i in items)
    assert counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                      "position": 100, "color_attr": 100}
    assert items[0].prompt == "a photo of a bench"
    assert items[0].metadata["include"] == [{"class": "bench", "count": 1}]
    lines = _shared("geneval", "generation_prompts.txt").read_text().splitlines()
    assert [i.prompt for i in items] == [line.strip() for line in lines]


# ----------------------------------------------------------------------------- JSONL, dispatch


def test_jsonl_records_become_metadata(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a red cube", "id": 3}\n\n{"prompt": " two cats ", "x": [1]}\n')
    with pytest.warns(UserWarning, match="skipped 1 blank line"):
        items = load_prompt_file(path)
    assert [i.prompt for i in items] == ["a red cube", "two cats"]
    assert items[0].metadata == {"prompt": "a red cube", "id": 3}
    other = tmp_path / "q.jsonl"
    other.write_text('{"caption": "a boat"}\n')
    assert load_jsonl_prompts(other, prompt_key="caption")[0].prompt == "a boat"


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": 5}\n')
    with pytest.raises(SlasError, match=r"bad\.jsonl:2: needs a non-empty string 'prompt'"):
        load_jsonl_prompts(path)
    path.write_text('{"prompt": "fine"}\n{oops\n')
    with pytest.raises(SlasError, match=r"bad\.jsonl:2: invalid JSON"):
        load_jsonl_prompts(path)


def test_unknown_suffix(tmp_path):
    with pytest.raises(SlasError, match=r"unknown suffix '\.csv'; use \.txt"):
        load_prompt_file(tmp_path / "prompts.csv")
