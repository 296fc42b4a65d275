"""PickScore reward: a CLIP-H/14 fine-tuned on Pick-a-Pic (yuvalkirstain/PickScore, MIT).

Reference behaviour (the PickScore README's scoring snippet): ``CLIPProcessor`` turns PIL images
and the prompt (``padding=True, truncation=True, max_length=77``) into model inputs; image and
text embeddings from ``CLIPModel.get_image_features`` / ``get_text_features`` are
L2-normalised and the official score is ``logit_scale.exp() * cosine`` (about 18-24). RL code
uses rescalings: DanceGRPO's ``--use_pickscore`` takes the **raw cosine** (about 0.2), which is
this reward's default; ``scaled=True`` (``reward.pickscore_scaled``) gives the official score.

Images reach the processor as PIL images built from ``round(255 * x)``, as in the reference,
so resizing, cropping and normalisation are exactly the processor's own. transformers 5 returns
``BaseModelOutputWithPooling`` from ``get_*_features`` (the projected embedding is its
``pooler_output``); transformers 4 returns the tensor. Both are handled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from slas.errors import SlasError
from slas.rewards.clip_score import FeatureCache, autocast, autocast_dtype, check_batch

if TYPE_CHECKING:
    from slas.config import RewardConfig

FIELD = "reward.pickscore_path"
MAX_TOKENS = 77


def _embedding(out: Any) -> Tensor:
    """The projected embedding from either transformers 4 (tensor) or 5 (model output)."""
    return out if isinstance(out, Tensor) else out.pooler_output


def to_pil(images: Tensor) -> list[Image.Image]:
    """``[N, 3, H, W]`` in [0, 1] -> RGB PIL images (``round(255 * clamp(x, 0, 1))``)."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(p.permute(1, 2, 0).cpu().numpy()))
            for p in pixels]


class PickScoreReward:
    """A RewardFn: PickScore of each image with its prompt, ``[N]`` float32.

    Args:
        model: ``transformers.CLIPModel`` (PickScore_v1).
        processor: ``transformers.CLIPProcessor`` (the CLIP-ViT-H-14 laion2B processor).
        device: where the model runs.
        scaled: False = raw cosine (DanceGRPO); True = ``logit_scale.exp() * cosine`` (official).
        dtype: autocast dtype for the forwards (None = fp32).
        batch_size: images per forward.
        text_cache_size: prompts whose embeddings are kept.
    """

    def __init__(self, model: Any, processor: Any, device: torch.device, *, scaled: bool = False,
                 dtype: torch.dtype | None = None, batch_size: int = 32,
                 text_cache_size: int = 4096) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.processor, self.device, self.scaled = processor, torch.device(device), scaled
        self.dtype, self.batch_size = dtype, batch_size
        self.text_cache = FeatureCache(text_cache_size)

    def _encode_text(self, prompts: list[str]) -> Tensor:
        inputs = self.processor(text=prompts, padding=True, truncation=True,
                                max_length=MAX_TOKENS, return_tensors="pt")
        with autocast(self.device, self.dtype):
            out = self.model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return F.normalize(_embedding(out).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings ``[P, D]`` float32 (cached per prompt string)."""
        return self.text_cache.get(prompts, self._encode_text)

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings ``[N, D]`` float32 of ``images [N, 3, H, W]`` in [0, 1]."""
        feats = []
        for chunk in images.split(self.batch_size):
            pixels = self.processor(images=to_pil(chunk), return_tensors="pt")["pixel_values"]
            with autocast(self.device, self.dtype):
                out = self.model.get_image_features(pixel_values=pixels.to(self.device))
            feats.append(_embedding(out).float())
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[Mapping[str, Any]] | None = None) -> Tensor:
        """Scores ``[N]`` float32 on the images' device (cosine, or scaled cosine)."""
        check_batch("pickscore", images, prompts, metadata)
        cos = (self.image_features(images) * self.text_features(list(prompts))).sum(-1)
        if self.scaled:
            cos = self.model.logit_scale.exp().float() * cos
        return cos.float().to(images.device)


def load_pickscore(path: str | Path, device: torch.device | str = "cpu", *,
                   processor_path: str | Path | None = None, scaled: bool = False,
                   dtype: torch.dtype | None = None, batch_size: int = 32,
                   field: str = FIELD) -> PickScoreReward:
    """Build the PickScore RewardFn from local folders (``local_files_only``: never downloads).

    Args:
        path: ``save_pretrained`` folder of the PickScore ``CLIPModel``.
        device: where the model runs.
        processor_path: folder of the ``CLIPProcessor``; default ``path``.
        scaled: see :class:`PickScoreReward`.
        dtype: autocast dtype (None = fp32).
        batch_size: images per forward.
        field: config field named in error messages.
    """
    from transformers import CLIPModel, CLIPProcessor

    model_dir = Path(path)
    proc_dir = Path(processor_path) if processor_path is not None else model_dir
    proc_field = field if processor_path is None else "reward.pickscore_processor_path"
    for where, name in ((model_dir, field), (proc_dir, proc_field)):
        if not where.is_dir():
            raise SlasError(f"{name}: folder {where} not found; set {name} to the local "
                            "save_pretrained folder (PickScore_v1 model / CLIP-H processor)")
    try:
        model = CLIPModel.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise SlasError(f"{field}: cannot load a CLIPModel from {model_dir} ({err}); it must "
                        "hold config.json and the weights of yuvalkirstain/PickScore_v1") from None
    try:
        processor = CLIPProcessor.from_pretrained(proc_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise SlasError(f"{proc_field}: cannot load a CLIPProcessor from {proc_dir} ({err}); "
                        "it must hold the tokenizer and preprocessor files of "
                        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K") from None
    return PickScoreReward(model, processor, torch.device(device), scaled=scaled, dtype=dtype,
                           batch_size=batch_size)


def pickscore(config: RewardConfig, device: torch.device) -> PickScoreReward:
    """PickScore (transformers CLIP-H/14, raw cosine by default) from ``reward.pickscore_path``."""
    if not config.pickscore_path:
        raise SlasError(f"{FIELD}: not set; reward pickscore needs the local PickScore_v1 "
                        "folder (with the CLIP-H processor files, or set "
                        "reward.pickscore_processor_path)")
    return load_pickscore(
        config.pickscore_path, device,
        processor_path=config.pickscore_processor_path,
        scaled=config.pickscore_scaled,
        dtype=autocast_dtype(config.dtype),
        batch_size=config.batch_size,
    )
