"""Image grids and PNG output (PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def make_grid(images: Tensor, nrow: int, *, scale: int = 2, pad: int = 2) -> Image.Image:
    """Tile ``images`` ``[N, 3, H, W]`` in [0, 1] row-major, ``nrow`` per row, upscaled by
    ``scale`` (nearest) with ``pad`` white pixels between tiles."""
    n, _, h, w = images.shape
    rows = max(1, -(-n // nrow))
    th, tw = h * scale + pad, w * scale + pad
    canvas = np.full((rows * th + pad, nrow * tw + pad, 3), 255, dtype=np.uint8)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1)
    for i, tile in enumerate(pixels.cpu().numpy()):
        r, c = divmod(i, nrow)
        canvas[pad + r * th : pad + r * th + h * scale, pad + c * tw : pad + c * tw + w * scale] = (
            tile
        )
    return Image.fromarray(canvas)


def save_grid(images: Tensor, path: Path, nrow: int, **kwargs) -> Path:
    """Write :func:`make_grid` to ``path`` (PNG), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, nrow, **kwargs).save(path)
    return path
