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


def add_lora(module: torch.nn.Module, config: ModelConfig) -> None:
    """Freeze ``module`` and attach a peft LoRA adapter (rank, alpha, targets from config)."""
    from peft import LoraConfig

    module.requires_grad_(False)
    module.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                  init_lora_weights="gaussian",
                                  target_modules=list(config.lora_targets)))


BACKBONES: dict[str, BackboneLoader] = {"world": load_world}


def get_backbone(config: ModelConfig, device: torch.device | str = "cpu") -> Backbone:
    """Load ``config.backbone``; unknown names list the valid ones."""
    if config.backbone not in BACKBONES:
        raise SlasError(
            f"unknown backbone {config.backbone!r} in model.backbone; valid: {', '.join(BACKBONES)}"
        )
    return BACKBONES[config.backbone](config, torch.device(device))


__all__ = ["BACKBONES", "Backbone", "Conditioning", "get_backbone"]
