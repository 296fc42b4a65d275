"""Tests for slas.world.render: determinism, ranges, closed-form areas, compositing."""

import math

import numpy as np
import pytest
import torch

from slas.errors import SlasError
from slas.world.render import PALETTE, Scene, WorldObject, render, to_uint8

FLAT = {"background_noise": 0.0, "background_tint": 0.0}  # constant 0.9 grey background


def _alpha(obj: WorldObject) -> torch.Tensor:
    """Coverage [32, 32] recovered from a flat-background render: img = 0.9 (1 - a) + a c."""
    img = render([Scene((obj,))], seed=0, **FLAT)[0]
    col = torch.tensor(PALETTE[obj.color])[:, None, None]
    ch = int((0.9 - col).abs().argmax())  # the channel with the largest contrast
    return (0.9 - img[ch]) / (0.9 - col[ch, 0, 0])


def test_shape_dtype_range_and_determinism():
    scenes = [Scene((WorldObject("circle", "red", 10.0, 12.0, 9.0),)), Scene(())]
    a = render(scenes, seed=3)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, render(scenes, seed=3))
    assert not torch.equal(a[1], render(scenes, seed=4)[1])  # the background follows the seed


def test_background_is_light_and_low_saturation():
    bg = render([Scene(())] * 16, seed=0)
    assert abs(float(bg.mean()) - 0.9) < 0.02
    sat = bg.max(dim=1).values - bg.min(dim=1).values
    assert float(sat.max()) < 0.06
    assert float(bg.std(dim=(2, 3)).mean()) > 0.002  # lightly textured, not flat
    assert not torch.equal(bg[0], bg[1])  # different per image


def test_pixel_aligned_square_is_exact():
    # size 8 centred at (16, 16): covers pixels 12..19 in x and y exactly -> 64 pure-palette pixels.
    img = render([Scene((WorldObject("square", "blue", 16.0, 16.0, 8.0),))], seed=0, **FLAT)[0]
    blue = torch.tensor(PALETTE["blue"])[:, None, None]
    exact = (img - blue).abs().amax(dim=0) < 1e-6
    assert int(exact.sum()) == 64
    assert bool(exact[12:20, 12:20].all())
    assert torch.allclose(img[:, :12], torch.full_like(img[:, :12], 0.9))


@pytest.mark.parametrize(
    ("shape", "area"),
    [
        ("circle", math.pi * 5.0**2),  # r = 5 -> 78.54
        ("square", 10.0**2),  # 100
        ("triangle", 0.5 * 10.0**2),  # base 10, height 10 -> 50
        ("cross", 5 / 9 * 10.0**2),  # two 10 x 10/3 bars minus the 10/3 x 10/3 overlap -> 55.6
    ],
)
def test_area_matches_closed_form(shape, area):
    a = _alpha(WorldObject(shape, "purple", 15.3, 16.6, 10.0))
    assert float(a.sum()) == pytest.approx(area, abs=1.5)  # 4x4 supersampling error
    assert float(a.min()) > -1e-5 and float(a.max()) < 1 + 1e-5


def test_triangle_points_up():
    # apex-up triangle: top half holds s^2/8, bottom half 3 s^2/8 -> ratio 1/3.
    a = _alpha(WorldObject("triangle", "red", 16.0, 16.0, 12.0))
    top, bottom = float(a[:16].sum()), float(a[16:].sum())
    assert top / bottom == pytest.approx(1 / 3, abs=0.03)


def test_separate_objects_composite_additively():
    o1 = WorldObject("circle", "green", 8.0, 8.0, 9.0)
    o2 = WorldObject("cross", "yellow", 22.0, 22.0, 10.0)
    both = render([Scene((o1, o2))], seed=0, **FLAT)[0]
    one = render([Scene((o1,))], seed=0, **FLAT)[0]
    two = render([Scene((o2,))], seed=0, **FLAT)[0]
    # Disjoint supports: each pixel differs from the background in at most one single render.
    assert torch.allclose(both, one + two - 0.9, atol=1e-6)
    assert float((one - 0.9).abs().sum()) > 10 and float((two - 0.9).abs().sum()) > 10


def test_to_uint8_rounding_and_layout():
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 2, 0, 0] = 1.2, 0.5, 0.2
    u = to_uint8(x)
    assert u.shape == (1, 32, 32, 3) and u.dtype == np.uint8
    # 1.2 clips to 255; 0.5 * 255 = 127.5 -> 128; 0.2 * 255 = 51.0 -> 51
    assert u[0, 0, 0].tolist() == [255, 128, 51]
    with pytest.raises(SlasError, match="N, 3, H, W"):
        to_uint8(torch.zeros(3, 32, 32))


def test_bad_objects_raise_naming_the_field():
    with pytest.raises(SlasError, match="hexagon"):
        WorldObject("hexagon", "red", 5.0, 5.0, 5.0)
    with pytest.raises(SlasError, match="'pink'.*red"):
        WorldObject("circle", "pink", 5.0, 5.0, 5.0)
    with pytest.raises(SlasError, match="size"):
        WorldObject("circle", "red", 5.0, 5.0, 20.0)
    with pytest.raises(SlasError, match="cx"):
        WorldObject("circle", "red", 40.0, 5.0, 5.0)


def test_many_scenes_render_in_one_call():
    objs = [WorldObject("square", "orange", 6.0 + (i % 20), 16.0, 6.0) for i in range(300)]
    imgs = render([Scene((o,)) for o in objs], seed=1)
    assert imgs.shape == (300, 3, 32, 32)
    # Image i's square moves with i: its leftmost strongly coloured column is at 6 + i%20 - 3.
    sat = imgs.max(dim=1).values - imgs.min(dim=1).values
    first_col = (sat > 0.5).any(dim=1).float().argmax(dim=1)
    assert first_col.tolist() == [3 + i % 20 for i in range(300)]


def test_chunking_does_not_change_the_result():
    scenes = [Scene((WorldObject("triangle", "blue", 5.0 + i % 20, 9.0, 8.0),)) for i in range(10)]
    assert torch.equal(render(scenes, seed=2, chunk=3), render(scenes, seed=2))
