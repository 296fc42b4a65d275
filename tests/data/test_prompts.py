"""Prompt files and the round schedule."""

import pytest

from slas.data.prompts import load_prompts, load_text_prompts, round_prompts, world_prompts
from slas.errors import SlasError


def test_text_prompts_skip_and_report_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red circle\n\n   \nthree squares\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="skipped 2 blank line"):
        items = load_text_prompts(path)
    assert [i.prompt for i in items] == ["a red circle", "three squares"]


def test_empty_prompt_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(SlasError, match="holds no prompts"):
        load_text_prompts(path)


def test_undecodable_prompt_file_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(SlasError, match=r"bad.txt:3: not valid UTF-8"):
        load_text_prompts(path)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(SlasError, match="not found; set run.prompts"):
        load_prompts(str(tmp_path / "none.txt"))


def test_world_sets():
    train, evaluation = world_prompts("train"), world_prompts("eval")
    assert train and evaluation
    assert not {i.prompt for i in train} & {i.prompt for i in evaluation}
    assert all(i.metadata["prompt"] == i.prompt for i in evaluation)


def test_round_schedule_is_a_function_of_seed_and_round():
    # 10 prompts, 4 per round: rounds 0-1 use epoch 0's permutation, round 2 crosses into epoch 1.
    r = [round_prompts(10, 4, seed=3, round_index=k) for k in range(5)]
    assert sorted(r[0] + r[1] + r[2][:2]) == list(range(10))  # each epoch visits every prompt once
    assert r[2] == round_prompts(10, 4, seed=3, round_index=2)
    assert r[0] != round_prompts(10, 4, seed=4, round_index=0)
    assert all(len(x) == 4 for x in r)
