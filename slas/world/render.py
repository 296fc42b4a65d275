"""The world's renderer: coloured shapes on a light, lightly textured background.

Images are ``[N, 3, 32, 32]`` float tensors in ``[0, 1]``. Every object is drawn with 4x4
supersampling and average pooling (anti-aliased edges), objects never overlap, and the background
is a light grey with low-amplitude smooth noise that differs per image and is deterministic from
the seed. Rendering is vectorised over all objects of a batch: each object is rasterised in a
fixed 16x16-pixel window around its centre and the windows are scattered into a padded canvas.

Geometry (pixel coordinates, x to the right, y downwards; ``size`` is the side of the object's
bounding box, ``h = size / 2``, ``(u, v)`` the offset from the centre):

- circle:   ``u^2 + v^2 <= h^2``
- square:   ``max(|u|, |v|) <= h``
- triangle: apex up, ``v <= h`` and ``|u| <= (v + h) / 2`` (base ``size`` wide at the bottom)
- cross:    a plus sign with arms ``size / 3`` thick:
  ``(|u| <= h and |v| <= h / 3) or (|u| <= h / 3 and |v| <= h)``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from slas.errors import SlasError

IMAGE_SIZE = 32
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Fixed palette (sRGB in [0, 1]); hues ~60 degrees apart where possible, all saturated and darker
# or more chromatic than the light grey background, so colour and foreground are easy to separate.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.55, 0.06),
    "yellow": (0.92, 0.84, 0.08),
    "green": (0.12, 0.62, 0.20),
    "blue": (0.13, 0.30, 0.88),
    "purple": (0.55, 0.16, 0.70),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
MAX_SIZE = 14.0  # an object must fit the 16-pixel rasterisation window with a pixel to spare
WINDOW = 16  # side of the rasterisation window, pixels


@dataclass(frozen=True)
class WorldObject:
    """One shape in a scene.

    Attributes:
        shape: one of ``SHAPES``.
        color: one of ``COLORS``.
        cx: centre x in pixels (0 = left edge of the image, 32 = right edge).
        cy: centre y in pixels (0 = top edge, y grows downwards).
        size: side of the object's bounding box in pixels, in ``(0, MAX_SIZE]``.
    """

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise SlasError(
                f"WorldObject.shape: unknown shape {self.shape!r}; use one of {', '.join(SHAPES)}"
            )
        if self.color not in PALETTE:
            raise SlasError(
                f"WorldObject.color: unknown colour {self.color!r}; use one of {', '.join(COLORS)}"
            )
        if not 0.0 < self.size <= MAX_SIZE:
            raise SlasError(f"WorldObject.size: {self.size} is outside (0, {MAX_SIZE}]; pick a "
                            f"size in that range")
        for name, value in (("cx", self.cx), ("cy", self.cy)):
            if not 0.0 <= value <= IMAGE_SIZE:
                raise SlasError(f"WorldObject.{name}: {value} is outside [0, {IMAGE_SIZE}]; put "
                                f"the centre inside the image")

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The bounding box ``(x1, y1, x2, y2)`` in pixels."""
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass(frozen=True)
class Scene:
    """An image's content: a tuple of non-overlapping ``WorldObject`` s (may be empty)."""

    objects: tuple[WorldObject, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))


def _inside(shape: str, u: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Inside test on offsets ``u`` [M, 1, S], ``v`` [M, S, 1], half-size ``h`` [M, 1, 1]."""
    au, av = u.abs(), v.abs()
    if shape == "circle":
        return u * u + v * v <= h * h
    if shape == "square":
        return (au <= h) & (av <= h)
    if shape == "triangle":
        return (v <= h) & (au <= (v + h) / 2)
    t = h / 3  # cross: half the arm thickness
    return ((au <= h) & (av <= t)) | ((au <= t) & (av <= h))


def _upsample_matrix(low: int, high: int) -> torch.Tensor:
    """Bilinear interpolation weights [high, low] (half-pixel centres, edge-clamped)."""
    pos = ((torch.arange(high, dtype=torch.float32) + 0.5) * low / high - 0.5).clamp(0, low - 1)
    left = pos.floor().long().clamp(max=low - 2)
    frac = pos - left
    w = torch.zeros(high, low)
    w[torch.arange(high), left] = 1 - frac
    w[torch.arange(high), left + 1] = frac
    return w


def _background(n: int, seed: int, level: float, amplitude: float, tint: float) -> torch.Tensor:
    """Light grey with smooth noise: 4x4 Gaussian grids upsampled bilinearly -> [n, 3, 32, 32]."""
    gen = torch.Generator().manual_seed(int(seed))
    lum = torch.randn(n, 1, 4, 4, generator=gen) * amplitude
    chroma = torch.randn(n, 3, 4, 4, generator=gen) * tint
    w = _upsample_matrix(4, IMAGE_SIZE)
    bg = level + torch.einsum("yi,ncij,xj->ncyx", w, lum + chroma, w)
    return bg.clamp(level - 3 * amplitude, 1.0)


def shape_coverage(
    shape_ids: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    size: torch.Tensor,
    supersample: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Area coverage of M shapes, each in a 16x16-pixel window around its centre.

    Args:
        shape_ids: ``[M]`` long, indices into ``SHAPES``.
        cx: ``[M]`` centre x in pixels.
        cy: ``[M]`` centre y in pixels.
        size: ``[M]`` bounding-box side in pixels (at most ``MAX_SIZE`` to fit the window).
        supersample: sub-pixels per pixel side.

    Returns:
        ``(coverage [M, 16, 16] in [0, 1], x0 [M], y0 [M])``: window pixel ``(i, j)`` of shape m
        is image pixel ``(y0[m] + i, x0[m] + j)``.
    """
    m, s = len(shape_ids), WINDOW * supersample
    cx, cy = cx.to(torch.float32), cy.to(torch.float32)
    x0 = cx.floor().long() - WINDOW // 2
    y0 = cy.floor().long() - WINDOW // 2
    sub = (torch.arange(s, dtype=torch.float32) + 0.5) / supersample
    u = (x0[:, None] + sub[None, :] - cx[:, None]).view(m, 1, s)
    v = (y0[:, None] + sub[None, :] - cy[:, None]).view(m, s, 1)
    h = (size.to(torch.float32) / 2).view(m, 1, 1)
    inside = torch.zeros(m, s, s, dtype=torch.bool)
    for k, shape in enumerate(SHAPES):
        idx = (shape_ids == k).nonzero().flatten()
        if len(idx):
            inside[idx] = _inside(shape, u[idx], v[idx], h[idx])
    cov = inside.view(m, WINDOW, supersample, WINDOW, supersample).float().mean(dim=(2, 4))
    return cov, x0, y0


def render(
    scenes: Sequence[Scene],
    seed: int,
    *,
    supersample: int = 4,
    background_level: float = 0.9,
    background_noise: float = 0.02,
    background_tint: float = 0.006,
    chunk: int = 1024,
) -> torch.Tensor:
    """Render scenes to images, deterministically in ``(scenes, seed)``.

    Each pixel is ``bg * (1 - a) + sum_k cov_k * colour_k`` with ``a = sum_k cov_k``, where
    ``cov_k`` is object k's area coverage of the pixel (fraction of its ``supersample^2``
    sub-pixel centres inside the shape). Objects are assumed not to overlap (``captions.scene_for``
    guarantees a gap); overlapping coverage is clipped to 1.

    Args:
        scenes: N scenes.
        seed: seed of the background noise (image i's background depends on ``seed`` and N).
        supersample: sub-pixels per pixel side used for anti-aliasing.
        background_level: mean grey level of the background.
        background_noise: std of the smooth luminance noise (before bilinear upsampling).
        background_tint: std of the smooth per-channel noise (keeps the background low-saturation).
        chunk: scenes composited at a time (bounds memory; does not change the result).

    Returns:
        Images ``[N, 3, 32, 32]`` float32 in ``[0, 1]``.
    """
    bg = _background(len(scenes), seed, background_level, background_noise, background_tint)
    return torch.cat([
        _paint(scenes[i:i + chunk], bg[i:i + chunk], supersample)
        for i in range(0, len(scenes), chunk)
    ]) if scenes else bg


def _paint(scenes: Sequence[Scene], bg: torch.Tensor, supersample: int) -> torch.Tensor:
    """Composite the scenes' objects over backgrounds ``bg`` [n, 3, 32, 32]."""
    n = len(scenes)
    objs = [o for sc in scenes for o in sc.objects]
    if not objs:
        return bg
    owner = torch.tensor([i for i, sc in enumerate(scenes) for _ in sc.objects], dtype=torch.long)
    cov, x0, y0 = shape_coverage(
        torch.tensor([SHAPES.index(o.shape) for o in objs]),
        torch.tensor([o.cx for o in objs]), torch.tensor([o.cy for o in objs]),
        torch.tensor([o.size for o in objs]), supersample)
    rgb = torch.tensor([PALETTE[o.color] for o in objs], dtype=torch.float32)
    pad = WINDOW // 2  # centres lie in [0, 32], so windows reach at most this far outside
    p = IMAGE_SIZE + 2 * pad
    ar = torch.arange(WINDOW)
    rows = (y0 + pad)[:, None, None] + ar[None, :, None]
    cols = (x0 + pad)[:, None, None] + ar[None, None, :]
    flat = (owner[:, None, None] * p * p + rows * p + cols).reshape(-1)
    alpha = torch.zeros(n * p * p).index_add_(0, flat, cov.reshape(-1))
    paint = torch.zeros(n * p * p, 3).index_add_(
        0, flat, (cov[..., None] * rgb[:, None, None, :]).reshape(-1, 3))
    crop = slice(pad, pad + IMAGE_SIZE)
    alpha = alpha.view(n, 1, p, p)[:, :, crop, crop].clamp(max=1.0)
    paint = paint.view(n, p, p, 3)[:, crop, crop].permute(0, 3, 1, 2)
    return (bg * (1 - alpha) + paint).clamp(0.0, 1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Convert float images ``[N, 3, H, W]`` in [0, 1] to ``uint8`` ``[N, H, W, 3]`` (PNG layout).

    Values are clipped to [0, 1], scaled by 255 and rounded to nearest.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise SlasError(f"to_uint8: expected images of shape [N, 3, H, W], got "
                        f"{list(images.shape)}; add a batch dimension or move channels first")
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
