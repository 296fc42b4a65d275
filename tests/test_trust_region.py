"""Trust region for γ: hand-worked bounds, Fisher power iteration vs explicit Fisher, controller."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from slas.advantages import slas
from slas.errors import SlasError
from slas.losses import gaussian_kl
from slas.trust_region import (
    AdaptiveGamma,
    bounded_reward_gamma,
    empirical_moment,
    fisher_lambda_max,
    fisher_lambda_max_graph,
    grad_second_moment,
    kl_budget,
    module_mean_fn,
    moment_bound_gamma,
    per_sample_grad_sq,
    sub_gaussian_gamma,
    trainable_parameters,
)

T = torch.tensor


def _log_prob_one(params, x, x_next, s):
    """Mean-reduced Gaussian log π of one sample under μ = W x (vmap-safe)."""
    mu = params["weight"] @ x
    return (-((x_next - mu) ** 2) / (2 * s**2)).mean() - math.log(s) - 0.5 * math.log(2 * math.pi)


# ----------------------------------------------------------------------------- budget / moment
def test_kl_budget_hand_worked():
    # B = 2·0.01 / (2 · 0.1² · 4) = 0.02 / 0.08 = 0.25
    assert kl_budget(0.01, 2.0, 0.1, 4.0) == pytest.approx(0.25)
    assert kl_budget(0.01, 0.0, 0.1, 4.0) == math.inf
    with pytest.raises(SlasError, match="lr"):
        kl_budget(0.01, 2.0, 0.0, 4.0)
    with pytest.raises(SlasError, match="g2"):
        kl_budget(0.01, 2.0, 0.1, -1.0)


def test_moment_bound_hand_worked():
    # Δr = [2, -2]: M = 4^(1+γ); 4^(1+γ) = 64 -> 1+γ = 3 -> γ = 2.
    z = T([2.0, -2.0])
    assert empirical_moment(z, 2.0) == pytest.approx(64.0)
    g = moment_bound_gamma(z, 64.0, tol=1e-9)
    assert g == pytest.approx(2.0, abs=1e-8) and g <= 2.0
    # B = 16 -> γ = 1; B = 4 = M(0) -> γ = 0 exactly feasible.
    assert moment_bound_gamma(z, 16.0) == pytest.approx(1.0, abs=1e-6)
    assert moment_bound_gamma(z, 4.0) == pytest.approx(0.0, abs=1e-6)
    # B >= M(γ_max) = 4^11: never binds -> gamma_max.
    assert moment_bound_gamma(z, 4.0**11, gamma_max=10.0) == 10.0
    # B = 2 < M(0) = 4 and M rising: never satisfied -> 0.
    assert moment_bound_gamma(z, 2.0) == 0.0


def test_moment_bound_unit_and_zero_values():
    # |Δr| = 1 everywhere: M = 1 for every γ, so B >= 1 always holds, B < 1 never does.
    z = T([1.0, -1.0, 1.0, -1.0])
    assert moment_bound_gamma(z, 1.0, gamma_max=3.0) == 3.0
    assert moment_bound_gamma(z, 0.99, gamma_max=3.0) == 0.0
    # All zero (constant groups): M = 0.
    assert moment_bound_gamma(torch.zeros(4), 0.0, gamma_max=3.0) == 3.0
    # Zeros count in the mean: [2, 0] -> M = 4^(1+γ)/2 = 16 -> 4^(1+γ) = 32 -> γ = 1.5
    assert moment_bound_gamma(T([2.0, 0.0]), 16.0) == pytest.approx(1.5, abs=1e-6)


def test_moment_bound_dip_case():
    # Mass below and above 1: M(γ) = (3·0.25^q + 1.44^q)/4, q = 1+γ, dips then rises.
    # M(0) = (0.75 + 1.44)/4 = 0.5475; pick B below that but above the minimum.
    z = T([0.5, 0.5, 0.5, 1.2])
    b = 0.53
    assert empirical_moment(z, 0.0) == pytest.approx(0.5475) and empirical_moment(z, 0.0) > b
    g = moment_bound_gamma(z, b, tol=1e-9)
    assert g > 0
    assert empirical_moment(z, g) <= b < empirical_moment(z, g + 1e-6)


def test_moment_bound_monotone_in_budget():
    z = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    budgets = torch.logspace(-2, 6, 60).tolist()
    gammas = [moment_bound_gamma(z, b) for b in budgets]
    assert all(a <= b for a, b in zip(gammas[:-1], gammas[1:], strict=True))
    assert gammas[0] < gammas[-1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=12),
    st.floats(1e-3, 1e4),
)
def test_moment_bound_feasible_and_tight(values, budget):
    z = T(values, dtype=torch.float64)
    g = moment_bound_gamma(z, budget, gamma_max=5.0, tol=1e-7)
    assert 0.0 <= g <= 5.0
    if 0 < g < 5.0:
        assert empirical_moment(z, g) <= budget * (1 + 1e-12)
        assert empirical_moment(z, g + 1e-5) > budget


def test_moment_bound_bad_input():
    with pytest.raises(SlasError, match="non-finite"):
        moment_bound_gamma(T([1.0, math.nan]), 1.0)
    with pytest.raises(SlasError, match="budget"):
        moment_bound_gamma(T([1.0]), -1.0)
    with pytest.raises(SlasError, match="non-empty"):
        moment_bound_gamma(torch.zeros(0), 1.0)


# ----------------------------------------------------------------------------- corollaries
def test_bounded_reward_gamma_hand_worked():
    assert bounded_reward_gamma(64.0, 2.0) == pytest.approx(2.0)  # 6 ln2/(2 ln2) − 1
    assert bounded_reward_gamma(math.exp(6), math.e) == pytest.approx(2.0)  # 6/2 − 1
    assert bounded_reward_gamma(1.0, 10.0) == pytest.approx(-1.0)  # ln 1 = 0
    assert bounded_reward_gamma(math.inf, 2.0) == math.inf
    with pytest.raises(SlasError, match="r_max"):
        bounded_reward_gamma(64.0, 1.0)
    # Data at the bound R attain it: z = [R, -R] has M = R^{2(1+γ)} exactly.
    assert moment_bound_gamma(T([3.0, -3.0]), 3.0**5, tol=1e-9) == pytest.approx(
        bounded_reward_gamma(3.0**5, 3.0), abs=1e-8
    )  # 5 ln3/(2 ln3) − 1 = 1.5


def test_sub_gaussian_gamma_hand_worked():
    # 2σ² = 1, C = 1: γ = exp(W(ln B)) − 1.
    sigma = math.sqrt(0.5)
    assert sub_gaussian_gamma(1.0, sigma) == pytest.approx(0.0, abs=1e-12)  # W(0) = 0
    assert sub_gaussian_gamma(math.exp(math.e), sigma) == pytest.approx(math.e - 1)  # W(e) = 1
    b = math.exp(2 * math.e**2)  # W(2e²) = 2 -> γ = e² − 1
    assert sub_gaussian_gamma(b, sigma) == pytest.approx(math.e**2 - 1)
    # C scales B: C = 2, B = 2 -> same as C = 1, B = 1.
    assert sub_gaussian_gamma(2.0, sigma, const=2.0) == pytest.approx(0.0, abs=1e-12)
    # ln B < −1/e (with 2σ² = 1): no q satisfies the bound.
    assert sub_gaussian_gamma(math.exp(-0.5), sigma) == -math.inf


@pytest.mark.parametrize("budget", [3.0, 50.0, 1e6])
@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.0])
def test_sub_gaussian_gamma_solves_moment_equation(budget, sigma):
    q = 1 + sub_gaussian_gamma(budget, sigma, const=1.5)
    assert 1.5 * (2 * sigma**2 * q) ** q == pytest.approx(budget, rel=1e-9)


def test_sub_gaussian_grows_slower_than_log():
    # γ ≈ ln B / ln ln B: squaring B less than doubles γ + 1 once B is large.
    q1, q2 = 1 + sub_gaussian_gamma(1e20, 1.0), 1 + sub_gaussian_gamma(1e40, 1.0)
    assert q1 < q2 < 2 * q1


# ----------------------------------------------------------------------------- Fisher
def test_fisher_linear_closed_form():
    # μ_i = W x_i, x = [1, 0], [0, 2], C = 3 outputs, s = 0.5. vᵀFv = tr(VΣVᵀ)/(s²D) with
    # Σ = mean x xᵀ = diag(1/2, 2): λ_max = 2/(0.25·3) = 8/3 (mean), 2/0.25 = 8 (sum).
    x = T([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    params = {"weight": torch.randn(3, 2, dtype=torch.float64)}

    def mean_fn(p):
        return x @ p["weight"].T

    gen = torch.Generator().manual_seed(0)
    lam = fisher_lambda_max(mean_fn, params, 0.5, tol=1e-12, generator=gen)
    assert lam == pytest.approx(8 / 3, rel=1e-9)
    lam_sum = fisher_lambda_max(mean_fn, params, T([0.5, 0.5]), reduction="sum", tol=1e-12,
                                generator=gen)
    assert lam_sum == pytest.approx(8.0, rel=1e-9)
    # λ is in the units of gaussian_kl(mean): the top direction V = e_0 e_1ᵀ moves only sample 2,
    # by Δμ = [2, 0, 0], so KL = mean([0, 4/(2·0.25·3)]) = 4/3 = ½·λ·‖V‖² = ½·(8/3)·1.
    v = torch.zeros(3, 2, dtype=torch.float64)
    v[0, 1] = 1.0
    moved = mean_fn({"weight": params["weight"] + v})
    kl = gaussian_kl(moved, mean_fn(params), torch.full((2,), 0.5, dtype=torch.float64)).mean()
    assert float(kl) == pytest.approx(0.5 * lam, rel=1e-9) and float(kl) == pytest.approx(4 / 3)


def _mlp_and_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    return net, torch.randn(6, 8, dtype=torch.float64)


def test_fisher_power_iteration_matches_explicit_fisher():
    net, x = _mlp_and_inputs()
    params = trainable_parameters(net)
    mean_fn = module_mean_fn(net, (x,))
    std = T([0.3, 0.3, 0.5, 0.5, 0.7, 0.7], dtype=torch.float64)
    # Explicit: J [N·D, P] over the flat parameter vector, F = Σ_i J_iᵀJ_i/(s_i² N D).
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.reshape(-1) for p in params.values()])
    sizes = [p.numel() for p in params.values()]

    def flat_mean(v):
        chunks = torch.split(v, sizes)
        return mean_fn({k: c.view(s) for k, c, s in zip(names, chunks, shapes, strict=True)})

    jac = torch.func.jacrev(flat_mean)(flat)  # [N, D, P]
    n, d = jac.shape[:2]
    fisher = torch.einsum("ndp,ndq,n->pq", jac, jac, 1 / (std**2 * n * d))
    expected = float(torch.linalg.eigvalsh(fisher)[-1])
    lam = fisher_lambda_max(mean_fn, params, std, iters=500, tol=1e-9,
                            generator=torch.Generator().manual_seed(1))
    assert flat.numel() == 212
    assert lam == pytest.approx(expected, rel=1e-3)
    assert lam <= expected * (1 + 1e-9)  # a Rayleigh quotient never overshoots


def test_fisher_graph_version_matches_functional_version():
    # The double-backward FVP on an already computed μ gives the same λ_max as jvp/vjp.
    net, x = _mlp_and_inputs()
    params = trainable_parameters(net)
    std = T([0.3, 0.3, 0.5, 0.5, 0.7, 0.7], dtype=torch.float64)
    kw = dict(iters=500, tol=1e-10)
    expected = fisher_lambda_max(module_mean_fn(net, (x,)), params, std,
                                 generator=torch.Generator().manual_seed(1), **kw)
    lam = fisher_lambda_max_graph(net(x), list(net.parameters()), std,
                                  generator=torch.Generator().manual_seed(1), **kw)
    assert lam == pytest.approx(expected, rel=1e-9)
    lam_sum = fisher_lambda_max_graph(net(x), list(net.parameters()), std, reduction="sum",
                                      generator=torch.Generator().manual_seed(1), **kw)
    assert lam_sum == pytest.approx(4 * lam, rel=1e-9)  # D = 4 outputs
    with pytest.raises(SlasError, match="std"):
        fisher_lambda_max_graph(net(x), list(net.parameters()), -1.0)


def test_fisher_scales_with_std_and_handles_zero():
    net, x = _mlp_and_inputs()
    params, mean_fn = trainable_parameters(net), module_mean_fn(net, (x,))
    kw = dict(iters=500, tol=1e-10)
    a = fisher_lambda_max(mean_fn, params, 1.0, generator=torch.Generator().manual_seed(2), **kw)
    b = fisher_lambda_max(mean_fn, params, 2.0, generator=torch.Generator().manual_seed(2), **kw)
    assert b == pytest.approx(a / 4, rel=1e-6)  # F ∝ 1/s²
    const = {"weight": torch.ones(2)}
    assert fisher_lambda_max(lambda p: torch.zeros(3, 2), const, 1.0) == 0.0
    with pytest.raises(SlasError, match="std"):
        fisher_lambda_max(mean_fn, params, 0.0)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # [N, 1 head, L, 4]
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).squeeze(1)


def test_fisher_through_attention_matches_explicit_fisher():
    # Fused SDPA kernels lack forward AD; the default math_attention=True routes jvp around them.
    torch.manual_seed(0)
    net, x = _Attention(), torch.randn(3, 5, 4)
    params = trainable_parameters(net)
    mean_fn = module_mean_fn(net, (x,))
    w, b = params["qkv.weight"], params["qkv.bias"]
    with sdpa_kernel(SDPBackend.MATH):
        jw, jb = torch.func.jacrev(lambda w_, b_: mean_fn({"qkv.weight": w_, "qkv.bias": b_}),
                                   argnums=(0, 1))(w, b)
    jac = torch.cat([jw.flatten(3), jb], dim=3).flatten(1, 2).double()  # [N, D, P]
    fisher = torch.einsum("ndp,ndq->pq", jac, jac) / (0.5**2 * jac.shape[0] * jac.shape[1])
    expected = float(torch.linalg.eigvalsh(fisher)[-1])
    lam = fisher_lambda_max(mean_fn, params, 0.5, iters=200, tol=1e-6,
                            generator=torch.Generator().manual_seed(0))
    assert lam == pytest.approx(expected, rel=1e-3)


def test_module_mean_fn_to_mean_and_kwargs():
    net, x = _mlp_and_inputs()
    fn = module_mean_fn(net, (), kwargs={"input": x}, to_mean=lambda out: 2 * out)
    assert torch.allclose(fn(trainable_parameters(net)), 2 * net(x))


# ----------------------------------------------------------------------------- G²
def test_per_sample_grad_sq_closed_form():
    # μ = W x with W = 0, x = [1, 2], x' = [1, 0, -1], s = 0.5, D = 3:
    # ∇_W log π = (x'−μ)xᵀ/(D s²) -> ‖·‖² = ‖x'−μ‖²‖x‖²/(D² s⁴) = 2·5/(9/16) = 160/9.
    params = {"weight": torch.zeros(3, 2, dtype=torch.float64)}
    x = T([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    x_next = T([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    sq = per_sample_grad_sq(lambda p, a, b: _log_prob_one(p, a, b, 0.5), params, (x, x_next))
    assert sq.tolist() == pytest.approx([160 / 9, 0.0])
    assert grad_second_moment(sq.sqrt()) == pytest.approx(80 / 9)
    assert per_sample_grad_sq(lambda p, a, b: _log_prob_one(p, a, b, 0.5), params, (x, x_next),
                              chunk_size=1).tolist() == pytest.approx([160 / 9, 0.0])


def test_bound_keeps_exact_kl_within_budget():
    # Linear Gaussian policy: KL is exactly ½ΔθᵀFΔθ, so the whole DESIGN §3.4 chain must hold:
    # one SGD step with γ at the bound moves the policy by KL <= δ.
    gen = torch.Generator().manual_seed(3)
    n, k, c, s, lr, delta = 16, 5, 4, 0.2, 0.0025, 1e-3
    w = torch.randn(c, k, generator=gen, dtype=torch.float64)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64)
    x_next = x @ w.T + s * torch.randn(n, c, generator=gen, dtype=torch.float64)
    rewards = torch.randn(n, generator=gen, dtype=torch.float64) ** 3
    groups = torch.arange(n) // 4
    params = {"weight": w}

    def mean_fn(p):
        return x @ p["weight"].T

    def logp(p, a, b):
        return _log_prob_one(p, a, b, s)

    g2 = float(per_sample_grad_sq(logp, params, (x, x_next)).mean())
    lam = fisher_lambda_max(mean_fn, params, s, iters=300, tol=1e-12, generator=gen)
    budget = kl_budget(delta, lam, lr, g2)
    gamma = moment_bound_gamma(slas(rewards, groups, gamma=0.0), budget)
    assert 0 < gamma < 10  # the bound binds
    adv = slas(rewards, groups, gamma=gamma)
    wg = w.clone().requires_grad_(True)
    lp = torch.func.vmap(logp, in_dims=(None, 0, 0))({"weight": wg}, x, x_next)
    (g_hat,) = torch.autograd.grad((adv * lp).mean(), wg)
    new_mu = mean_fn({"weight": w + lr * g_hat})
    kl = float(gaussian_kl(new_mu, mean_fn(params), torch.full((n,), s, dtype=torch.float64))
               .mean())
    assert 0 < kl <= delta * (1 + 1e-9)


# ----------------------------------------------------------------------------- controller
def test_adaptive_gamma_steps():
    ctl = AdaptiveGamma(1.0, 0.01, rate=0.1)
    assert ctl.update(0.02, math.inf) == pytest.approx(0.9)  # e = 0.02/0.01 − 1 = 1
    assert ctl.update(0.005, math.inf) == pytest.approx(0.95)  # e = −0.5 -> +0.05
    assert ctl.update(0.01, math.inf) == pytest.approx(0.95)  # on target
    assert ctl.update(1.0, math.inf) == pytest.approx(0.85)  # e clipped to 1
    assert ctl.update(0.0, math.inf) == pytest.approx(0.95)  # e = −1
    assert ctl.steps == 5


def test_adaptive_gamma_respects_bound_and_floor():
    ctl = AdaptiveGamma(0.5, 0.01, rate=0.2, gamma_min=0.1, gamma_max=0.8)
    assert ctl.update(0.0, 0.3) == pytest.approx(0.3)  # would rise to 0.7; bound 0.3
    for _ in range(10):
        assert ctl.update(0.0, math.inf) <= 0.8
    assert ctl.gamma == pytest.approx(0.8)
    for _ in range(10):
        assert ctl.update(5.0, math.inf) >= 0.1
    assert ctl.gamma == pytest.approx(0.1)
    assert ctl.update(0.0, 0.0) == pytest.approx(0.1)  # bound < gamma_min: the floor wins


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 3)), min_size=1, max_size=20))
def test_adaptive_gamma_always_within_limits(steps):
    ctl = AdaptiveGamma(0.0, 0.05, rate=0.3)
    for kl, bound in steps:
        before = ctl.gamma
        g = ctl.update(kl, bound)
        assert 0.0 <= g <= max(bound, 0.0) + 1e-12
        if kl > 0.05 and before <= bound:
            assert g <= before
        if kl < 0.05 and before <= bound:
            assert g >= min(before, bound)


def test_adaptive_gamma_state_round_trip_and_errors():
    a = AdaptiveGamma(1.0, 0.01)
    a.update(0.03, math.inf)
    b = AdaptiveGamma(1.0, 0.01)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() == {"gamma": pytest.approx(0.9), "steps": 1}
    assert a.update(0.004, 2.0) == b.update(0.004, 2.0)
    with pytest.raises(SlasError, match="lacks"):
        b.load_state_dict({"gamma": 1.0})
    with pytest.raises(SlasError, match="measured_kl"):
        a.update(math.nan, 1.0)
    with pytest.raises(SlasError, match="kl_target"):
        AdaptiveGamma(1.0, 0.0)
    with pytest.raises(SlasError, match="gamma0"):
        AdaptiveGamma(2.0, 0.01, gamma_max=1.0)
