"""Tests for slas.world.detect: components, pixel fit, shapes, colours and the full verifier."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slas.errors import SlasError
from slas.world.captions import TAGS, eval_prompts, parse_prompt, scene_for
from slas.world.detect import (
    WorldColorClassifier,
    WorldDetector,
    estimate_background,
    fit_pixels,
    label_components,
    verify,
)
from slas.world.render import COLORS, PALETTE, SHAPES, Scene, WorldObject, render, to_uint8


def _one(*objs, seed=0):
    return to_uint8(render([Scene(tuple(objs))], seed=seed))[0]


def test_label_components_eight_neighbourhood():
    fg = torch.zeros(1, 6, 6, dtype=torch.bool)
    fg[0, 0, 0] = fg[0, 1, 1] = fg[0, 2, 2] = True  # a diagonal: one component under 8-connectivity
    fg[0, 4:6, 4:6] = True  # a separate 2x2 block
    lab = label_components(fg)[0]
    assert lab[0, 0] == lab[1, 1] == lab[2, 2] > 0
    assert lab[4, 4] == lab[5, 5] > 0 and lab[4, 4] != lab[0, 0]
    assert int((lab > 0).sum()) == 7 and len(torch.unique(lab[lab > 0])) == 2


def test_fit_pixels_recovers_blend_weight_and_colour():
    bg = torch.tensor([[0.9, 0.9, 0.9]])
    red = torch.tensor(PALETTE["red"])
    px = torch.stack([bg[0], bg[0] + 0.3 * (red - bg[0]), red]).view(1, 1, 3, 3)
    alpha, label, resid = fit_pixels(px, bg)
    assert alpha[0, 0].tolist() == pytest.approx([0.0, 0.3, 1.0], abs=1e-5)
    assert label[0, 0, 1:].tolist() == [COLORS.index("red")] * 2
    assert float(resid.abs().max()) < 1e-5


def test_background_estimate_ignores_objects():
    img = torch.full((1, 32, 32, 3), 0.88)
    img[0, 5:20, 5:20] = torch.tensor(PALETTE["blue"])  # 225 of 1024 pixels
    assert estimate_background(img)[0].tolist() == pytest.approx([0.88] * 3)


def test_pixel_aligned_square_detection():
    # size 8 centred at (16, 16) covers pixels 12..19 -> box (12, 12, 20, 20), 64 mask pixels.
    dets = WorldDetector()(_one(WorldObject("square", "green", 16.0, 16.0, 8.0)))
    assert list(dets) == ["square"] and len(dets["square"]) == 1
    d = dets["square"][0]
    assert d.box == (12.0, 12.0, 20.0, 20.0) and int(d.mask.sum()) == 64 and d.score > 0.99


@pytest.mark.parametrize("size", [8.0, 11.0])
def test_each_shape_is_recognised_confidently(size):
    objs = [WorldObject(shape, color, 13.3 + i, 17.6 - j, size)
            for i, shape in enumerate(SHAPES) for j, color in enumerate(COLORS)]
    images = to_uint8(render([Scene((o,)) for o in objs], seed=int(size)))
    for o, img, dets in zip(objs, images, WorldDetector().detect_batch(images), strict=True):
        assert list(dets) == [o.shape] and dets[o.shape][0].score > 0.9
        assert WorldColorClassifier()(img, dets[o.shape], o.shape) == [o.color]


def test_specks_ignored_and_touching_objects_linked():
    img = np.full((32, 32, 3), 230, dtype=np.uint8)
    img[3:5, 3:5] = (220, 30, 30)  # 4 pixels < min_area 6
    assert WorldDetector()(img) == {}
    # A circle and a square touching: one object whatever the colours, and a poor fit.
    merged = _one(WorldObject("circle", "red", 12.0, 16.0, 10.0),
                  WorldObject("square", "blue", 20.0, 16.0, 8.0))
    dets = WorldDetector()(merged)
    assert sum(len(v) for v in dets.values()) == 1
    assert next(iter(dets.values()))[0].score < 0.3


def test_color_classifier_uses_box_without_mask():
    img = _one(WorldObject("triangle", "orange", 10.0, 10.0, 10.0),
               WorldObject("circle", "purple", 24.0, 24.0, 9.0))
    dets = WorldDetector()(img)
    no_mask = [d._replace(mask=None) for d in dets["circle"]]
    assert WorldColorClassifier()(img, no_mask, "circle") == ["purple"]


def test_verify_every_eval_prompt_on_clean_renders():
    rows = eval_prompts()
    rng = random.Random(0)
    images = render([scene_for(m, rng) for m in rows], seed=0)
    results = verify(images, rows)
    assert all(r.correct for r in results), [r.reason for r in results if not r.correct][:3]


def test_verify_rejects_wrong_content():
    red_circle = render([Scene((WorldObject("circle", "red", 16.0, 16.0, 10.0),))], seed=0)
    res = verify(red_circle, [parse_prompt("a photo of a blue circle")])[0]
    assert not res.correct and "expected blue circle>=1" in res.reason
    three = Scene(tuple(WorldObject("cross", "green", x, 16.0, 9.0) for x in (5.0, 16.0, 27.0)))
    imgs = render([three, three], seed=1)
    ok, too_many = verify(imgs, [parse_prompt("a photo of three crosses"),
                                 parse_prompt("a photo of two crosses")])
    assert ok.correct and not too_many.correct and "expected cross<3, found 3" in too_many.reason
    pair = Scene((WorldObject("square", "blue", 8.0, 16.0, 9.0),
                  WorldObject("circle", "red", 24.0, 16.0, 9.0)))
    imgs = render([pair, pair], seed=2)
    left, right = verify(imgs, [parse_prompt("a photo of a square left of a circle"),
                                parse_prompt("a photo of a square right of a circle")])
    assert left.correct and not right.correct


def test_verify_input_errors():
    with pytest.raises(SlasError, match="one record per image"):
        verify(torch.zeros(2, 3, 32, 32), [parse_prompt("a photo of a circle")])
    with pytest.raises(SlasError, match="uint8"):
        WorldDetector()(np.zeros((32, 32, 3), dtype=np.float32))


def _blur(x, sigma):
    t = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, 5)
    y = F.pad(x.reshape(-1, 1, 32, 32), (2, 2, 2, 2), mode="replicate")
    return F.conv2d(F.conv2d(y, k), k.transpose(2, 3)).reshape(x.shape)


@pytest.mark.slow
def test_per_tag_accuracy_clean_blurred_noisy():
    rows = eval_prompts() * 5
    rng = random.Random(1)
    clean = render([scene_for(m, rng) for m in rows], seed=1)
    noisy = (clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)))
    for images in (clean, _blur(clean, 0.5), noisy.clamp(0, 1)):
        results = verify(images, rows)
        for tag in TAGS:
            tagged = [r.correct for m, r in zip(rows, results, strict=True) if m["tag"] == tag]
            assert sum(tagged) / len(tagged) >= 0.99, tag
