"""HPS-v2.1 reward: an open_clip ViT-H-14 fine-tuned on HPD v2 (Wu et al., arXiv:2306.09341).

Reference behaviour (tgxs002/HPSv2, ``hpsv2/img_score.py`` and its bundled open_clip fork's
``transform.py``, evaluation transform with ``light_augmentation=True``):

1. the model is the open_clip ``ViT-H-14`` architecture; ``HPS_v2.1_compressed.pt`` holds
   ``{"state_dict": ...}`` loaded strictly over it (here built with ``pretrained=None``: the
   strict load replaces every weight, so the laion2B base download the reference makes is not
   needed);
2. preprocessing: RGB -> ToTensor -> **resize the longer side to 224** (bicubic, on the tensor)
   -> **zero-pad symmetrically** to 224 x 224 (black, before normalisation; no centre crop) ->
   OpenAI CLIP mean/std;
3. score = dot product of the L2-normalised image and text features: the **raw cosine**, no
   logit scale (typical values 0.20-0.35).

This module never downloads anything: the checkpoint path is explicit (``reward.hps_checkpoint``)
and the ``hpsv2`` package is not used (it always downloads and its wheel lacks the BPE vocab).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from slas.errors import SlasError
from slas.rewards.clip_score import (
    OPENAI_MEAN,
    OPENAI_STD,
    OpenClipScorer,
    autocast_dtype,
    import_open_clip,
    load_open_clip_state_dict,
    load_strict,
    normalize_images,
    quiet_random_init,
    resize_images,
    square_size,
)

if TYPE_CHECKING:
    from slas.config import RewardConfig

HPS_ARCH = "ViT-H-14"
HPS_SIZE = 224
FIELD = "reward.hps_checkpoint"


def hps_preprocess(images: Tensor, size: int = HPS_SIZE, *,
                   mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD,
                   antialias: bool = True) -> Tensor:
    """HPS evaluation transform on a batch: ``[N, 3, H, W]`` in [0, 1] -> ``[N, 3, size, size]``.

    With ``scale = size / max(H, W)``: when ``scale != 1`` the batch is resized (bicubic) to
    ``(round(H * scale), round(W * scale))``; it is then zero-padded to ``size x size`` with
    ``(size - w) // 2`` columns on the left and the rest on the right (rows likewise), and
    normalised with ``mean``/``std``. The reference skips both resize and pad when the long side
    is already ``size``, which only works for square inputs; here a non-square input with long
    side ``size`` is padded (identical output wherever the reference runs).

    Args:
        images: ``[N, 3, H, W]`` in [0, 1].
        size: model input size (224 for HPS-v2.1).
        mean: per-channel mean (OpenAI CLIP).
        std: per-channel std (OpenAI CLIP).
        antialias: antialiased bicubic downsampling (the torchvision >= 0.17 tensor default;
            older torchvision used False, PIL-based pipelines always antialias).

    Returns:
        ``[N, 3, size, size]`` float32.
    """
    x = images.float()
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        h, w = round(h * scale), round(w * scale)
        x = resize_images(x, (h, w), "bicubic", antialias)
    pad_h, pad_w = size - h, size - w
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return normalize_images(x, mean, std)


def load_hps(checkpoint: str | Path, device: torch.device | str = "cpu", *,
             arch: str = HPS_ARCH, dtype: torch.dtype | None = None, batch_size: int = 32,
             antialias: bool = True, field: str = FIELD) -> OpenClipScorer:
    """Build the HPS-v2.1 RewardFn from a local ``HPS_v2.1_compressed.pt``.

    Args:
        checkpoint: ``{"state_dict": ...}`` torch file (``module.``-prefixed keys accepted).
        device: where the model runs.
        arch: open_clip architecture name (``ViT-H-14``; tests register a tiny one).
        dtype: autocast dtype for the forwards (None = fp32; the reference uses fp16 autocast).
        batch_size: images per forward.
        antialias: see :func:`hps_preprocess`.
        field: config field named in error messages.

    Returns:
        An :class:`~slas.rewards.clip_score.OpenClipScorer` (raw cosine, text features cached).
    """
    open_clip = import_open_clip("hps_v21")
    path = Path(checkpoint)
    if not path.is_file():
        raise SlasError(f"{field}: HPS checkpoint {path} not found; set {field} to the local "
                        "HPS_v2.1_compressed.pt (Hugging Face xswu/HPSv2)")
    state = load_open_clip_state_dict(path, field)
    try:
        with quiet_random_init():
            model = open_clip.create_model(arch, pretrained=None)
    except RuntimeError as err:
        raise SlasError(f"reward.hps_arch: unknown open_clip architecture {arch!r} ({err}); "
                        "HPS-v2.1 is ViT-H-14") from None
    load_strict(model, state, path, field, arch)
    size = square_size(model, field)
    return OpenClipScorer(
        model, open_clip.get_tokenizer(arch),
        lambda x: hps_preprocess(x, size, antialias=antialias),
        torch.device(device), name="hps_v21", dtype=dtype, batch_size=batch_size,
    )


def hps_v21(config: RewardConfig, device: torch.device) -> OpenClipScorer:
    """HPS-v2.1 (open_clip ViT-H-14, raw cosine) from ``reward.hps_checkpoint``."""
    if not config.hps_checkpoint:
        raise SlasError(f"{FIELD}: not set; reward hps_v21 needs the local "
                        "HPS_v2.1_compressed.pt (Hugging Face xswu/HPSv2)")
    return load_hps(
        config.hps_checkpoint, device,
        arch=config.hps_arch,
        dtype=autocast_dtype(config.dtype),
        batch_size=config.batch_size,
    )
