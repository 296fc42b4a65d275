"""Reward functions: one table, one signature.

Every entry of :data:`REWARDS` is a factory ``(RewardConfig, device) -> RewardFn`` and every
RewardFn maps ``(images [N, 3, H, W] in [0, 1], prompts [N], metadata [N]) -> scores [N]``
(float32, higher is better). Factories load weights from explicit local paths only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from slas.config import RewardConfig
from slas.errors import SlasError


class RewardFn(Protocol):
    def __call__(
        self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> Tensor:
        """``images [N, 3, H, W]`` in [0, 1] -> ``scores [N]``."""
        ...


RewardFactory = Callable[[RewardConfig, torch.device], RewardFn]

REWARDS: dict[str, RewardFactory] = {}


def get_reward(name: str, config: RewardConfig, device: torch.device | str = "cpu") -> RewardFn:
    """Build reward ``name``; unknown names list the valid ones."""
    if name not in REWARDS:
        raise SlasError(f"unknown reward {name!r} in reward.names; valid: {', '.join(REWARDS)}")
    return REWARDS[name](config, torch.device(device))
