"""The one Protocol every backbone adapter implements.

A backbone exposes *capabilities*, not parts (DESIGN §2): prompt encoding (once per batch), one
model prediction with batched classifier-free guidance, decoding to images, and its trainable
parameters. Samplers never see the adapter; the rollout passes them the prediction.
``shard_modules`` names the trained network and its repeated blocks for FSDP sharding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

PredictionType = Literal["flow", "epsilon", "v_prediction", "sample"]


@dataclass(frozen=True)
class Conditioning:
    """Prompt conditioning computed once per rollout batch.

    Attributes:
        tensors: name -> tensor with a leading batch dim ``[P, ...]`` (one row per prompt).
            The adapter decides the names (e.g. ``"hidden"``, ``"mask"``, ``"pooled"``).
    """

    tensors: dict[str, Tensor]

    def select(self, index: Tensor) -> Conditioning:
        """Rows ``index`` ``[N]`` (e.g. each prompt repeated G times) of every tensor."""
        return Conditioning(
            {k: v.index_select(0, index.to(v.device)) for k, v in self.tensors.items()}
        )

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning({k: v.to(device) for k, v in self.tensors.items()})

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]


@runtime_checkable
class Backbone(Protocol):
    """What the rollout, the trainer and the evaluators need from a text-to-image model.

    Time convention: ``t`` is the *sampler* time. For ``prediction_type == "flow"`` it is the noise
    level sigma in [0, 1] (x_sigma = (1 - sigma) x0 + sigma eps, model predicts v = eps - x0); the
    adapter maps sigma to its network's own timestep input. For DDPM-type backbones
    (``"epsilon" | "v_prediction" | "sample"``) it is the discrete training timestep and
    ``alphas_cumprod`` is the schedule the DDIM step needs.
    """

    prediction_type: PredictionType
    latent_shape: tuple[int, ...]  # per sample, e.g. (C, H, W)
    alphas_cumprod: Tensor | None  # [T_train] for DDPM-type backbones, None for flow

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode ``P`` prompts (and whatever CFG needs) -> Conditioning with rows ``[P, ...]``."""
        ...

    def predict(self, x_t: Tensor, t: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Model output for ``x_t`` ``[N, *latent_shape]`` at times ``t`` ``[N]``.

        ``cond`` has N rows. With ``guidance_scale != 1`` and a backbone that uses CFG, the
        conditional and unconditional branches run in ONE forward on a 2N batch and are combined
        as ``u + w (c - u)``. Returns ``[N, *latent_shape]``.
        """
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[N, *latent_shape]`` -> images ``[N, 3, H, W]`` float in [0, 1]."""
        ...

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (LoRA weights or the full denoiser), in a fixed
        order (checkpoints store them by position)."""
        ...

    def shard_modules(self) -> list[nn.Module]:
        """The trained network's repeated blocks, then the network itself (last): the units
        FSDP shards, innermost first (``slas.distributed.shard_backbone``). Every trainable
        parameter lies in the last one."""
        ...

    def save_pretrained(self, path: str | Path) -> Path:
        """Write what is needed to load the (trained) policy again; returns the directory."""
        ...


def unet_blocks(unet: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a diffusers ``UNet2DConditionModel``: ``down_blocks``, the
    ``mid_block`` (when present) and ``up_blocks``, in forward order."""
    mid = [unet.mid_block] if getattr(unet, "mid_block", None) is not None else []
    return [*unet.down_blocks, *mid, *unet.up_blocks]
