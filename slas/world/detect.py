"""The world's verifier: a programmatic detector and colour classifier for the GenEval rules.

Pipeline per image (all steps batched over images where it pays):

1. **Background**: per-channel median of the light, low-saturation pixels (max - min < 0.1,
   max > 0.6); the whole image's median if there are none.
2. **Pixel fit**: every pixel ``p`` is explained as a blend ``g + alpha (c_k - g)`` of the
   background ``g`` and one palette colour ``c_k`` (what anti-aliasing produces): for each k,
   ``alpha_k`` is the least-squares blend weight clipped to [0, 1], and the pixel takes the k with
   the smallest residual. Distances are measured in a linear opponent-colour space (R-G, Y-B,
   lightness at half weight), so blends stay straight segments while hue counts more than
   lightness.
3. **Objects**: pixels with ``alpha > 0.5`` are foreground; touching foreground pixels are
   linked into one object regardless of colour (8-neighbourhood connected components); objects
   with fewer than ``min_area`` pixels are specks and ignored.
4. **Shape**: from the object's soft coverage (``alpha`` over the object and a one-pixel ring)
   take its area A and centroid; for each shape, place the ideal shape of area A at that
   centroid (the triangle's centroid sits ``size / 6`` below its box centre) and measure the
   soft Dice overlap ``D_k = 2 sum min(alpha, tau_k) / (sum alpha + sum tau_k)``. The shape is
   ``argmax D_k``; its score is ``softmax(D / temperature)[best] * fit`` with
   ``fit = clip((D_best - fit_low) / (fit_high - fit_low), 0, 1)``: a confident, well-fitting
   shape scores near 1, an ambiguous one ~0.5 and formless blobs near 0, so GenEval's 0.3 / 0.9
   thresholds keep their meaning.
5. **Box**: the pixel bounding box of the object's foreground, ``(x1, y1, x2 + 1, y2 + 1)``.

The colour of a detection is the palette colour with the largest alpha-weighted vote over its
mask pixels (step 2 labels), which is exact for the renderer's blends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from slas.errors import SlasError
from slas.eval.geneval import (
    Detection,
    Detections,
    GenEvalThresholds,
    ImageResult,
    evaluate_image,
)
from slas.world.render import COLORS, MAX_SIZE, PALETTE, SHAPES, WINDOW, shape_coverage, to_uint8

# Area of each shape as a fraction of its bounding box (same order as SHAPES).
_AREA_FRACTION = torch.tensor([torch.pi / 4, 1.0, 0.5, 5 / 9])
# Opponent-colour rows: R-G, yellow-blue, lightness (half weight).
_OPPONENT = torch.tensor([
    [2**-0.5, -(2**-0.5), 0.0],
    [6**-0.5, 6**-0.5, -2 * 6**-0.5],
    [0.5 * 3**-0.5, 0.5 * 3**-0.5, 0.5 * 3**-0.5],
])
_PALETTE = torch.tensor([PALETTE[c] for c in COLORS])  # [K, 3]


@dataclass(frozen=True)
class DetectorConfig:
    """Knobs of ``WorldDetector`` (defaults measured on clean, blurred and noisy renders).

    Attributes:
        foreground_alpha: blend weight above which a pixel is foreground.
        min_area: objects with fewer foreground pixels are ignored as specks.
        temperature: softmax temperature over the shapes' Dice overlaps.
        fit_low: Dice at or below which the score is 0 (no shape fits).
        fit_high: Dice at or above which the fit factor is 1.
        blur_sigmas: Gaussian blurs (pixels) under which the ideal shapes are also compared.
    """

    foreground_alpha: float = 0.5
    min_area: int = 6
    temperature: float = 0.01
    fit_low: float = 0.75
    fit_high: float = 0.9
    blur_sigmas: tuple[float, ...] = (0.0, 0.5, 1.0)


def estimate_background(images: torch.Tensor) -> torch.Tensor:
    """Background colour per image: median of light, low-saturation pixels.

    Args:
        images: ``[N, H, W, 3]`` float in [0, 1].

    Returns:
        ``[N, 3]`` background RGB.
    """
    n = images.shape[0]
    flat = images.reshape(n, -1, 3)
    sat = flat.amax(-1) - flat.amin(-1)
    light = (sat < 0.1) & (flat.amax(-1) > 0.6)
    masked = torch.where(light[..., None], flat, torch.full_like(flat, float("nan")))
    bg = masked.nanmedian(dim=1).values
    fallback = flat.median(dim=1).values
    return torch.where(torch.isnan(bg), fallback, bg)


def fit_pixels(
    images: torch.Tensor, background: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Explain each pixel as a blend of the background and one palette colour.

    Args:
        images: ``[N, H, W, 3]`` float in [0, 1].
        background: ``[N, 3]``.

    Returns:
        ``(alpha [N, H, W], label [N, H, W] long index into COLORS, residual [N, H, W])``:
        the blend weight in [0, 1], the chosen colour and the opponent-space distance from the
        pixel to the blend segment.
    """
    d = (images - background[:, None, None, :]) @ _OPPONENT.T  # [N, H, W, 3]
    v = (_PALETTE[None] - background[:, None, :]) @ _OPPONENT.T  # [N, K, 3]
    t = torch.einsum("nhwc,nkc->nhwk", d, v) / (v * v).sum(-1)[:, None, None, :]
    t = t.clamp(0.0, 1.0)
    resid = (d[..., None, :] - t[..., None] * v[:, None, None]).norm(dim=-1)  # [N, H, W, K]
    best = resid.argmin(dim=-1)
    alpha = t.gather(-1, best[..., None]).squeeze(-1)
    return alpha, best, resid.gather(-1, best[..., None]).squeeze(-1)


def label_components(foreground: torch.Tensor) -> torch.Tensor:
    """8-connected components by max-label propagation.

    Args:
        foreground: ``[N, H, W]`` bool.

    Returns:
        ``[N, H, W]`` long labels: 0 for background, otherwise a positive id per component
        (ids are not consecutive).
    """
    n, h, w = foreground.shape
    fg = foreground[:, None].float()
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)
    labels = fg * ids
    for _ in range(h * w):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * fg
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels[:, 0].long()


class _Objects(NamedTuple):
    """Objects found in a batch; C objects in total."""

    image: torch.Tensor  # [C] long, index of the image each object belongs to
    mask: torch.Tensor  # [C, H, W] bool, foreground pixels of the object
    soft: torch.Tensor  # [C, H, W] alpha over the object and its one-pixel ring
    box: torch.Tensor  # [C, 4] pixel bounding box (x1, y1, x2, y2)


def _find_objects(alpha: torch.Tensor, labels: torch.Tensor, min_area: int) -> _Objects:
    """Split labelled foreground ``[N, H, W]`` into objects, dropping specks below ``min_area``."""
    n, h, w = labels.shape
    key = torch.arange(n)[:, None, None] * (h * w + 1) + labels
    uniq, counts = torch.unique(key[labels > 0], return_counts=True)
    uniq = uniq[counts >= min_area]
    image, lab = uniq // (h * w + 1), uniq % (h * w + 1)
    mask = labels[image] == lab[:, None, None]
    fg_img = labels[image] > 0
    ring = F.max_pool2d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    region = ring & ~(fg_img & ~mask)  # the object plus its edge, never another object's pixels
    soft = alpha[image] * region
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # [C, H], [C, W]
    y1, x1 = rows.float().argmax(1), cols.float().argmax(1)
    y2 = h - rows.flip(1).float().argmax(1)
    x2 = w - cols.flip(1).float().argmax(1)
    box = torch.stack([x1, y1, x2, y2], dim=1).float()
    return _Objects(image, mask, soft, box)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of windows ``[M, S, S]`` (zero padding; sigma 0 = identity).

    Written as ``K x K^T`` with a banded [S, S] kernel matrix: cheaper than a convolution for
    these small windows.
    """
    if sigma <= 0:
        return x
    r = max(1, int(np.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    norm = torch.exp(-(t**2) / (2 * sigma**2)).sum()
    i = torch.arange(x.shape[-1], dtype=torch.float32)
    off = i[:, None] - i[None, :]
    k = torch.where(off.abs() <= r, torch.exp(-(off**2) / (2 * sigma**2)), 0.0) / norm
    return k @ x @ k.T


def shape_scores(
    soft: torch.Tensor,
    temperature: float,
    fit_low: float,
    fit_high: float,
    blur_sigmas: Sequence[float] = (0.0,),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classify objects by matching ideal shapes of equal area at the centroid (module step 4).

    Args:
        soft: ``[C, H, W]`` soft coverage of each object.
        temperature: softmax temperature over the Dice overlaps.
        fit_low: Dice giving a fit factor of 0.
        fit_high: Dice giving a fit factor of 1.
        blur_sigmas: the ideal shapes are also compared after Gaussian blurs of these widths
            (pixels); each shape keeps its best Dice, so smooth (e.g. generated) edges still
            match.

    Returns:
        ``(shape [C] long index into SHAPES, score [C] in [0, 1], dice [C, len(SHAPES)])``.
    """
    c, h, w = soft.shape
    k = len(SHAPES)
    area = soft.sum(dim=(1, 2)).clamp(min=1e-6)
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    mx = (soft.sum(1) * xs).sum(1) / area
    my = (soft.sum(2) * ys).sum(1) / area
    size = (area[:, None] / _AREA_FRACTION[None]).sqrt().clamp(1.0, MAX_SIZE)  # [C, K]
    is_tri = torch.tensor([s == "triangle" for s in SHAPES])
    cy = my[:, None] - torch.where(is_tri[None], size / 6, torch.zeros_like(size))
    cx = mx[:, None].expand(c, k)
    tau, x0, y0 = shape_coverage(torch.arange(k).repeat(c), cx.reshape(-1), cy.reshape(-1),
                                 size.reshape(-1))
    padded = F.pad(soft, (WINDOW, WINDOW, WINDOW, WINDOW))
    ar = torch.arange(WINDOW)
    obj = torch.arange(c).repeat_interleave(k)
    rows = (y0 + WINDOW).clamp(0, h + WINDOW)[:, None, None] + ar[None, :, None]
    cols = (x0 + WINDOW).clamp(0, w + WINDOW)[:, None, None] + ar[None, None, :]
    seen = padded[obj[:, None, None], rows, cols]  # [C*K, WINDOW, WINDOW]
    dice = torch.stack([
        2 * torch.minimum(seen, t).sum(dim=(1, 2)) / (area.repeat_interleave(k) + t.sum(dim=(1, 2)))
        for t in (_blur(tau, sigma) for sigma in blur_sigmas)
    ]).amax(dim=0).view(c, k)
    prob = torch.softmax(dice / temperature, dim=1)
    best = dice.argmax(dim=1)
    fit = ((dice.gather(1, best[:, None])[:, 0] - fit_low) / (fit_high - fit_low)).clamp(0, 1)
    return best, prob.gather(1, best[:, None])[:, 0] * fit, dice


class _Batch(NamedTuple):
    detections: list[dict[str, list[Detection]]]
    alpha: torch.Tensor  # [N, H, W]
    label: torch.Tensor  # [N, H, W]


def _detect(images: torch.Tensor, cfg: DetectorConfig) -> _Batch:
    """Detect objects in float images ``[N, H, W, 3]``."""
    alpha, label, _ = fit_pixels(images, estimate_background(images))
    comps = label_components(alpha > cfg.foreground_alpha)
    objs = _find_objects(alpha, comps, cfg.min_area)
    dets: list[dict[str, list[Detection]]] = [{} for _ in range(images.shape[0])]
    if len(objs.image):
        shape, score, _ = shape_scores(objs.soft, cfg.temperature, cfg.fit_low, cfg.fit_high,
                                       cfg.blur_sigmas)
        masks = objs.mask.numpy()
        for i in range(len(objs.image)):
            det = Detection(tuple(float(v) for v in objs.box[i]), float(score[i]), masks[i])
            dets[int(objs.image[i])].setdefault(SHAPES[int(shape[i])], []).append(det)
    return _Batch(dets, alpha, label)


def _as_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> float ``[N, H, W, 3]`` in [0, 1], with a fix-it error."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise SlasError(f"world detector: expected uint8 images [H, W, 3] (or [N, H, W, 3]), got "
                        f"{images.dtype} {list(images.shape)}; convert with slas.world.to_uint8")
    return torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0


class WorldDetector:
    """GenEval ``Detector`` for world images: ``image [H, W, 3] uint8 -> {shape: [Detection]}``.

    See the module docstring for the pipeline; ``config`` holds its knobs.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()

    def __call__(self, image: np.ndarray) -> Detections:
        return self.detect_batch(image[None])[0]

    def detect_batch(self, images: np.ndarray) -> list[dict[str, list[Detection]]]:
        """Detections for each of ``images`` (``[N, H, W, 3]`` uint8)."""
        return _detect(_as_float(images), self.config).detections


def _vote(alpha: torch.Tensor, label: torch.Tensor, mask: np.ndarray) -> str:
    """Alpha-weighted majority palette colour over ``mask`` (``alpha``, ``label``: [H, W])."""
    m = torch.from_numpy(np.asarray(mask, dtype=bool))
    votes = torch.bincount(label[m], weights=alpha[m], minlength=len(COLORS))
    return COLORS[int(votes.argmax())]


def _box_mask(box: Sequence[float], h: int, w: int) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    m = np.zeros((h, w), dtype=bool)
    m[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    return m


class WorldColorClassifier:
    """GenEval ``ColorClassifier`` for world images: the alpha-weighted majority palette colour
    of each detection's mask pixels (its box when the mask is None)."""

    def __call__(self, image: np.ndarray, detections: Sequence[Detection],
                 class_name: str) -> list[str]:
        x = _as_float(image[None])
        alpha, label, _ = fit_pixels(x, estimate_background(x))
        h, w = image.shape[:2]
        return [_vote(alpha[0], label[0], d.mask if d.mask is not None else _box_mask(d.box, h, w))
                for d in detections]


class _KnownColors:
    """Colour classifier over a precomputed pixel fit of one image (used by ``verify``)."""

    def __init__(self, alpha: torch.Tensor, label: torch.Tensor) -> None:
        self.alpha, self.label = alpha, label

    def __call__(self, image: np.ndarray | None, detections: Sequence[Detection],
                 class_name: str) -> list[str]:
        h, w = self.alpha.shape
        return [_vote(self.alpha, self.label,
                      d.mask if d.mask is not None else _box_mask(d.box, h, w))
                for d in detections]


def verify(
    images: torch.Tensor,
    metadata_list: Sequence[Mapping],
    *,
    config: DetectorConfig | None = None,
    thresholds: GenEvalThresholds | None = None,
) -> list[ImageResult]:
    """Score world images against their metadata with the GenEval rules.

    Args:
        images: ``[N, 3, H, W]`` float in [0, 1] (quantised to uint8 first, as if saved as PNG).
        metadata_list: N GenEval metadata records.
        config: detector knobs (default ``DetectorConfig()``).
        thresholds: GenEval thresholds (default ``GenEvalThresholds()``, the official values).

    Returns:
        N ``ImageResult`` s.
    """
    if len(metadata_list) != images.shape[0]:
        raise SlasError(f"verify: {images.shape[0]} images but {len(metadata_list)} metadata "
                        f"records; pass one record per image")
    batch = _detect(_as_float(to_uint8(images)), config or DetectorConfig())
    return [evaluate_image(None, meta, dets, _KnownColors(batch.alpha[i], batch.label[i]),
                           thresholds or GenEvalThresholds())
            for i, (meta, dets) in enumerate(zip(metadata_list, batch.detections, strict=True))]
