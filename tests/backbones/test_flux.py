"""Tests of the FLUX.1 adapter on a tiny random pipeline saved to disk."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from slas.backbones import BACKBONES, add_lora, get_backbone
from slas.backbones.base import Backbone
from slas.backbones.flux import (
    FluxBackbone,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from slas.backbones.sd import LORA_WEIGHTS
from slas.config import ModelConfig, SampleConfig
from slas.errors import SlasError
from slas.sampling.rollout import make_times
from slas.sampling.steps import flow_ode_step
from tests.backbones.tiny_models import build_tiny_flux, rollout_and_update

PROMPTS = ["a red cat", "a photo of a car"]
SEQ = 32  # T5 tokens in tests (FLUX.1 uses 512)
LORA = ModelConfig(backbone="flux", finetune="lora", lora_rank=4, lora_alpha=8.0)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("tiny_flux") / "pipe")


@pytest.fixture(scope="module")
def flux(flux_dir):
    """Shared read-only adapter (tests that train copy the transformer)."""
    return FluxBackbone.from_pretrained(flux_dir, max_sequence_length=SEQ)


@pytest.fixture(scope="module")
def pipe(flux_dir):
    p = FluxPipeline.from_pretrained(flux_dir, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def _parts(b: FluxBackbone, transformer=None) -> tuple:
    return (transformer or b.transformer, b.vae, b.text_encoder, b.tokenizer,
            b.text_encoder_2, b.tokenizer_2)


def _fresh(b: FluxBackbone) -> FluxBackbone:
    """A trainable copy of the transformer with the shared frozen parts."""
    return FluxBackbone(*_parts(b, copy.deepcopy(b.transformer)), max_sequence_length=SEQ)


def _networks(b: FluxBackbone) -> dict:
    return {"transformer": b.transformer, "vae": b.vae, "text_encoder": b.text_encoder,
            "text_encoder_2": b.text_encoder_2}


def _latents(seed: int = 0):
    return torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def _ode_images(b: FluxBackbone, latents, sigmas):
    """Deterministic Euler sampling with the library's flow_ode_step over ``sigmas`` [T+1]."""
    cond, x = b.encode_prompts(PROMPTS), latents
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            v = b.predict(x, sigmas[i].expand(x.shape[0]), cond, 1.0)
            x = flow_ode_step(v, x, sigmas[i], sigmas[i + 1])
        return b.decode(x)


def test_protocol_fields(flux):
    assert isinstance(flux, Backbone)
    assert flux.prediction_type == "flow" and flux.alphas_cumprod is None
    # vae.sample_size 32 px / factor 2 = 16; in_channels 16 = 4 latent channels x 2x2 patch.
    assert flux.latent_shape == (4, 16, 16)
    assert flux.guidance == 3.5
    with pytest.raises(SlasError, match="multiple of 4"):
        FluxBackbone(*_parts(flux), resolution=34)


def test_frozen_parts_and_trainable_transformer(flux):
    for net in (flux.vae, flux.text_encoder, flux.text_encoder_2):
        assert not any(p.requires_grad for p in net.parameters())
    assert [id(p) for p in flux.trainable_parameters()] == \
        [id(p) for p in flux.transformer.parameters()]


def test_pack_unpack_and_ids_match_the_pipeline():
    x = torch.randn(2, 4, 6, 8)
    tokens = pack_latents(x)
    assert tokens.shape == (2, 12, 16)
    assert torch.equal(tokens, FluxPipeline._pack_latents(x, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(tokens, 6, 8), x)
    # token (row 1, col 2) of a 3x4 grid = patch x[:, :, 2:4, 4:6], channels (c, dy, dx).
    assert torch.equal(tokens[0, 1 * 4 + 2], x[0, :, 2:4, 4:6].reshape(-1))
    ids = latent_image_ids(3, 4, torch.device("cpu"), torch.float32)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32))
    assert ids[6].tolist() == [0.0, 1.0, 2.0]


def test_encode_prompts_matches_the_pipeline(flux, pipe):
    cond = flux.encode_prompts(PROMPTS)
    assert cond.tensors["hidden"].shape == (2, SEQ, 32) and cond.tensors["pooled"].shape == (2, 32)
    with torch.no_grad():
        hidden, pooled, _ = pipe.encode_prompt(PROMPTS, None, "cpu", max_sequence_length=SEQ)
    assert torch.equal(cond.tensors["hidden"], hidden)
    assert torch.equal(cond.tensors["pooled"], pooled)


def test_predict_is_one_transformer_forward_at_sigma_with_guidance_embedding(flux):
    cond = flux.encode_prompts(PROMPTS).select(torch.tensor([1, 0, 1]))
    x, sigma = torch.randn(3, 4, 16, 16), torch.tensor([1.0, 0.5, 0.1])
    with torch.no_grad():
        out = flux.predict(x, sigma, cond, 1.0)
        direct = flux.transformer(
            hidden_states=pack_latents(x), timestep=sigma, guidance=torch.full((3,), 3.5),
            pooled_projections=cond.tensors["pooled"],
            encoder_hidden_states=cond.tensors["hidden"], txt_ids=torch.zeros(SEQ, 3),
            img_ids=latent_image_ids(8, 8, torch.device("cpu"), torch.float32)).sample
        ignored_cfg = flux.predict(x, sigma, cond, 7.0)
        weaker = FluxBackbone(*_parts(flux), guidance=1.0).predict(x, sigma, cond, 1.0)
    assert out.shape == (3, 4, 16, 16)
    assert torch.equal(out, unpack_latents(direct, 16, 16))
    assert torch.equal(ignored_cfg, out)  # no true CFG: guidance_scale is ignored
    assert (weaker - out).abs().max() > 1e-4  # the distilled guidance value is used
    with pytest.raises(SlasError, match="cond.select"):
        flux.predict(x, sigma, flux.encode_prompts(PROMPTS), 1.0)


def test_decode_unscales_then_vae(flux):
    lat = _latents()
    with torch.no_grad():
        img = flux.decode(lat)
        # FLUX.1 VAE: scaling_factor 0.3611, shift_factor 0.1159.
        raw = flux.vae.decode(lat / 0.3611 + 0.1159).sample
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32
    torch.testing.assert_close(img, (raw / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)


def test_ode_matches_stock_pipeline_with_its_resolution_shift(flux, pipe):
    # The folder's scheduler uses FLUX.1's dynamic shift; the library's "resolution" schedule
    # computes the same sigmas for 8x8 = 64 packed tokens.
    sigmas = make_times(flux, SampleConfig(num_steps=3, schedule="resolution"))
    lat = _latents(1)
    ours = _ode_images(flux, lat, sigmas)
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=3, height=32, width=32,
                   max_sequence_length=SEQ, latents=pack_latents(lat), output_type="pt").images
    torch.testing.assert_close(pipe.scheduler.sigmas, sigmas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert ours.std() > 0.01


def test_ode_matches_stock_pipeline_given_the_dancegrpo_shift_sigmas(flux, pipe):
    # sigma = 3s / (1 + 2s) at s = 1, 2/3, 1/3, 0 -> 1, 6/7, 3/5, 0. The pipeline takes the
    # non-terminal sigmas; its scheduler must not re-shift them (shift 1, no dynamic shift).
    sigmas = make_times(flux, SampleConfig(num_steps=3, schedule="shift", shift=3.0))
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 6 / 7, 3 / 5, 0.0]))
    plain = FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0)
    lat = _latents(2)
    ours = _ode_images(flux, lat, sigmas)
    with torch.no_grad():
        ref = FluxPipeline(**{**pipe.components, "scheduler": plain})(
            PROMPTS, sigmas=sigmas[:-1].tolist(), height=32, width=32,
            max_sequence_length=SEQ, latents=pack_latents(lat), output_type="pt").images
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_rollout_log_probs_recompute_exactly_and_one_step_trains(flux, finetune):
    b = _fresh(flux)
    if finetune == "lora":
        add_lora(b.transformer, LORA)
        # peft's init has B = 0 (no gradient for A on step one); use a "trained" adapter.
        with torch.no_grad():
            for name, p in b.transformer.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    cfg = SampleConfig(num_steps=3, group_size=2, batch_size=4, micro_batch_size=4, sde="dance",
                       eta=0.3, schedule="shift", shift=3.0)
    res = rollout_and_update(b, _networks(b), cfg, PROMPTS)
    assert res.log_probs.shape == (4, 3) and torch.isfinite(res.log_probs).all()
    assert torch.equal(res.first_step_recomputed, res.log_probs[:, 0])
    assert res.ratio_mean == 1.0
    expected = {n for n in res.changed if n.startswith("transformer.")}
    if finetune == "lora":
        expected = {n for n in expected if "lora_" in n}
        # double block: to_q, to_k, to_v, to_out.0; single block: to_q, to_k, to_v; x (A, B).
        assert len(expected) == (4 + 3) * 2
    assert res.trainable == expected
    assert all(res.changed[n] for n in expected)
    assert not any(res.changed[n] for n in res.changed if n not in expected)


def test_lora_round_trip_into_stock_pipeline(flux, flux_dir, pipe, tmp_path):
    b = _fresh(flux)
    add_lora(b.transformer, LORA)  # stock init (B = 0): one step moves B only
    cfg = SampleConfig(num_steps=2, group_size=2, batch_size=4, micro_batch_size=4)
    rollout_and_update(b, _networks(b), cfg, PROMPTS, lr=1e-2)
    b.save_pretrained(tmp_path)
    assert (tmp_path / LORA_WEIGHTS).is_file() and not (tmp_path / "transformer").exists()
    sigmas = make_times(flux, SampleConfig(num_steps=3, schedule="resolution"))
    lat = _latents(3)
    ours = _ode_images(b, lat, sigmas)
    kw = dict(num_inference_steps=3, height=32, width=32, max_sequence_length=SEQ,
              output_type="pt")
    with torch.no_grad():
        base = pipe(PROMPTS, latents=pack_latents(lat), **kw).images
        lora_pipe = FluxPipeline.from_pretrained(flux_dir, local_files_only=True)
        lora_pipe.set_progress_bar_config(disable=True)
        lora_pipe.load_lora_weights(tmp_path)
        loaded = lora_pipe(PROMPTS, latents=pack_latents(lat), **kw).images
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=0)
    assert (loaded - base).abs().max() > 1e-4


def test_full_save_writes_a_transformer_folder(flux, tmp_path):
    flux.save_pretrained(tmp_path)
    loaded = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer")
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(),
                                                  flux.transformer.parameters(), strict=True))


def test_registered_loader(flux_dir):
    assert "flux" in BACKBONES
    b = get_backbone(ModelConfig(backbone="flux", path=str(flux_dir), finetune="lora",
                                 lora_rank=2, gradient_checkpointing=True))
    assert b.latent_shape == (4, 16, 16) and b.max_sequence_length == 512
    assert len(b.trainable_parameters()) == 14
    assert b.transformer.is_gradient_checkpointing


def test_missing_folder_or_subfolder_names_it(tmp_path):
    with pytest.raises(SlasError, match="model.path is required for backbone 'flux'"):
        get_backbone(ModelConfig(backbone="flux"))
    (tmp_path / "partial").mkdir()
    for part in ("transformer", "vae", "text_encoder", "tokenizer"):
        (tmp_path / "partial" / part).mkdir()
    with pytest.raises(SlasError, match="lacks the subfolder.*text_encoder_2, tokenizer_2"):
        FluxBackbone.from_pretrained(tmp_path / "partial")
