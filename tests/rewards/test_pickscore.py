"""PickScore reward: transformers CLIPModel + CLIPProcessor from local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slas.config import RewardConfig
from slas.errors import SlasError
from slas.rewards import get_reward
from slas.rewards.pickscore import _embedding, load_pickscore, to_pil

transformers = pytest.importorskip("transformers")
PROMPTS = ["a photo of a cat", "an astronaut riding a horse", "a photo of a cat"]


def _byte_chars() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable-character table (the BPE's base alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def _write_clip_tokenizer_files(folder: Path) -> None:
    """A byte-level CLIP BPE vocabulary without merges: every word splits into characters.

    Same format and special tokens as the real CLIP tokenizer, small enough to load instantly.
    """
    chars = list(_byte_chars().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="module")
def pick_folder(tmp_path_factory) -> Path:
    """A tiny PickScore-format folder: CLIPModel weights + a CLIPProcessor (32 px)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("pickscore")
    _write_clip_tokenizer_files(root)
    tokenizer = CLIPTokenizer.from_pretrained(root, model_max_length=77)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32},
                                         crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(root)
    return root


def _forward_logits(folder: Path, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Official PickScore via CLIPModel.forward: logits_per_image = exp(logit_scale) * cos."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval()
    proc = CLIPProcessor.from_pretrained(folder)
    inputs = proc(text=prompts, images=to_pil(images), padding=True, truncation=True,
                  max_length=77, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits_per_image.diagonal(), model.logit_scale.exp()


def test_scores_match_the_official_formula(pick_folder):
    torch.manual_seed(1)
    images = torch.rand(3, 3, 40, 56)
    raw = load_pickscore(pick_folder)(images, PROMPTS, [{}] * 3)
    scaled = load_pickscore(pick_folder, scaled=True)(images, PROMPTS, None)
    logits, scale = _forward_logits(pick_folder, images, PROMPTS)
    # Default = raw cosine (DanceGRPO); scaled = logit_scale.exp() * cosine (official).
    torch.testing.assert_close(scaled, logits, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(raw, logits / scale, atol=1e-6, rtol=1e-5)
    # A fresh CLIPConfig's logit_scale is ln(1/0.07), so the ratio is 1/0.07 = 14.2857.
    torch.testing.assert_close(scaled / raw, torch.full((3,), 1 / 0.07), atol=1e-3, rtol=1e-4)
    assert bool(((raw >= -1) & (raw <= 1)).all()) and raw.dtype == torch.float32


def test_deterministic_and_cached(pick_folder):
    reward = load_pickscore(pick_folder, batch_size=2)
    torch.manual_seed(2)
    image = torch.rand(1, 3, 32, 32)
    images = torch.cat([image, torch.rand(1, 3, 32, 32), image])
    first = reward(images, PROMPTS, None)
    torch.testing.assert_close(first[0], first[2])
    torch.testing.assert_close(reward(images, PROMPTS, None), first)
    assert sorted(reward.text_cache.keys()) == sorted(set(PROMPTS))  # one entry per distinct prompt


def test_to_pil_rounds_to_8_bit():
    # 0.5 * 255 = 127.5 -> 128 (round half to even); 1.2 clamps to 255; -0.1 clamps to 0.
    img = torch.tensor([0.5, 1.2, -0.1]).view(1, 3, 1, 1)
    assert to_pil(img)[0].getpixel((0, 0)) == (128, 255, 0)


def test_embedding_accepts_tensors_and_model_outputs():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    t = torch.ones(2, 4)
    assert _embedding(t) is t
    assert _embedding(BaseModelOutputWithPooling(pooler_output=t)) is t


def test_factory_and_errors_name_field_and_folder(pick_folder, tmp_path):
    config = RewardConfig(names=["pickscore"], weights=[1.0], pickscore_path=str(pick_folder))
    assert get_reward("pickscore", config)(torch.rand(2, 3, 32, 32), ["a", "b"],
                                           None).shape == (2,)
    with pytest.raises(SlasError, match=r"reward\.pickscore_path: folder .*absent not found"):
        load_pickscore(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlasError, match=r"reward\.pickscore_path: cannot load a CLIPModel from "
                                        r".*empty"):
        load_pickscore(tmp_path / "empty")
    with pytest.raises(SlasError, match=r"reward\.pickscore_processor_path: .*cannot load a "
                                        r"CLIPProcessor from .*empty"):
        load_pickscore(pick_folder, processor_path=tmp_path / "empty")
    with pytest.raises(SlasError, match=r"reward\.pickscore_path: not set"):
        get_reward("pickscore", RewardConfig(names=["pickscore"], weights=[1.0]))
