"""Shared fixtures: a tiny random world policy and cheap rewards for end-to-end runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def tiny_world_backbone(seed: int = 0):
    """A ~50k-parameter world policy (random init) that runs a step in milliseconds."""
    from slas.backbones.world import WorldBackbone

    return WorldBackbone.create(
        unet_kwargs=dict(block_out_channels=(8, 16), attention_levels=(False, True),
                         norm_num_groups=4, attention_heads=2),
        text_kwargs=dict(hidden_size=16, num_heads=2),
        seed=seed,
    )


def brightness_reward(images: torch.Tensor, prompts, metadata) -> torch.Tensor:
    """Mean pixel value ``[N]``: cheap, deterministic, differs between samples."""
    return images.mean(dim=(1, 2, 3))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found; tests that read the shared data files are skipped")
    return SHARED_DATA
