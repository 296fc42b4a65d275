"""Backbone adapters: one table of loaders ``(ModelConfig, device) -> Backbone``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from slas.backbones.base import Backbone, Conditioning
from slas.config import ModelConfig
from slas.errors import SlasError

BackboneLoader = Callable[[ModelConfig, torch.device], Backbone]

BACKBONES: dict[str, BackboneLoader] = {}


def get_backbone(config: ModelConfig, device: torch.device | str = "cpu") -> Backbone:
    """Load ``config.backbone``; unknown names list the valid ones."""
    if config.backbone not in BACKBONES:
        raise SlasError(
            f"unknown backbone {config.backbone!r} in model.backbone; valid: {', '.join(BACKBONES)}"
        )
    return BACKBONES[config.backbone](config, torch.device(device))


__all__ = ["BACKBONES", "Backbone", "Conditioning", "get_backbone"]
