"""Closed-vocabulary word tokenizer for the world's captions.

The world's captions come from a small grammar (``slas.world.captions``), so a word-level
vocabulary of ~35 words covers every prompt exactly; a subword tokenizer would only add length.
Sequences follow CLIP's layout: ``<bos> w_1 ... w_n <eos> <pad> ...`` padded to a fixed
``max_length``. The empty caption (the unconditional prompt of classifier-free guidance) is
``<bos> <eos> <pad> ...``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from slas.errors import SlasError
from slas.world import captions
from slas.world.render import COLORS, SHAPES

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS)  # ids 0, 1, 2
TOKENIZER_FILE = "tokenizer.json"


def caption_words() -> list[str]:
    """Every word the caption grammar can produce, in a fixed order (no duplicates)."""
    words = ["a", "an", "photo", "of", "and"]
    words += [w for rel in captions.RELATIONS for w in rel.split(" ")]
    words += list(COLORS) + list(SHAPES) + list(captions.PLURALS.values())
    words += list(captions.NUMBER_WORDS.values())
    return list(dict.fromkeys(words))


def _longest_caption() -> int:
    """Number of words of the longest prompt the grammar can express."""
    return max(len(m["prompt"].split()) for tag in captions.TAGS
               for m in captions.enumerate_prompts(tag))


class WorldTokenizer:
    """Word-level tokenizer: lower-cased whitespace-split words -> ids ``[P, max_length]``.

    Args:
        words: vocabulary words (special tokens are prepended: ``<pad>`` 0, ``<bos>`` 1,
            ``<eos>`` 2).
        max_length: sequence length including ``<bos>`` and ``<eos>``.
    """

    def __init__(self, words: Sequence[str], max_length: int) -> None:
        words = list(words)
        if len(set(words)) != len(words) or any(w in SPECIAL_TOKENS for w in words):
            raise SlasError("tokenizer: vocabulary words must be unique and must not include "
                            f"{', '.join(SPECIAL_TOKENS)}; rebuild it with "
                            "WorldTokenizer.default()")
        if max_length < 2:
            raise SlasError(f"tokenizer: max_length must be >= 2 (bos + eos), got {max_length}")
        self.vocab: list[str] = list(SPECIAL_TOKENS) + words
        self.max_length = int(max_length)
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def default(cls) -> WorldTokenizer:
        """The tokenizer of the world's grammar: ``caption_words()``, length = longest + 2."""
        return cls(caption_words(), _longest_caption() + 2)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Token ids of ``P`` prompts -> LongTensor ``[P, max_length]``.

        Raises:
            SlasError: a word outside the vocabulary (named, with the valid colour and shape
                words) or a prompt longer than ``max_length - 2`` words.
        """
        if isinstance(prompts, str):
            raise SlasError("tokenizer.encode takes a list of prompts, got one string; wrap it "
                            "in a list")
        out = torch.full((len(prompts), self.max_length), self.pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().split()
            if len(words) > self.max_length - 2:
                raise SlasError(f"prompt {prompt!r}: {len(words)} words, more than the "
                                f"tokenizer's {self.max_length - 2}; shorten the prompt")
            for w in words:
                if w not in self._ids or w in SPECIAL_TOKENS:
                    raise SlasError(f"prompt {prompt!r}: unknown word {w!r}; valid colours: "
                                    f"{', '.join(COLORS)}; valid shapes: {', '.join(SHAPES)}")
            ids = [self.bos_id] + [self._ids[w] for w in words] + [self.eos_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Tensor) -> list[str]:
        """Inverse of ``encode``: ids ``[P, L]`` -> prompts (special tokens dropped)."""
        return [" ".join(self.vocab[i] for i in row.tolist() if i >= len(SPECIAL_TOKENS))
                for row in ids]

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/tokenizer.json`` (vocabulary and max_length); returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        words = self.vocab[len(SPECIAL_TOKENS):]
        payload = {"special_tokens": list(SPECIAL_TOKENS), "words": words,
                   "max_length": self.max_length}
        path.write_text(json.dumps(payload, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> WorldTokenizer:
        """Read ``<directory>/tokenizer.json`` written by ``save``."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise SlasError(f"tokenizer file {path} not found; regenerate the policy with "
                            f"`slas world pretrain`")
        try:
            payload = json.loads(path.read_text())
            if payload["special_tokens"] != list(SPECIAL_TOKENS):
                raise KeyError("special_tokens")
            return cls(payload["words"], int(payload["max_length"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SlasError(f"tokenizer file {path} is malformed ({err}); regenerate the policy "
                            f"with `slas world pretrain`") from err
