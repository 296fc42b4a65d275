"""The world's base policy: a small pixel-space flow-matching generator built from diffusers parts.

Model: ``diffusers.UNet2DConditionModel`` on 32x32 RGB (3 in / 3 out channels, ~1.4M parameters)
cross-attending to a tiny ``transformers.CLIPTextModel`` (hidden 64, 2 layers) over the world's
word-level tokens (``slas.world.tokenizer``). Both were trained jointly by ``slas.world.pretrain``
with the flow-matching objective of FLUX/SD3 (DESIGN section 3): ``x_sigma = (1 - sigma) x0 +
sigma eps``, the network predicts ``v = eps - x0``. Latents are the images themselves mapped to
[-1, 1] (pixel space), so ``latent_shape = (3, 32, 32)`` and ``decode`` is an affine map.

Timestep convention: the sampler passes ``sigma`` in [0, 1]; the network receives
``sigma * time_scale`` (``time_scale = 1000``, the range of diffusers' sinusoidal timestep
embedding that FLUX/SD3 pipelines feed their transformers).

On disk (``save_pretrained`` / ``from_pretrained``): ``<dir>/unet`` and ``<dir>/text_encoder``
(diffusers / transformers ``save_pretrained``, safetensors), ``<dir>/tokenizer.json`` and
``<dir>/world_policy.json`` (image size, time scale, format version, training notes).

During RL only the UNet is trained (``trainable_parameters``); the text encoder is frozen and
prompt encodings are computed once per batch without gradients.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel

from slas.backbones.base import Conditioning, PredictionType, unet_blocks
from slas.errors import SlasError
from slas.world.tokenizer import TOKENIZER_FILE, WorldTokenizer

IMAGE_SIZE = 32
TIME_SCALE = 1000.0
FORMAT_VERSION = 1
POLICY_FILE = "world_policy.json"
DEFAULT_POLICY_DIR = Path(__file__).resolve().parents[1] / "world" / "weights" / "policy"
_REGENERATE = "`slas world pretrain` (or `python -m slas.world.pretrain`)"


def unet_config(
    *,
    block_out_channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[bool] = (False, False, True),
    layers_per_block: int = 1,
    cross_attention_dim: int = 64,
    attention_heads: int = 4,
    norm_num_groups: int = 8,
) -> dict[str, Any]:
    """Config of the pixel-space UNet (``UNet2DConditionModel`` keyword arguments).

    The default (~1.41M parameters) runs at native 32x32: plain ResNet levels at 32x32 and 16x16,
    (self + cross) attention only at 8x8 (last level and mid block). Attention at 16x16 as well
    (``(False, True, True)``, 1.69M) measured ~1.6x slower per training step on CPU.

    Args:
        block_out_channels: channels per resolution level.
        attention_levels: per level, whether it has (self + cross) attention.
        layers_per_block: ResNet layers per down block.
        cross_attention_dim: width of the text encoder's hidden states.
        attention_heads: heads per attention layer (diffusers' ``attention_head_dim`` field,
            which ``UNet2DConditionModel`` reads as the number of heads).
        norm_num_groups: GroupNorm groups (must divide every channel count).
    """
    if len(attention_levels) != len(block_out_channels):
        raise SlasError("unet_config: attention_levels needs one entry per block_out_channels "
                        f"level ({len(block_out_channels)}), got {len(attention_levels)}")
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)]
    return {
        "sample_size": IMAGE_SIZE, "in_channels": 3, "out_channels": 3,
        "block_out_channels": tuple(block_out_channels), "layers_per_block": layers_per_block,
        "down_block_types": tuple(down), "up_block_types": tuple(up),
        "cross_attention_dim": cross_attention_dim, "attention_head_dim": attention_heads,
        "norm_num_groups": norm_num_groups,
    }


def text_encoder_config(
    tokenizer: WorldTokenizer, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4
) -> CLIPTextConfig:
    """Config of the tiny CLIP text encoder (~0.07M parameters at the defaults).

    Args:
        tokenizer: fixes the vocabulary size, sequence length and special-token ids.
        hidden_size: width (= the UNet's ``cross_attention_dim``).
        num_layers: transformer layers.
        num_heads: attention heads.
    """
    return CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, max_position_embeddings=tokenizer.max_length,
        pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
    )


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise SlasError(f"world policy {what} {path} not found; regenerate the weights with "
                        f"{_REGENERATE}, or pass the directory that holds them")


class WorldBackbone:
    """``Backbone`` adapter of the world's flow-matching policy (see the module docstring).

    Args:
        unet: the denoiser (3 -> 3 channels, 32x32).
        text_encoder: the CLIP text encoder; frozen here (``requires_grad_(False)``).
        tokenizer: the world's word tokenizer.
        time_scale: network timestep = ``sigma * time_scale``.
        info: extra fields kept in ``world_policy.json`` (e.g. training settings).
    """

    prediction_type: PredictionType = "flow"
    latent_shape: tuple[int, ...] = (3, IMAGE_SIZE, IMAGE_SIZE)
    alphas_cumprod: Tensor | None = None

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: WorldTokenizer,
        *,
        time_scale: float = TIME_SCALE,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.unet = unet
        self.text_encoder = text_encoder.requires_grad_(False)
        self.tokenizer = tokenizer
        self.time_scale = float(time_scale)
        self.info = dict(info or {})

    @classmethod
    def create(
        cls,
        *,
        tokenizer: WorldTokenizer | None = None,
        unet_kwargs: Mapping[str, Any] | None = None,
        text_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> WorldBackbone:
        """A randomly initialised policy (deterministic in ``seed``).

        Args:
            tokenizer: defaults to ``WorldTokenizer.default()``.
            unet_kwargs: overrides of ``unet_config`` arguments.
            text_kwargs: overrides of ``text_encoder_config`` arguments.
            seed: torch seed of the initialisation (the global RNG state is restored after).
        """
        tokenizer = tokenizer or WorldTokenizer.default()
        text_cfg = text_encoder_config(tokenizer, **dict(text_kwargs or {}))
        unet_kw = {"cross_attention_dim": text_cfg.hidden_size, **dict(unet_kwargs or {})}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**unet_config(**unet_kw))
            text_encoder = CLIPTextModel(text_cfg)
        return cls(unet, text_encoder, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> WorldBackbone:
        """Move both networks to ``device`` (in place); returns ``self``."""
        self.unet.to(device)
        self.text_encoder.to(device)
        return self

    def encode_ids(self, ids: Tensor) -> Tensor:
        """Text encoder hidden states of token ids ``[P, L]`` -> ``[P, L, D]`` (with autograd
        if the encoder's parameters require it; used by pretraining)."""
        return self.text_encoder(input_ids=ids.to(self.device)).last_hidden_state

    def velocity(self, x_t: Tensor, sigma: Tensor, hidden: Tensor) -> Tensor:
        """One network forward: ``v`` ``[N, 3, 32, 32]`` for ``x_t`` ``[N, 3, 32, 32]``,
        ``sigma`` ``[N]`` in [0, 1] and text states ``hidden`` ``[N, L, D]`` (no guidance)."""
        timestep = sigma.to(x_t.device, torch.float32) * self.time_scale
        return self.unet(x_t, timestep, encoder_hidden_states=hidden).sample

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode ``P`` prompts -> ``Conditioning`` with ``"hidden"`` ``[P, L, D]`` (the
        prompts) and ``"uncond"`` ``[P, L, D]`` (the empty caption, repeated per row so that
        ``select`` keeps the two aligned). Runs without gradients."""
        ids = self.tokenizer.encode(list(prompts) + [""])
        with torch.no_grad():
            hidden = self.encode_ids(ids)
        cond, uncond = hidden[:-1], hidden[-1:].expand(len(prompts), -1, -1)
        return Conditioning({"hidden": cond.contiguous(), "uncond": uncond.contiguous()})

    def predict(self, x_t: Tensor, t: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Guided velocity ``u + w (c - u)`` ``[N, 3, 32, 32]`` (classifier-free guidance, Ho &
        Salimans 2022) for ``x_t`` ``[N, 3, 32, 32]`` at ``t = sigma`` ``[N]``; ``cond`` has N
        rows. Both branches run in ONE forward on a 2N batch; ``guidance_scale == 1`` runs the
        conditional branch only."""
        n = x_t.shape[0]
        if t.ndim != 1 or t.shape[0] != n or len(cond) != n:
            raise SlasError(f"predict: need t [N] and N conditioning rows for x_t with N={n}; "
                            f"got t {list(t.shape)} and {len(cond)} rows (use cond.select)")
        hidden = cond.tensors["hidden"].to(x_t.device)
        if guidance_scale == 1.0:
            return self.velocity(x_t, t, hidden)
        both = torch.cat([cond.tensors["uncond"].to(x_t.device), hidden])
        v = self.velocity(torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[N, 3, 32, 32]`` in [-1, 1] -> images ``[N, 3, 32, 32]`` in [0, 1]
        (``(x + 1) / 2``, clamped)."""
        return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @staticmethod
    def images_to_latents(images: Tensor) -> Tensor:
        """Images ``[N, 3, 32, 32]`` in [0, 1] -> latents in [-1, 1] (inverse of ``decode``)."""
        return images.float() * 2.0 - 1.0

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The UNet's parameters (the text encoder stays frozen during RL)."""
        return list(self.unet.parameters())

    def shard_modules(self) -> list[nn.Module]:
        """The UNet's down blocks, mid block and up blocks, then the UNet (FSDP units)."""
        return unet_blocks(self.unet) + [self.unet]

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts ``{"unet", "text_encoder"}``."""
        return {"unet": sum(p.numel() for p in self.unet.parameters()),
                "text_encoder": sum(p.numel() for p in self.text_encoder.parameters())}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the policy directory (see the module docstring); returns ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
        self.tokenizer.save(path)
        meta = {"format_version": FORMAT_VERSION, "image_size": IMAGE_SIZE,
                "time_scale": self.time_scale, "prediction_type": self.prediction_type,
                **self.info}
        (path / POLICY_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | Path = DEFAULT_POLICY_DIR, device: torch.device | str = "cpu"
    ) -> WorldBackbone:
        """Load a directory written by ``save_pretrained`` (default: the committed weights).

        Raises:
            SlasError: the directory or one of its files is missing or of another format
                version (the message names the path and the command that regenerates it).
        """
        path = Path(path)
        _require(path, "directory")
        for name in ("unet", "text_encoder", TOKENIZER_FILE, POLICY_FILE):
            _require(path / name, "file")
        meta = json.loads((path / POLICY_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION or meta.get("image_size") != IMAGE_SIZE:
            raise SlasError(f"world policy {path / POLICY_FILE}: format_version "
                            f"{meta.get('format_version')} / image_size {meta.get('image_size')}"
                            f" unsupported (need {FORMAT_VERSION} / {IMAGE_SIZE}); regenerate "
                            f"with {_REGENERATE}")
        unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder",
                                                     torch_dtype=torch.float32)
        info = {k: v for k, v in meta.items()
                if k not in ("format_version", "image_size", "time_scale", "prediction_type")}
        backbone = cls(unet.eval(), text_encoder.eval(), WorldTokenizer.load(path),
                       time_scale=meta["time_scale"], info=info)
        return backbone.to(device)
