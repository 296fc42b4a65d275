"""Tests of the world's closed-vocabulary word tokenizer."""

import pytest
import torch

from slas.errors import SlasError
from slas.world import captions
from slas.world.tokenizer import WorldTokenizer, caption_words


def _all_prompts() -> list[str]:
    return [m["prompt"] for tag in captions.TAGS for m in captions.enumerate_prompts(tag)]


def test_every_grammar_prompt_round_trips():
    tok = WorldTokenizer.default()
    prompts = _all_prompts()
    ids = tok.encode(prompts)
    assert ids.shape == (len(prompts), tok.max_length)
    assert tok.decode(ids) == prompts


def test_hand_worked_ids_and_length():
    tok = WorldTokenizer.default()
    # Longest prompt: "a photo of a purple triangle and a yellow square" = 10 words, +bos +eos.
    assert tok.max_length == 12
    # ids: pad 0, bos 1, eos 2, then caption_words() in order: a 3, an 4, photo 5, of 6, and 7,
    # left 8, right 9, above 10, below 11, red 12, ..., circle 18.
    assert tok.vocab[3:8] == ["a", "an", "photo", "of", "and"]
    assert tok.vocab[12] == "red" and tok.vocab[18] == "circle"
    ids = tok.encode(["a photo of a red circle", ""])
    assert ids[0].tolist() == [1, 3, 5, 6, 3, 12, 18, 2, 0, 0, 0, 0]
    assert ids[1].tolist() == [1, 2] + [0] * 10  # empty caption: bos, eos, padding
    assert tok.vocab_size == 3 + len(caption_words()) == 29


def test_unknown_word_names_it_and_lists_valid_words():
    tok = WorldTokenizer.default()
    with pytest.raises(SlasError) as err:
        tok.encode(["a photo of a magenta circle"])
    msg = str(err.value)
    assert "'magenta'" in msg and "red" in msg and "purple" in msg and "triangle" in msg


def test_special_token_text_and_overlong_prompt_rejected():
    tok = WorldTokenizer.default()
    with pytest.raises(SlasError, match="<pad>"):
        tok.encode(["a photo of <pad>"])
    with pytest.raises(SlasError, match="more than"):
        tok.encode([" ".join(["a"] * 11)])
    with pytest.raises(SlasError, match="list"):
        tok.encode("a photo of a circle")


def test_save_load_round_trip(tmp_path):
    tok = WorldTokenizer.default()
    tok.save(tmp_path)
    back = WorldTokenizer.load(tmp_path)
    assert back.vocab == tok.vocab and back.max_length == tok.max_length
    prompts = ["a photo of three crosses", "a photo of a circle left of a square"]
    assert torch.equal(back.encode(prompts), tok.encode(prompts))


def test_load_missing_or_malformed(tmp_path):
    with pytest.raises(SlasError, match="slas world pretrain"):
        WorldTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(SlasError, match="malformed"):
        WorldTokenizer.load(tmp_path)
