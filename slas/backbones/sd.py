"""Stable Diffusion 1.x adapter (the SD1.4 setting of DanceGRPO, which is DDPO's).

Loads ``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``, ``CLIPTokenizer`` and the
scheduler config from a LOCAL diffusers pipeline folder (``local_files_only=True``; no download).
The sampler drives it with DDIM timesteps: ``t`` is the integer training timestep, the schedule
``alphas_cumprod`` comes from the folder's scheduler config (float32, as diffusers computes it)
and ``prediction_type`` from the same config (``epsilon`` for SD1.4).

Classifier-free guidance follows diffusers ``StableDiffusionPipeline``: the negative is the empty
string, both branches run in one 2N forward, ``eps = u + w (c - u)``. Latents are
``(C, H / f, W / f)`` with ``f = 2 ** (len(vae.block_out_channels) - 1)`` (8 for SD1.x) and
``decode`` is ``vae.decode(latents / scaling_factor)`` mapped from [-1, 1] to [0, 1].

Training: the text encoder and VAE are frozen; the trainable part is the whole UNet
(``finetune="full"``, DanceGRPO SD) or its peft LoRA adapter. ``save_pretrained`` writes the UNet
as a diffusers folder (full) or ``pytorch_lora_weights.safetensors`` (LoRA) that a stock
``StableDiffusionPipeline.load_lora_weights`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer

from slas.backbones.base import Conditioning, PredictionType, unet_blocks
from slas.errors import SlasError

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
_DDPM_TYPES = ("epsilon", "v_prediction", "sample")


def require_pipeline_dir(path: str | Path | None, parts: Sequence[str], backbone: str) -> Path:
    """Check that ``path`` is a local pipeline folder holding the subfolders ``parts``.

    Raises:
        SlasError: ``path`` is None, missing, or lacks a subfolder (the message names it and
            ``model.path``).
    """
    if path is None:
        raise SlasError(f"model.path is required for backbone {backbone!r}: set it to a local "
                        "diffusers pipeline folder (e.g. model.path=/models/my-pipeline)")
    root = Path(path)
    if not root.is_dir():
        raise SlasError(f"model.path {root} is not a directory; point model.path at a local "
                        f"{backbone!r} diffusers pipeline folder (weights are never downloaded)")
    missing = [p for p in parts if not (root / p).is_dir()]
    if missing:
        raise SlasError(f"model.path {root} lacks the subfolder(s) {', '.join(missing)}; a "
                        f"{backbone!r} pipeline folder needs {', '.join(parts)} (as written "
                        "by the diffusers pipeline's save_pretrained)")
    return root


def to_unit_range(images: Tensor) -> Tensor:
    """VAE output ``[N, 3, H, W]`` in [-1, 1] -> float32 in [0, 1] (diffusers ``denormalize``)."""
    return (images.float() / 2.0 + 0.5).clamp(0.0, 1.0)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixel-per-latent factor ``2 ** (blocks - 1)``, as diffusers pipelines compute it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def lora_adapter_state(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """``(diffusers-format LoRA state dict, adapter config dict)`` of ``module``, or None.

    The config (rank, alpha, targets) travels as safetensors metadata so that a stock pipeline's
    ``load_lora_weights`` rebuilds the same scaling ``alpha / r``; without it diffusers assumes
    ``alpha = r``.
    """
    peft_config = getattr(module, "peft_config", None)
    if not peft_config:
        return None
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    name = next(iter(peft_config))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(module, adapter_name=name))
    return state, peft_config[name].to_dict()


class StableDiffusionBackbone:
    """``Backbone`` adapter of a Stable Diffusion 1.x pipeline (see the module docstring).

    Args:
        unet: the denoiser (trainable).
        vae: the autoencoder; frozen here.
        text_encoder: the CLIP text encoder; frozen here.
        tokenizer: its tokenizer.
        scheduler: a ``DDIMScheduler`` built from the pipeline's scheduler config; gives
            ``alphas_cumprod`` and ``prediction_type``.
        resolution: image side in pixels; default ``unet.sample_size * f`` (512 for SD1.4).
        max_length: token length of every prompt (padding "max_length", truncation); 77 as CLIP.
        decode_batch_size: images per VAE decode call (memory knob; the result does not depend
            on it beyond float rounding).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
        *,
        resolution: int | None = None,
        max_length: int = 77,
        decode_batch_size: int = 8,
    ) -> None:
        prediction = scheduler.config.prediction_type
        if prediction not in _DDPM_TYPES:
            raise SlasError(f"scheduler config prediction_type {prediction!r} is not supported; "
                            f"expected one of {list(_DDPM_TYPES)}")
        factor = vae_scale_factor(vae)
        resolution = resolution or unet.config.sample_size * factor
        if resolution % factor or max_length < 1 or decode_batch_size < 1:
            raise SlasError(f"sd backbone: resolution {resolution} must be a multiple of the VAE "
                            f"factor {factor}; max_length ({max_length}) and decode_batch_size "
                            f"({decode_batch_size}) must be >= 1")
        self.unet = unet
        self.vae = vae.requires_grad_(False)
        self.text_encoder = text_encoder.requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.max_length = int(max_length)
        self.decode_batch_size = int(decode_batch_size)
        self.prediction_type: PredictionType = prediction
        self.latent_shape: tuple[int, ...] = (
            unet.config.in_channels, resolution // factor, resolution // factor)
        self.alphas_cumprod: Tensor | None = scheduler.alphas_cumprod.float().clone()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None,
        device: torch.device | str = "cpu",
        *,
        frozen_dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> StableDiffusionBackbone:
        """Load the five components of a local SD1.x pipeline folder.

        Args:
            path: the folder (``model.path``); must hold ``unet``, ``vae``, ``text_encoder``,
                ``tokenizer`` and ``scheduler``.
            device: where the networks go.
            frozen_dtype: dtype of the frozen VAE and text encoder (the UNet stays float32:
                its weights are the optimiser's master copy).
            **kwargs: ``resolution``, ``max_length``, ``decode_batch_size`` of the constructor.

        Raises:
            SlasError: the folder or one of its subfolders is missing.
        """
        root = require_pipeline_dir(path, SD_PARTS, "sd")
        local = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=torch.float32,
                                                    **local)
        vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=frozen_dtype, **local)
        text = CLIPTextModel.from_pretrained(root / "text_encoder", dtype=frozen_dtype, **local)
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", **local)
        scheduler = DDIMScheduler.from_pretrained(root / "scheduler", **local)
        backbone = cls(unet.eval(), vae.eval(), text.eval(), tokenizer, scheduler, **kwargs)
        return backbone.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> StableDiffusionBackbone:
        """Move the three networks to ``device`` (in place); returns ``self``."""
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        return self

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """CLIP last hidden states ``[P, max_length, D]`` (float32, no gradients) of ``prompts``,
        tokenised as ``StableDiffusionPipeline.encode_prompt`` does (no attention mask)."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return self.text_encoder(ids.to(self.device))[0].float()

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode ``P`` prompts in one text-encoder call -> ``"hidden"`` ``[P, L, D]`` and
        ``"uncond"`` ``[P, L, D]`` (the empty-string negative, repeated per row so that
        ``Conditioning.select`` keeps the two aligned)."""
        hidden = self.encode_text(list(prompts) + [""])
        cond, uncond = hidden[:-1], hidden[-1:].expand(len(prompts), -1, -1)
        return Conditioning({"hidden": cond.contiguous(), "uncond": uncond.contiguous()})

    def predict(self, x_t: Tensor, t: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Guided UNet output ``u + w (c - u)`` ``[N, *latent_shape]`` (Ho & Salimans 2022, as
        ``StableDiffusionPipeline``) for ``x_t`` ``[N, *latent_shape]`` at DDIM timesteps ``t``
        ``[N]`` (integer values, any dtype); ``cond`` has N rows. Both branches run in ONE 2N
        forward; ``guidance_scale == 1`` runs the conditional branch only."""
        n = x_t.shape[0]
        if t.ndim != 1 or t.shape[0] != n or len(cond) != n:
            raise SlasError(f"predict: need t [N] and N conditioning rows for x_t with N={n}; "
                            f"got t {list(t.shape)} and {len(cond)} rows (use cond.select)")
        hidden = cond.tensors["hidden"].to(x_t.device)
        t = t.to(x_t.device)
        if guidance_scale == 1.0:
            return self.unet(x_t, t, encoder_hidden_states=hidden).sample
        both = torch.cat([cond.tensors["uncond"].to(x_t.device), hidden])
        out = self.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=both)
        uncond, text = out.sample.chunk(2)
        return uncond + guidance_scale * (text - uncond)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[N, *latent_shape]`` -> images ``[N, 3, H, W]`` float32 in [0, 1]
        (``vae.decode(latents / scaling_factor)``, then ``x / 2 + 0.5`` clamped)."""
        scale = self.vae.config.scaling_factor
        dtype = next(self.vae.parameters()).dtype
        out = [self.vae.decode((chunk / scale).to(self.device, dtype)).sample
               for chunk in latents.split(self.decode_batch_size)]
        return to_unit_range(torch.cat(out))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The UNet's parameters that require gradients, in module order: all of them (full
        fine-tune) or only the LoRA weights after ``add_lora``."""
        return [p for p in self.unet.parameters() if p.requires_grad]

    def shard_modules(self) -> list[nn.Module]:
        """The UNet's down blocks, mid block and up blocks, then the UNet (FSDP units)."""
        return unet_blocks(self.unet) + [self.unet]

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``<path>/pytorch_lora_weights.safetensors`` (LoRA; loadable with a stock
        pipeline's ``load_lora_weights``) or the diffusers folder ``<path>/unet`` (full)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lora = lora_adapter_state(self.unet)
        if lora is None:
            self.unet.save_pretrained(path / "unet", safe_serialization=True)
            return path
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            path, unet_lora_layers=lora[0], unet_lora_adapter_metadata=lora[1],
            weight_name=LORA_WEIGHTS)
        return path
