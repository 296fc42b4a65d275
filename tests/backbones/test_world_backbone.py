"""Tests of the world's flow-matching backbone adapter and its sampler."""

import pytest
import torch

from slas.backbones.base import Backbone
from slas.backbones.world import DEFAULT_POLICY_DIR, WorldBackbone
from slas.errors import SlasError
from slas.world.generate import geneval_scores, sample_images

TINY_UNET = {"block_out_channels": (8, 16), "attention_levels": (False, True),
             "norm_num_groups": 4, "attention_heads": 2}
TINY_TEXT = {"hidden_size": 16, "num_layers": 1, "num_heads": 2}
PROMPTS = ["a photo of a red circle", "a photo of three squares"]


def tiny(seed: int = 0) -> WorldBackbone:
    return WorldBackbone.create(unet_kwargs=TINY_UNET, text_kwargs=TINY_TEXT, seed=seed)


def _inputs(n: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.rand(n, generator=gen)


def test_protocol_and_static_fields():
    b = tiny()
    assert isinstance(b, Backbone)
    assert b.prediction_type == "flow" and b.latent_shape == (3, 32, 32)
    assert b.alphas_cumprod is None


def test_save_and_load_give_identical_predictions(tmp_path):
    b = tiny()
    cond = b.encode_prompts(PROMPTS).select(torch.tensor([0, 1, 1, 0]))
    x, t = _inputs()
    before = b.predict(x, t, cond, 3.0)
    b.save_pretrained(tmp_path / "policy")
    loaded = WorldBackbone.from_pretrained(tmp_path / "policy")
    cond2 = loaded.encode_prompts(PROMPTS).select(torch.tensor([0, 1, 1, 0]))
    assert torch.equal(cond2.tensors["hidden"], cond.tensors["hidden"])
    assert torch.equal(loaded.predict(x, t, cond2, 3.0), before)
    assert loaded.time_scale == 1000.0


def test_batched_cfg_equals_two_forwards():
    b = tiny()
    cond = b.encode_prompts(PROMPTS).select(torch.tensor([1, 0, 0, 1]))
    x, t = _inputs()
    w = 3.0
    with torch.no_grad():
        guided = b.predict(x, t, cond, w)
        u = b.velocity(x, t, cond.tensors["uncond"])
        c = b.velocity(x, t, cond.tensors["hidden"])
    # u + w (c - u): one 2N forward vs two N forwards agree up to float reduction order.
    torch.testing.assert_close(guided, u + w * (c - u), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(u, c)  # the prompt actually changes the prediction


def test_guidance_one_is_conditional_only_and_timestep_is_sigma_times_1000():
    b = tiny()
    cond = b.encode_prompts(PROMPTS)
    x, t = _inputs(2)
    with torch.no_grad():
        out = b.predict(x, t, cond, 1.0)
        direct = b.unet(x, t * 1000.0, encoder_hidden_states=cond.tensors["hidden"]).sample
    assert torch.equal(out, direct)


def test_unconditional_rows_are_the_empty_caption():
    b = tiny()
    cond = b.encode_prompts(PROMPTS)
    with torch.no_grad():
        empty = b.encode_ids(b.tokenizer.encode([""]))
    assert cond.tensors["hidden"].shape == cond.tensors["uncond"].shape == (2, 12, 16)
    assert torch.equal(cond.tensors["uncond"][1], empty[0])
    assert not cond.tensors["hidden"].requires_grad


def test_predict_rejects_mismatched_rows():
    b = tiny()
    x, t = _inputs(3)
    with pytest.raises(SlasError, match="cond.select"):
        b.predict(x, t, b.encode_prompts(PROMPTS), 3.0)


def test_decode_maps_minus_one_one_to_unit_range():
    b = tiny()
    lat = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 6).expand(1, 3, 32, 6)
    img = b.decode(lat)
    # (x + 1) / 2 clamped: -3 -> 0, -1 -> 0, 0 -> 0.5, 0.5 -> 0.75, 1 -> 1, 2 -> 1.
    assert img[0, 0, 0].tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    assert torch.equal(b.decode(b.images_to_latents(torch.full((1, 3, 2, 2), 0.25))),
                       torch.full((1, 3, 2, 2), 0.25))


def test_trainable_parameters_are_the_unet_and_text_encoder_is_frozen():
    b = tiny()
    assert [id(p) for p in b.trainable_parameters()] == [id(p) for p in b.unet.parameters()]
    assert not any(p.requires_grad for p in b.text_encoder.parameters())


def test_missing_weights_raise_with_the_regenerate_command(tmp_path):
    with pytest.raises(SlasError, match="slas world pretrain") as err:
        WorldBackbone.from_pretrained(tmp_path / "nope")
    assert "nope" in str(err.value)
    tiny().save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "world_policy.json").unlink()
    with pytest.raises(SlasError, match="world_policy.json"):
        WorldBackbone.from_pretrained(tmp_path / "p")


def test_sample_images_is_deterministic_and_batch_independent():
    b = tiny()
    kw = {"samples_per_prompt": 3, "num_steps": 4, "guidance_scale": 2.0, "seed": 7}
    a = sample_images(b, PROMPTS, batch_size=6, **kw)
    c = sample_images(b, PROMPTS, batch_size=4, **kw)
    assert a.shape == (6, 3, 32, 32)
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)
    assert not torch.equal(a[0], a[1])  # different starting noise per sample


def test_geneval_scores_macro_average():
    # tag A: 3 images, 2 correct -> 2/3; tag B: 1 image, 0 correct -> 0; overall (2/3 + 0)/2.
    per_tag, overall = geneval_scores(["A", "A", "B", "A"], [True, False, False, True])
    assert per_tag == pytest.approx({"A": 2 / 3, "B": 0.0})
    assert overall == pytest.approx(1 / 3)  # micro average would be 2/4


def test_committed_weights_load_and_sample():
    if not (DEFAULT_POLICY_DIR / "world_policy.json").is_file():
        pytest.skip(f"committed weights not present in {DEFAULT_POLICY_DIR.name}; "
                    "regenerate with `slas world pretrain`")
    b = WorldBackbone.from_pretrained()
    n = b.num_parameters()
    assert 1_000_000 <= n["unet"] <= 2_000_000 and n["text_encoder"] < 200_000
    img = sample_images(b, PROMPTS, samples_per_prompt=1, num_steps=4, seed=0)
    assert img.shape == (2, 3, 32, 32)
    assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
