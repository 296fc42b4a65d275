"""Builders of tiny random-weight SD1.x and FLUX.1 pipeline folders (offline, seconds on a CPU).

Each builder assembles a stock diffusers pipeline from tiny components and writes it with
``save_pretrained``, so the adapters load it through the same code path as real weights.

Tokenizers are built offline from a hand-made byte-level BPE vocabulary: the 256 byte symbols of
CLIP's byte-to-unicode table, the same with the end-of-word marker ``</w>``, a few merges and
CLIP's two special tokens (515 ids). No T5 sentencepiece model ships offline, so the FLUX folder
uses a CLIP tokenizer with ``model_max_length=512`` as ``tokenizer_2`` in front of a tiny
``T5EncoderModel`` (env-feasibility notes, pitfall 10).

Sizes (env-feasibility section 2): SD UNet (32, 64) channels at a 16x16 latent, 2-block VAE
(32 px images), CLIP text encoder hidden 32 x 2 layers; FLUX transformer 1 double + 1 single
block, 2 heads x 16, 64 packed image tokens.

:func:`rollout_and_update` runs the library's own rollout and one PPO update on an adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

from slas.config import SampleConfig

IMAGE_SIZE = 32  # pixels; both VAEs downsample by 2 -> 16x16 latents
TEXT_DIM = 32
_MERGES = [("o", "f</w>"), ("r", "e"), ("re", "d</w>"), ("c", "a")]
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """CLIP/GPT-2 byte-to-unicode table: printable bytes map to themselves, the rest to 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = dict.fromkeys(printable), 0
    symbols = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in codes:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in codes]


def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """Byte-level CLIP BPE tokenizer with 515 ids (bos 513, eos = pad 514); no download."""
    chars = _byte_symbols()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in _MERGES] + [_BOS, _EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=model_max_length)


def tiny_clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """CLIP text encoder, hidden 32, 2 layers, 4 heads, 77 positions."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def _tiny_vae(latent_channels: int, **kwargs) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), layers_per_block=1, sample_size=IMAGE_SIZE, **kwargs)


def build_tiny_sd(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``StableDiffusionPipeline`` folder (DDIM, epsilon) to ``path``."""
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_clip_tokenizer()
        unet = UNet2DConditionModel(
            sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4,
            block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM, attention_head_dim=8)
        pipe = StableDiffusionPipeline(
            vae=_tiny_vae(4), text_encoder=tiny_clip_text_encoder(tokenizer), tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", clip_sample=False,
                                    set_alpha_to_one=False, steps_offset=1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def build_tiny_flux(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``FluxPipeline`` folder (guidance-distilled transformer) to ``path``.

    The scheduler is ``FlowMatchEulerDiscreteScheduler`` with FLUX.1-dev's resolution-dependent
    shift (``use_dynamic_shifting=True``, base 0.5, max 1.15) and the VAE carries FLUX.1's
    ``scaling_factor`` / ``shift_factor`` so that decoding exercises the unscale.
    """
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_clip_tokenizer()
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
            pooled_projection_dim=TEXT_DIM, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
            num_heads=4, decoder_start_token_id=0))
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(
                use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                base_image_seq_len=256, max_image_seq_len=4096),
            vae=_tiny_vae(4, use_quant_conv=False, use_post_quant_conv=False,
                          scaling_factor=0.3611, shift_factor=0.1159),
            text_encoder=tiny_clip_text_encoder(tokenizer), tokenizer=tokenizer,
            text_encoder_2=t5, tokenizer_2=tiny_clip_tokenizer(model_max_length=512),
            transformer=transformer)
    pipe.save_pretrained(path)
    return path


class UpdateCheck(NamedTuple):
    """What one PPO update on a fresh rollout did (see :func:`rollout_and_update`).

    Attributes:
        log_probs: ``[N, T]`` recorded rollout log-probs.
        first_step_recomputed: ``[N]`` log-prob of the first transition recomputed with grad.
        ratio_mean: mean PPO ratio of that recomputation.
        changed: parameter name -> whether the AdamW step changed it, for every parameter of
            every network of the backbone (``"<network>.<param>"``).
        trainable: names of the parameters handed to the optimiser.
    """

    log_probs: Tensor
    first_step_recomputed: Tensor
    ratio_mean: float
    changed: dict[str, bool]
    trainable: set[str]


def rollout_and_update(
    backbone: Any, networks: dict[str, nn.Module], cfg: SampleConfig, prompts: list[str],
    *, lr: float = 1e-3,
) -> UpdateCheck:
    """Roll out ``len(prompts) * cfg.group_size`` samples with the library's rollout (one
    micro-batch), recompute the first transition with gradients, take one AdamW step
    (``weight_decay=0``, so only gradients move weights) on the PPO-clip loss with fixed
    advantages ``+1, -1, +1, ...``, and report which parameters changed."""
    from slas.losses import ppo_clip_loss
    from slas.sampling.rollout import make_times, model_time, rollout, transition

    n = len(prompts) * cfg.group_size
    ids = torch.arange(n)
    cond = backbone.encode_prompts(prompts)
    times = make_times(backbone, cfg)
    traj = rollout(backbone, cond, cfg, times=times, prompt_ids=ids // cfg.group_size,
                   group_ids=ids // cfg.group_size, sample_ids=ids, seed=11, iteration=0)
    params = backbone.trainable_parameters()
    named = {f"{k}.{name}": p for k, net in networks.items() for name, p in net.named_parameters()}
    param_ids = {id(p) for p in params}
    trainable = {name for name, p in named.items() if id(p) in param_ids}
    before = {name: p.detach().clone() for name, p in named.items()}
    step = torch.zeros(n, dtype=torch.long)
    x, prev = traj.latents[:, 0], traj.latents[:, 1]
    out = backbone.predict(x, model_time(times, step), cond.select(traj.prompt_ids),
                           cfg.guidance_scale)
    new = transition(backbone, cfg, times, step, x, out, prev_sample=prev)
    advantages = torch.tensor([1.0, -1.0]).repeat(n // 2)
    loss = ppo_clip_loss(new.log_prob, traj.log_probs[:, 0], advantages)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss.loss.backward()
    optimizer.step()
    changed = {name: not torch.equal(before[name], p.detach()) for name, p in named.items()}
    return UpdateCheck(traj.log_probs, new.log_prob.detach(), float(loss.ratio_mean), changed,
                       trainable)
