"""Tests for slas.world.fidelity: exact distance to the legal colours, clean ~0, monotone rise."""

import pytest
import torch

from slas.errors import SlasError
from slas.world.captions import sample_pairs
from slas.world.fidelity import (
    artifact_fraction,
    fidelity_stats,
    legal_distance,
    mean_saturation,
)
from slas.world.render import PALETTE, render, to_uint8


@pytest.fixture(scope="module")
def clean():
    scenes, _ = sample_pairs(64, seed=3)
    return render(scenes, seed=3)


def test_legal_points_have_zero_distance():
    red, grey = torch.tensor(PALETTE["red"]), torch.full((3,), 0.9)
    pts = torch.stack([red, grey, 0.5 * red + 0.5 * grey, torch.ones(3), torch.full((3,), 0.8)])
    d = legal_distance(pts.T.reshape(1, 3, 1, 5))
    assert d.abs().max() < 1e-6


def test_distance_matches_brute_force():
    # Brute force over blend weight a (401 values) and grey g (41 values): the exact distance
    # is a lower bound and within the grid's resolution (~0.005) of it.
    pts = torch.rand(300, 3, generator=torch.Generator().manual_seed(0))
    exact = legal_distance(pts.T.reshape(1, 3, 1, 300))[0, 0]
    a = torch.linspace(0, 1, 401)[:, None, None]
    g = torch.linspace(0.8, 1.0, 41)[None, :, None]
    brute = torch.full((300,), 9.0)
    for c in PALETTE.values():
        legal = ((1 - a) * g + a * torch.tensor(c)).reshape(-1, 3)
        brute = torch.minimum(brute, torch.cdist(pts, legal).amin(dim=1))
    assert bool((exact <= brute + 1e-5).all())
    assert float((brute - exact).max()) < 0.005


def test_clean_renders_have_no_artifacts(clean):
    assert float(artifact_fraction(clean).max()) == 0.0
    quantised = torch.from_numpy(to_uint8(clean)).permute(0, 3, 1, 2).float() / 255
    assert float(artifact_fraction(quantised).max()) == 0.0


def test_artifacts_rise_with_noise(clean):
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(clean.shape, generator=gen)
    fr = [float(artifact_fraction((clean + s * eps).clamp(0, 1)).mean())
          for s in (0.0, 0.03, 0.06, 0.1, 0.2)]
    assert fr[0] == 0.0 and fr[-1] > 0.3
    assert all(b > a for a, b in zip(fr[1:], fr[2:], strict=False)) and fr[1] >= fr[0]


def test_artifacts_and_saturation_rise_with_saturation_push(clean):
    grey = clean.mean(dim=1, keepdim=True)
    pushed = [(grey + k * (clean - grey)).clamp(0, 1) for k in (1.0, 1.25, 1.5, 2.0, 3.0)]
    fr = [float(artifact_fraction(x).mean()) for x in pushed]
    sat = [float(mean_saturation(x).mean()) for x in pushed]
    assert fr[0] == 0.0 and fr[1] > 0.01
    assert all(b >= a for a, b in zip(fr, fr[1:], strict=False))
    assert all(b > a for a, b in zip(sat, sat[1:], strict=False))


def test_mean_saturation_hand_case():
    # Left half pure red (max - min = 0.86 - 0.12 = 0.74), right half grey (0): mean 0.37.
    x = torch.full((1, 3, 4, 4), 0.9)
    x[0, :, :, :2] = torch.tensor(PALETTE["red"])[:, None, None]
    assert float(mean_saturation(x)[0]) == pytest.approx(0.37, abs=1e-6)
    stats = fidelity_stats(x)
    assert float(stats.artifact_fraction[0]) == 0.0
    assert float(stats.mean_saturation[0]) == pytest.approx(0.37, abs=1e-6)


def test_bad_shape():
    with pytest.raises(SlasError, match="N, 3, H, W"):
        artifact_fraction(torch.zeros(3, 32, 32))
