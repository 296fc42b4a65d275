"""Advantage estimators: hand-worked numbers, invariances, degenerate input, properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slas.advantages import (
    ADVANTAGES,
    clamp_advantages,
    combine,
    finite_group_mask,
    get_advantage_fn,
    global_std,
    grpo,
    mean_only,
    pairwise_winrate,
    preference_matrix,
    slas,
)
from slas.errors import SlasError

# Two groups: A = [1, 2, 3] (mean 2), B = [0, 4] (mean 2). Δr = [-1, 0, 1, -2, 2].
R = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0], dtype=torch.float64)
G = torch.tensor([0, 0, 0, 1, 1])


def close(a, b, tol=1e-6):
    return torch.allclose(a.double(), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


def test_grpo_hand_worked():
    # A: unbiased std sqrt(((-1)^2 + 0 + 1^2) / 2) = 1  -> [-1, 0, 1]
    # B: unbiased std sqrt((4 + 4) / 1) = 2.8284        -> [-2, 2] / 2.8284 = [-0.7071, 0.7071]
    assert close(grpo(R, G), [-1, 0, 1, -0.70710678, 0.70710678])
    # biased: A std sqrt(2/3) = 0.8165 -> ±1.2247; B std 2 -> ±1
    assert close(grpo(R, G, std="biased"), [-1.2247449, 0, 1.2247449, -1, 1])


def test_mean_only_hand_worked():
    assert close(mean_only(R, G), [-1, 0, 1, -2, 2])


def test_global_std_hand_worked():
    # batch std (unbiased) of [1,2,3,0,4]: mean 2, squares 1+0+1+4+4 = 10, 10/4 = 2.5 -> 1.5811
    assert close(global_std(R, G), [-0.6324555, 0, 0.6324555, -1.2649111, 1.2649111])


def test_slas_pre_hand_worked():
    # z = Δr / 1.5811 = [-0.632, 0, 0.632, -1.265, 1.265]; gamma=1 squares |z|:
    # [-.4, 0, .4, -1.6, 1.6]
    assert close(slas(R, G, gamma=1.0, normalize="pre"), [-0.4, 0, 0.4, -1.6, 1.6])


def test_slas_post_hand_worked():
    # Ã = sign·Δr² = [-1, 0, 1, -4, 4]; unbiased std: mean 0, (1+0+1+16+16)/4 = 8.5 -> 2.91548
    assert close(
        slas(R, G, gamma=1.0, normalize="post"), [-0.3429972, 0, 0.3429972, -1.3719887, 1.3719887]
    )


@pytest.mark.parametrize("normalize", ["pre", "post"])
@pytest.mark.parametrize("c,b", [(10.0, 0.0), (0.01, 0.0), (1.0, 7.5), (3.0, -2.0)])
def test_slas_scale_and_shift_invariant(normalize, c, b):
    torch.manual_seed(0)
    r = torch.rand(24, dtype=torch.float64)
    g = torch.arange(24) // 6
    # eps = 0: the math is exactly invariant; with eps > 0 only up to eps / std_batch.
    a = slas(r, g, gamma=0.7, normalize=normalize, eps=0.0)
    assert torch.allclose(slas(c * r + b, g, gamma=0.7, normalize=normalize, eps=0.0), a, atol=1e-9)


@pytest.mark.parametrize("name", list(ADVANTAGES))
def test_permutation_equivariant(name):
    torch.manual_seed(1)
    r = torch.randn(12, dtype=torch.float64)
    g = torch.arange(12) % 3
    perm = torch.randperm(12)
    fn = get_advantage_fn(name, gamma=0.5)
    assert torch.allclose(fn(r, g)[perm], fn(r[perm], g[perm]), atol=1e-12)


def test_gamma_zero_pre_equals_global_std():
    torch.manual_seed(2)
    r = torch.randn(16, dtype=torch.float64)
    g = torch.arange(16) // 4
    assert torch.allclose(slas(r, g, gamma=0.0), global_std(r, g), atol=1e-12)


def test_shaping_damps_small_and_amplifies_large():
    a0 = global_std(R, G)
    a1 = slas(R, G, gamma=0.5)
    small, large = a0.abs() < 1, a0.abs() > 1
    assert small.any() and large.any()
    nz = a0 != 0
    assert (a1.abs()[small & nz] < a0.abs()[small & nz]).all()
    assert (a1.abs()[large] > a0.abs()[large]).all()
    assert torch.equal(torch.sign(a1), torch.sign(a0))


def test_illusory_advantage_removed():
    # A group with a tiny noisy gap next to a group with a real gap: GRPO gives both unit-size
    # advantages; SLAS keeps the tiny one tiny.
    r = torch.tensor([0.300, 0.301, 0.20, 0.40], dtype=torch.float64)
    g = torch.tensor([0, 0, 1, 1])
    a = grpo(r, g)
    assert close(a[:2].abs(), [0.70710678, 0.70710678], tol=1e-4)
    s = slas(r, g, gamma=0.5)
    assert s[:2].abs().max() < 0.01 * s[2:].abs().max()


@pytest.mark.parametrize("name", list(ADVANTAGES))
def test_constant_groups_give_exact_zeros(name):
    # 0.1 * 3 does not round-trip through the mean exactly; the result must still be exactly 0.
    r = torch.tensor([0.1, 0.1, 0.1, 0.2, 0.7, 0.4], dtype=torch.float32)
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    a = get_advantage_fn(name)(r, g)
    assert torch.equal(a[:3], torch.zeros(3))
    assert torch.isfinite(a).all() and (a[3:] != 0).all()


@pytest.mark.parametrize("name", list(ADVANTAGES))
def test_all_equal_batch(name):
    a = get_advantage_fn(name)(torch.full((8,), 0.25), torch.arange(8) // 4)
    assert torch.equal(a, torch.zeros(8))


@pytest.mark.parametrize("name", list(ADVANTAGES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_reward_drops_its_group(name, bad):
    r = torch.tensor([1.0, bad, 2.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    fn = get_advantage_fn(name)
    a = fn(r, g)
    assert torch.isfinite(a).all()
    assert torch.equal(a[:2], torch.zeros(2, dtype=torch.float64))
    # The other groups get exactly what they get without the dropped group.
    assert torch.allclose(a[2:], fn(r[2:], g[2:]), atol=1e-12)
    assert finite_group_mask(r, g).tolist() == [False, False, True, True, True, True]


def test_clamp_separate_option():
    a = torch.tensor([-7.0, -1.0, 0.5, 6.0])
    assert clamp_advantages(a, 5.0).tolist() == [-5.0, -1.0, 0.5, 5.0]
    assert clamp_advantages(a, None) is a


def test_combine_rewards_vs_advantages():
    r = torch.stack([R, torch.tensor([0.0, 0.0, 3.0, 1.0, 1.0], dtype=torch.float64)])
    fn = get_advantage_fn("mean_only")
    # rewards: w·r = [1+0, 2+0, 3+6, 0+2, 4+2] with w = (1, 2) -> [1, 2, 9, 2, 6];
    # group means 4 and 4 -> [-3, -2, 5, -2, 2]
    assert close(combine(r, [1.0, 2.0], G, fn, "rewards"), [-3, -2, 5, -2, 2])
    # advantages: 1·[-1,0,1,-2,2] + 2·[-1,-1,2,0,0] (group B of reward 2 is constant)
    # -> [-3,-2,5,-2,2]
    assert close(combine(r, [1.0, 2.0], G, fn, "advantages"), [-3, -2, 5, -2, 2])
    # With the grpo estimator the two modes differ (normalisation per reward vs once).
    fg = get_advantage_fn("grpo")
    assert not torch.allclose(
        combine(r, [1.0, 2.0], G, fg, "rewards"), combine(r, [1.0, 2.0], G, fg, "advantages")
    )
    assert combine(r, [1.0, 2.0], G, fg, "advantages", clamp=1.0).abs().max() == 1.0


def test_combine_nonfinite_drops_group_in_every_component():
    r = torch.stack([R, torch.tensor([0.0, float("nan"), 3.0, 1.0, 2.0], dtype=torch.float64)])
    a = combine(r, [1.0, 1.0], G, get_advantage_fn("grpo"), "advantages")
    assert torch.equal(a[:3], torch.zeros(3, dtype=torch.float64)) and (a[3:] != 0).all()


def test_pairwise_winrate_hand_worked():
    g = torch.tensor([0, 0, 0, 1, 1])
    # Group 0: 0 beats 1, 0 ties 2, 1 beats 2. Group 1: 3 loses to 4.
    table = {(0, 1): 1.0, (0, 2): 0.5, (1, 2): 1.0, (3, 4): 0.0}
    p = preference_matrix(g, lambda i, j: table[(i, j)])
    # sample 0: (1 + 0.5)/2 = .75; 1: (0 + 1)/2 = .5; 2: (0.5 + 0)/2 = .25; 3: 0; 4: 1
    assert close(pairwise_winrate(p, g), [0.75, 0.5, 0.25, 0.0, 1.0])


def test_preference_malformed_is_tie():
    g = torch.tensor([0, 0])
    p = preference_matrix(g, lambda i, j: float("nan"))
    assert close(pairwise_winrate(p, g), [0.5, 0.5])


def test_unknown_estimator_lists_valid():
    with pytest.raises(SlasError, match="grpo, mean_only, global_std, slas"):
        get_advantage_fn("slass")


def test_shape_mismatch_is_clear():
    with pytest.raises(SlasError, match=r"\[N\]"):
        grpo(torch.zeros(4), torch.zeros(3, dtype=torch.long))


@settings(max_examples=60, deadline=None)
@given(
    groups=st.integers(1, 6),
    g_size=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-6, 1e3),
    gamma=st.floats(0.0, 3.0),
    name=st.sampled_from(sorted(ADVANTAGES)),
    normalize=st.sampled_from(["pre", "post"]),
)
def test_properties_random_layouts(groups, g_size, seed, scale, gamma, name, normalize):
    gen = torch.Generator().manual_seed(seed)
    n = groups * g_size
    r = torch.randn(n, generator=gen, dtype=torch.float64) * scale
    g = torch.randperm(n, generator=gen) % groups  # groups interleaved in any order
    a = get_advantage_fn(name, gamma=gamma, normalize=normalize)(r, g)
    assert a.shape == (n,) and torch.isfinite(a).all()
    # Each group's advantages sum to 0 for the centred estimators without shaping,
    # and have the sign of Δr for all of them.
    delta = r - torch.stack([r[g == k].mean() for k in range(groups)])[g]
    assert ((torch.sign(a) == torch.sign(delta)) | (a.abs() < 1e-9)).all()
    if name != "slas" or gamma == 0:
        for k in range(groups):
            assert abs(float(a[g == k].sum())) < 1e-6 * max(1.0, float(a.abs().max()))


def test_float32_in_float32_out():
    a = slas(torch.rand(8), torch.arange(8) // 4)
    assert a.dtype == torch.float32 and not math.isnan(float(a.sum()))
