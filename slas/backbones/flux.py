"""FLUX.1 adapter (the FLUX.1-dev setting of DanceGRPO), mirroring diffusers ``FluxPipeline``.

Loads ``FluxTransformer2DModel``, ``AutoencoderKL``, the CLIP text encoder (pooled prompt
vector) and the T5 encoder (prompt sequence) with their tokenizers from a LOCAL pipeline folder
(``local_files_only=True``). ``tokenizer_2`` is loaded with ``AutoTokenizer``, so any tokenizer
saved there works (tests put a CLIP tokenizer in front of a tiny ``T5EncoderModel``: no T5
vocabulary ships offline).

Flow matching (``prediction_type = "flow"``): the sampler time ``t`` is sigma in [0, 1] and the
network predicts ``v = eps - x0``. ``latent_shape`` is the UNPACKED latent ``(C, H / f, W / f)``
(``f = 2 ** (len(vae.block_out_channels) - 1)``, 8 for FLUX.1; ``C = in_channels / 4``), so the
sampler's SDE math is per latent element. ``predict`` does what one step of ``FluxPipeline``
does: pack 2x2 patches into tokens, build the latent image ids (row, column) and zero text ids,
feed ``timestep = sigma`` (the pipeline passes ``scheduler_timestep / 1000``, which is sigma;
the transformer multiplies by 1000 internally) and the distilled guidance embedding ``guidance``
(3.5, the pipeline's default), then unpack.

FLUX.1-dev is guidance-distilled and has no true classifier-free guidance: ``predict`` ignores
its ``guidance_scale`` argument (DanceGRPO runs FLUX with ``--cfg 0``); the guidance strength is
the constructor's ``guidance``. Transformers without a guidance embedding (FLUX.1-schnell) get
``guidance=None``.

``decode`` unscales (``latents / scaling_factor + shift_factor``) and VAE-decodes to [0, 1].
LoRA is saved with ``FluxPipeline.save_lora_weights`` for a stock ``load_lora_weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

from slas.backbones.base import Conditioning, PredictionType
from slas.backbones.sd import (
    LORA_WEIGHTS,
    lora_adapter_state,
    require_pipeline_dir,
    to_unit_range,
    vae_scale_factor,
)
from slas.errors import SlasError

FLUX_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
DEFAULT_GUIDANCE = 3.5


def pack_latents(latents: Tensor) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, (H/2)(W/2), 4C]``: each 2x2 patch becomes one token with
    channels ordered (c, dy, dx), row-major over patches (``FluxPipeline._pack_latents``)."""
    n, c, h, w = latents.shape
    patches = latents.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`pack_latents`: ``[N, (H/2)(W/2), 4C]`` -> ``[N, C, H, W]``."""
    n, _, channels = tokens.shape
    patches = tokens.reshape(n, height // 2, width // 2, channels // 4, 2, 2)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(n, channels // 4, height, width)


def latent_image_ids(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Positions ``[rows * cols, 3]`` of the packed tokens: (0, row, col), row-major
    (``FluxPipeline._prepare_latent_image_ids``; the transformer's rotary embedding reads them)."""
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    return torch.stack([torch.zeros_like(r), r, c], 1).to(device=device, dtype=dtype)


class FluxBackbone:
    """``Backbone`` adapter of a FLUX.1 pipeline (see the module docstring).

    Args:
        transformer: the denoiser (trainable).
        vae: the autoencoder; frozen here.
        text_encoder: the CLIP text encoder (pooled output); frozen here.
        tokenizer: its tokenizer (prompts padded to its ``model_max_length``, 77 for CLIP).
        text_encoder_2: the T5 encoder (sequence output); frozen here.
        tokenizer_2: its tokenizer.
        resolution: image side in pixels; default ``vae.sample_size`` (1024 for FLUX.1, the
            ``FluxPipeline`` default). Must be a multiple of ``2 f``.
        guidance: distilled guidance embedding value (FLUX.1-dev and DanceGRPO: 3.5).
        max_sequence_length: T5 token length (padding "max_length"; ``FluxPipeline``: 512).
        decode_batch_size: images per VAE decode call (memory knob).
    """

    prediction_type: PredictionType = "flow"
    alphas_cumprod: Tensor | None = None

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        text_encoder_2: T5EncoderModel,
        tokenizer_2: Any,
        *,
        resolution: int | None = None,
        guidance: float = DEFAULT_GUIDANCE,
        max_sequence_length: int = 512,
        decode_batch_size: int = 8,
    ) -> None:
        factor = vae_scale_factor(vae)
        resolution = resolution or int(vae.config.sample_size)
        if resolution % (2 * factor) or max_sequence_length < 1 or decode_batch_size < 1:
            raise SlasError(f"flux backbone: resolution {resolution} must be a multiple of "
                            f"{2 * factor} (VAE factor x 2x2 packing); max_sequence_length "
                            f"({max_sequence_length}) and decode_batch_size "
                            f"({decode_batch_size}) must be >= 1")
        self.transformer = transformer
        self.vae = vae.requires_grad_(False)
        self.text_encoder = text_encoder.requires_grad_(False)
        self.text_encoder_2 = text_encoder_2.requires_grad_(False)
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.guidance = float(guidance)
        self.max_sequence_length = int(max_sequence_length)
        self.decode_batch_size = int(decode_batch_size)
        side = resolution // factor
        self.latent_shape: tuple[int, ...] = (transformer.config.in_channels // 4, side, side)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None,
        device: torch.device | str = "cpu",
        *,
        frozen_dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> FluxBackbone:
        """Load the six components of a local FLUX.1 pipeline folder.

        Args:
            path: the folder (``model.path``) with ``transformer``, ``vae``, ``text_encoder``,
                ``tokenizer``, ``text_encoder_2`` and ``tokenizer_2``.
            device: where the networks go.
            frozen_dtype: dtype of the frozen VAE and text encoders (bf16 halves T5-XXL's
                memory); the transformer stays float32 (the optimiser's master weights).
            **kwargs: ``resolution``, ``guidance``, ``max_sequence_length``,
                ``decode_batch_size`` of the constructor.

        Raises:
            SlasError: the folder or one of its subfolders is missing.
        """
        root = require_pipeline_dir(path, FLUX_PARTS, "flux")
        local = {"local_files_only": True}
        transformer = FluxTransformer2DModel.from_pretrained(
            root / "transformer", torch_dtype=torch.float32, **local)
        vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=frozen_dtype, **local)
        clip = CLIPTextModel.from_pretrained(root / "text_encoder", dtype=frozen_dtype, **local)
        t5 = T5EncoderModel.from_pretrained(root / "text_encoder_2", dtype=frozen_dtype, **local)
        backbone = cls(
            transformer.eval(), vae.eval(), clip.eval(),
            CLIPTokenizer.from_pretrained(root / "tokenizer", **local), t5.eval(),
            AutoTokenizer.from_pretrained(root / "tokenizer_2", **local), **kwargs)
        return backbone.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: torch.device | str) -> FluxBackbone:
        """Move the four networks to ``device`` (in place); returns ``self``."""
        for module in (self.transformer, self.vae, self.text_encoder, self.text_encoder_2):
            module.to(device)
        return self

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode ``P`` prompts (one call per encoder, no gradients) as ``FluxPipeline``:
        ``"pooled"`` ``[P, D_clip]`` (CLIP pooled output, 77 tokens) and
        ``"hidden"`` ``[P, max_sequence_length, D_t5]`` (T5 last hidden state). Float32."""
        prompts = list(prompts)
        # A tokenizer folder without model_max_length reports a huge sentinel; CLIP's position
        # table bounds it (77 for FLUX.1, where the two agree).
        clip_len = min(self.tokenizer.model_max_length,
                       self.text_encoder.config.max_position_embeddings)
        clip_ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                                  max_length=clip_len, return_tensors="pt").input_ids
        t5_ids = self.tokenizer_2(prompts, padding="max_length", truncation=True,
                                  max_length=self.max_sequence_length,
                                  return_tensors="pt").input_ids
        with torch.no_grad():
            pooled = self.text_encoder(clip_ids.to(self.device)).pooler_output
            hidden = self.text_encoder_2(t5_ids.to(self.device))[0]
        return Conditioning({"hidden": hidden.float(), "pooled": pooled.float()})

    def predict(self, x_t: Tensor, t: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Velocity ``v`` ``[N, *latent_shape]`` for unpacked ``x_t`` ``[N, *latent_shape]`` at
        ``t = sigma`` ``[N]``; ``cond`` has N rows. One transformer forward on packed tokens with
        the distilled guidance embedding; ``guidance_scale`` (true CFG) is ignored (see the
        module docstring)."""
        n, _, height, width = x_t.shape
        if t.ndim != 1 or t.shape[0] != n or len(cond) != n:
            raise SlasError(f"predict: need t [N] and N conditioning rows for x_t with N={n}; "
                            f"got t {list(t.shape)} and {len(cond)} rows (use cond.select)")
        device, dtype = x_t.device, x_t.dtype
        hidden = cond.tensors["hidden"].to(device)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((n,), self.guidance, device=device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack_latents(x_t),
            timestep=t.to(device, dtype),
            guidance=guidance,
            pooled_projections=cond.tensors["pooled"].to(device),
            encoder_hidden_states=hidden,
            txt_ids=torch.zeros(hidden.shape[1], 3, device=device, dtype=dtype),
            img_ids=latent_image_ids(height // 2, width // 2, device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, height, width)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[N, *latent_shape]`` -> images ``[N, 3, H, W]`` float32 in [0, 1]:
        ``vae.decode(latents / scaling_factor + shift_factor)``, then ``x / 2 + 0.5`` clamped."""
        cfg = self.vae.config
        shift = cfg.shift_factor or 0.0
        dtype = next(self.vae.parameters()).dtype
        out = [self.vae.decode((chunk / cfg.scaling_factor + shift).to(self.device, dtype)).sample
               for chunk in latents.split(self.decode_batch_size)]
        return to_unit_range(torch.cat(out))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The transformer's parameters that require gradients, in module order (all of them,
        or only the LoRA weights after ``add_lora``)."""
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def shard_modules(self) -> list[nn.Module]:
        """The double-stream ``transformer_blocks`` and the ``single_transformer_blocks`` (19 +
        38 in FLUX.1), then the transformer (FSDP units, as DanceGRPO's auto-wrap policy)."""
        t = self.transformer
        return [*t.transformer_blocks, *t.single_transformer_blocks, t]

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``<path>/pytorch_lora_weights.safetensors`` (LoRA; loadable with a stock
        ``FluxPipeline.load_lora_weights``) or the diffusers folder ``<path>/transformer``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lora = lora_adapter_state(self.transformer)
        if lora is None:
            self.transformer.save_pretrained(path / "transformer", safe_serialization=True)
            return path
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(
            path, transformer_lora_layers=lora[0], transformer_lora_adapter_metadata=lora[1],
            weight_name=LORA_WEIGHTS)
        return path
