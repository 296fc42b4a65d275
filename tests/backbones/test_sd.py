"""Tests of the Stable Diffusion 1.x adapter on a tiny random pipeline saved to disk."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from slas.backbones import BACKBONES, add_lora, get_backbone
from slas.backbones.base import Backbone
from slas.backbones.sd import LORA_WEIGHTS, StableDiffusionBackbone
from slas.config import ModelConfig, SampleConfig
from slas.errors import SlasError
from slas.sampling.rollout import make_times, model_time, transition
from slas.sampling.schedules import ddpm_alphas_cumprod
from tests.backbones.tiny_models import build_tiny_sd, rollout_and_update

PROMPTS = ["a red cat", "a photo of a car"]
LORA = ModelConfig(backbone="sd", finetune="lora", lora_rank=4, lora_alpha=8.0)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "pipe")


@pytest.fixture(scope="module")
def sd(sd_dir):
    """Shared read-only adapter (tests that train load their own)."""
    return StableDiffusionBackbone.from_pretrained(sd_dir)


@pytest.fixture(scope="module")
def pipe(sd_dir):
    p = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def _fresh(sd: StableDiffusionBackbone) -> StableDiffusionBackbone:
    """A trainable copy of the UNet with the shared frozen parts (cheaper than a reload)."""
    return StableDiffusionBackbone(copy.deepcopy(sd.unet), sd.vae, sd.text_encoder,
                                   sd.tokenizer, sd.scheduler)


def _networks(b: StableDiffusionBackbone) -> dict:
    return {"unet": b.unet, "vae": b.vae, "text_encoder": b.text_encoder}


def _ddim_images(b: StableDiffusionBackbone, latents, num_steps: int, w: float):
    """Deterministic DDIM (eta = 0) through the library's make_times + transition."""
    cfg = SampleConfig(num_steps=num_steps, eta=0.0, guidance_scale=w, group_size=2,
                       batch_size=2)
    times, cond, x = make_times(b, cfg), b.encode_prompts(PROMPTS), latents
    with torch.no_grad():
        for i in range(num_steps):
            step = torch.full((x.shape[0],), i)
            out = b.predict(x, model_time(times, step), cond, w)
            x = transition(b, cfg, times, step, x, out, noise=torch.zeros_like(x)).prev_sample
        return b.decode(x)


def _latents(seed: int = 0):
    return torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_protocol_fields_come_from_the_folder(sd):
    assert isinstance(sd, Backbone)
    assert sd.prediction_type == "epsilon"
    # 2-block VAE -> factor 2; unet.sample_size 16 -> 32 px default resolution -> 16x16 latent.
    assert sd.latent_shape == (4, 16, 16)
    # scaled_linear betas 0.00085 .. 0.012 over 1000 steps, as the library's closed form.
    assert sd.alphas_cumprod.dtype == torch.float32 and sd.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(sd.alphas_cumprod, ddpm_alphas_cumprod(), atol=1e-6, rtol=0)
    # DDIM times for 3 steps: k * 333 + 1 -> 667, 334, 1, then -1 (final alpha).
    assert make_times(sd, SampleConfig(num_steps=3)).tolist() == [667, 334, 1, -1]


def test_resolution_argument_sets_latent_shape(sd):
    parts = (sd.unet, sd.vae, sd.text_encoder, sd.tokenizer, sd.scheduler)
    assert StableDiffusionBackbone(*parts, resolution=48).latent_shape == (4, 24, 24)
    with pytest.raises(SlasError, match="multiple of the VAE factor 2"):
        StableDiffusionBackbone(*parts, resolution=33)


def test_frozen_parts_and_trainable_unet(sd):
    assert not any(p.requires_grad for p in sd.text_encoder.parameters())
    assert not any(p.requires_grad for p in sd.vae.parameters())
    assert [id(p) for p in sd.trainable_parameters()] == [id(p) for p in sd.unet.parameters()]


def test_encode_prompts_matches_the_pipeline_embeddings(sd, pipe):
    cond = sd.encode_prompts(PROMPTS)
    assert cond.tensors["hidden"].shape == cond.tensors["uncond"].shape == (2, 77, 32)
    assert not cond.tensors["hidden"].requires_grad
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    # One batched text-encoder call vs the pipeline's two: same rows up to reduction order.
    torch.testing.assert_close(cond.tensors["hidden"], pos, atol=1e-6, rtol=0)
    torch.testing.assert_close(cond.tensors["uncond"], neg, atol=1e-6, rtol=0)
    assert torch.equal(cond.tensors["uncond"][0], cond.tensors["uncond"][1])


def test_batched_cfg_equals_two_forwards(sd):
    cond = sd.encode_prompts(PROMPTS).select(torch.tensor([1, 0, 1]))
    x, t = torch.randn(3, 4, 16, 16), torch.tensor([981.0, 500.0, 21.0])
    with torch.no_grad():
        guided = sd.predict(x, t, cond, 5.0)
        u = sd.unet(x, t, encoder_hidden_states=cond.tensors["uncond"]).sample
        c = sd.unet(x, t, encoder_hidden_states=cond.tensors["hidden"]).sample
        cond_only = sd.predict(x, t, cond, 1.0)
    torch.testing.assert_close(guided, u + 5.0 * (c - u), atol=1e-5, rtol=1e-5)
    assert torch.equal(cond_only, c)  # w = 1: conditional branch alone, one N forward
    assert (u - c).abs().max() > 1e-3  # the prompt changes the prediction


def test_predict_rejects_mismatched_rows(sd):
    with pytest.raises(SlasError, match="cond.select"):
        sd.predict(torch.randn(3, 4, 16, 16), torch.ones(3), sd.encode_prompts(PROMPTS), 5.0)


def test_decode_is_vae_of_unscaled_latents_in_unit_range(sd):
    lat = _latents()
    with torch.no_grad():
        img = sd.decode(lat)
        raw = sd.vae.decode(lat / 0.18215).sample  # SD scaling_factor 0.18215
        small_batches = StableDiffusionBackbone(
            sd.unet, sd.vae, sd.text_encoder, sd.tokenizer, sd.scheduler,
            decode_batch_size=1).decode(lat)
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32
    torch.testing.assert_close(img, (raw / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(small_batches, img, atol=1e-5, rtol=0)


def test_bf16_frozen_parts_keep_float32_interfaces(sd, sd_dir):
    b = StableDiffusionBackbone.from_pretrained(sd_dir, frozen_dtype=torch.bfloat16)
    assert b.text_encoder.dtype == b.vae.dtype == torch.bfloat16
    assert b.unet.dtype == torch.float32  # the optimiser's master weights
    cond = b.encode_prompts(PROMPTS)
    assert cond.tensors["hidden"].dtype == torch.float32
    # bf16 keeps 8 mantissa bits: ~0.4% relative error on O(1) activations.
    torch.testing.assert_close(cond.tensors["hidden"], sd.encode_prompts(PROMPTS).tensors[
        "hidden"], atol=0.1, rtol=0.02)
    with torch.no_grad():
        img = b.decode(_latents())
    assert img.dtype == torch.float32 and (img - sd.decode(_latents())).abs().max() < 0.05


def test_ddim_eta0_matches_stock_pipeline(sd, pipe):
    lat = _latents(1)
    ours = _ddim_images(sd, lat, num_steps=3, w=5.0)
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=3, guidance_scale=5.0, eta=0.0,
                   latents=lat.clone(), output_type="pt").images
    assert ref.shape == ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert ours.std() > 0.01  # not a trivially constant image


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_rollout_log_probs_recompute_exactly_and_one_step_trains(sd, finetune):
    b = _fresh(sd)
    if finetune == "lora":
        add_lora(b.unet, LORA)
        # peft's init has B = 0, so A gets no gradient on the first step; start from a
        # "trained" adapter (B != 0) so that every LoRA tensor has a gradient.
        with torch.no_grad():
            for name, p in b.unet.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    cfg = SampleConfig(num_steps=2, group_size=2, batch_size=4, micro_batch_size=4, eta=1.0,
                       guidance_scale=5.0)
    res = rollout_and_update(b, _networks(b), cfg, PROMPTS)
    assert res.log_probs.shape == (4, 2) and torch.isfinite(res.log_probs).all()
    # Same micro-batch, same policy: bit-identical log-prob, PPO ratio exactly 1.
    assert torch.equal(res.first_step_recomputed, res.log_probs[:, 0])
    assert res.ratio_mean == 1.0
    expected = {n for n in res.changed if n.startswith("unet.")}
    if finetune == "lora":
        expected = {n for n in expected if "lora_" in n}
        # 4 transformer blocks (down, mid, 2 up) x 2 attentions x (q, k, v, out) x (A, B).
        assert len(expected) == 4 * 2 * 4 * 2
    assert res.trainable == expected
    assert all(res.changed[n] for n in expected)
    assert not any(res.changed[n] for n in res.changed if n not in expected)


def test_lora_round_trip_into_stock_pipeline(sd, sd_dir, pipe, tmp_path):
    b = _fresh(sd)
    add_lora(b.unet, LORA)  # stock init (B = 0): one step moves B only
    cfg = SampleConfig(num_steps=2, group_size=2, batch_size=4, micro_batch_size=4, eta=1.0)
    rollout_and_update(b, _networks(b), cfg, PROMPTS, lr=1e-2)
    assert b.save_pretrained(tmp_path) == tmp_path
    assert (tmp_path / LORA_WEIGHTS).is_file() and not (tmp_path / "unet").exists()
    lat = _latents(2)
    ours = _ddim_images(b, lat, num_steps=2, w=5.0)
    kw = dict(num_inference_steps=2, guidance_scale=5.0, eta=0.0, output_type="pt")
    with torch.no_grad():
        base = pipe(PROMPTS, latents=lat.clone(), **kw).images
        lora_pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
        lora_pipe.set_progress_bar_config(disable=True)
        lora_pipe.load_lora_weights(tmp_path)  # alpha/r = 2 travels in the file's metadata
        loaded = lora_pipe(PROMPTS, latents=lat.clone(), **kw).images
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=0)
    assert (loaded - base).abs().max() > 1e-4  # the trained LoRA is really applied


def test_full_save_writes_a_unet_folder(sd, tmp_path):
    sd.save_pretrained(tmp_path)
    assert not (tmp_path / LORA_WEIGHTS).exists()
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), sd.unet.parameters(),
                                                  strict=True))


def test_registered_loader_applies_lora_and_checkpointing(sd_dir):
    assert "sd" in BACKBONES
    b = get_backbone(ModelConfig(backbone="sd", path=str(sd_dir), finetune="lora", lora_rank=2,
                                 gradient_checkpointing=True))
    params = b.trainable_parameters()
    # (A, B) on each of 32 target linears; the base weights are frozen.
    assert len(params) == 64 and all(p.requires_grad for p in params)
    assert {tuple(p.shape) for p in params if p.shape[0] == 2} == {(2, 32), (2, 64)}
    assert sum(p.numel() for p in b.unet.parameters() if p.requires_grad) == sum(
        p.numel() for p in params)
    assert b.unet.is_gradient_checkpointing


def test_missing_folder_or_subfolder_names_it(sd_dir, tmp_path):
    with pytest.raises(SlasError, match="model.path is required"):
        StableDiffusionBackbone.from_pretrained(None)
    with pytest.raises(SlasError, match="model.path .*nope is not a directory"):
        get_backbone(ModelConfig(backbone="sd", path=str(tmp_path / "nope")))
    (tmp_path / "partial").mkdir()
    for part in ("unet", "vae", "tokenizer", "scheduler"):
        (tmp_path / "partial" / part).mkdir()
    with pytest.raises(SlasError, match="lacks the subfolder.*text_encoder"):
        StableDiffusionBackbone.from_pretrained(tmp_path / "partial")
