"""Backbone adapters: one table of loaders ``(ModelConfig, device) -> Backbone``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from slas.backbones.base import Backbone, Conditioning
from slas.config import ModelConfig
from slas.errors import SlasError

BackboneLoader = Callable[[ModelConfig, torch.device], Backbone]



def load_world(config: ModelConfig, device: torch.device) -> Backbone:
    """The built-in world's flow-matching policy (pixel-space UNet, 32x32); default: the
    committed weights."""
    from slas.backbones.world import DEFAULT_POLICY_DIR, WorldBackbone

    backbone = WorldBackbone.from_pretrained(config.path or DEFAULT_POLICY_DIR, device)
    if config.finetune == "lora":
        add_lora(backbone.unet, config)
    return backbone


def load_sd(config: ModelConfig, device: torch.device) -> Backbone:
    """Stable Diffusion 1.x (DanceGRPO SD1.4) from the local pipeline folder model.path.

    Resolution: model.resolution, else the UNet's ``sample_size`` (512 px for SD1.4). The
    frozen text encoder and VAE take the autocast dtype (bf16, as DanceGRPO) when
    ``config.dtype == "bf16"``.
    """
    from slas.backbones.sd import StableDiffusionBackbone

    backbone = StableDiffusionBackbone.from_pretrained(
        config.path, device, resolution=config.resolution,
        frozen_dtype=torch.bfloat16 if config.dtype == "bf16" else torch.float32)
    if config.finetune == "lora":
        add_lora(backbone.unet, config)
    if config.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    return backbone


def load_flux(config: ModelConfig, device: torch.device) -> Backbone:
    """FLUX.1 (DanceGRPO FLUX.1-dev) from the local pipeline folder model.path.

    Guidance embedding model.guidance (3.5), no true CFG; resolution model.resolution, else
    the VAE's ``sample_size`` (1024 px for FLUX.1); frozen parts as in ``load_sd``.
    """
    from slas.backbones.flux import FluxBackbone

    backbone = FluxBackbone.from_pretrained(
        config.path, device, resolution=config.resolution, guidance=config.guidance,
        frozen_dtype=torch.bfloat16 if config.dtype == "bf16" else torch.float32)
    if config.finetune == "lora":
        add_lora(backbone.transformer, config)
    if config.gradient_checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    return backbone


def add_lora(module: torch.nn.Module, config: ModelConfig) -> None:
    """Freeze ``module`` and attach a peft LoRA adapter (rank, alpha, targets from config)."""
    from peft import LoraConfig

    module.requires_grad_(False)
    module.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                  init_lora_weights="gaussian",
                                  target_modules=list(config.lora_targets)))


BACKBONES: dict[str, BackboneLoader] = {
    "world": load_world,
    "sd": load_sd,
    "flux": load_flux,
}


def get_backbone(config: ModelConfig, device: torch.device | str = "cpu") -> Backbone:
    """Load ``config.backbone``; unknown names list the valid ones."""
    if config.backbone not in BACKBONES:
        raise SlasError(
            f"unknown backbone {config.backbone!r} in model.backbone; valid: {', '.join(BACKBONES)}"
        )
    return BACKBONES[config.backbone](config, torch.device(device))


__all__ = ["BACKBONES", "Backbone", "Conditioning", "get_backbone"]
