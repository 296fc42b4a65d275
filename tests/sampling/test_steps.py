import math

import pytest
import torch
from torch.distributions import Normal

from slas.errors import SlasError
from slas.sampling import (
    cps_step,
    flow_ode_step,
    flow_sde_step,
    gaussian_log_prob,
    linear_sigmas,
    shift_sigmas,
)

SHAPE = (8, 4, 6, 6)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tensors(seed: int = 0, shape=SHAPE):
    g = _gen(seed)
    return tuple(torch.randn(shape, generator=g) for _ in range(3))  # v, x, noise


def _step(kind: str, v, x, sigma, sigma_next, **kw):
    if kind == "dance":
        return flow_sde_step(v, x, sigma, sigma_next, noise_type="dance", eta=0.3, **kw)
    if kind == "flow":
        return flow_sde_step(v, x, sigma, sigma_next, noise_type="flow", eta=0.7,
                             sigma_one_denominator=0.9375, **kw)
    return cps_step(v, x, sigma, sigma_next, eta=0.8, **kw)


def _normal_ref(out, reduction):
    std = out.std.reshape(-1, *([1] * (out.mean.ndim - 1))).expand_as(out.mean)
    elem = Normal(out.mean, std).log_prob(out.prev_sample).flatten(1)
    return elem.mean(1) if reduction == "mean" else elem.sum(1)


def test_gaussian_log_prob_hand_worked():
    # x == mean, s = 1: each element is -0.5*log(2*pi) = -0.918939; mean keeps it, sum of 4 x4
    x = torch.zeros(2, 4)
    lp = gaussian_log_prob(x, x, 1.0)
    torch.testing.assert_close(lp, torch.full((2,), -0.5 * math.log(2 * math.pi)))
    lp_sum = gaussian_log_prob(x, x, torch.tensor([1.0, 2.0]), reduction="sum")
    # second sample: 4 * (-0.693147 - 0.918939) = -6.448345
    torch.testing.assert_close(lp_sum, torch.tensor([-3.675754, -6.448345]))
    # one element off by 2 at s=2: -(4)/(8) = -0.5 extra on the sum
    y = x.clone()
    y[1, 0] = 2.0
    assert gaussian_log_prob(y, x, torch.tensor([1.0, 2.0]), "sum")[1].item() == pytest.approx(
        -6.448345 - 0.5, abs=1e-5)


def test_gaussian_log_prob_zero_std_is_zero():
    x, m = torch.randn(3, 5), torch.randn(3, 5)
    lp = gaussian_log_prob(x, m, torch.tensor([0.0, 1.0, 0.0]))
    assert lp[0] == 0.0 and lp[2] == 0.0 and lp[1] < 0 and torch.isfinite(lp).all()


@pytest.mark.parametrize("kind", ["dance", "flow", "cps"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.9375), (0.75, 0.5), (0.3, 0.2)])
def test_log_prob_matches_torch_normal(kind, reduction, sigma, sigma_next):
    v, x, z = _tensors()
    out = _step(kind, v, x, sigma, sigma_next, noise=z, logprob_reduction=reduction)
    assert out.log_prob.shape == (8,) and out.std.shape == (8,)
    assert out.log_prob.dtype == out.prev_sample.dtype == torch.float32
    torch.testing.assert_close(out.log_prob, _normal_ref(out, reduction), rtol=1e-5, atol=1e-5)


def _straight_path(seed: int = 1):
    g = _gen(seed)
    x0, eps = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    return x0, eps, eps - x0  # x_sigma = (1-sigma) x0 + sigma eps, true v = eps - x0


@pytest.mark.parametrize("sigmas", [linear_sigmas(10), shift_sigmas(linear_sigmas(16), 3.0)])
def test_straight_path_ode_and_eta0_sde_land_on_x0(sigmas):
    x0, eps, v_true = _straight_path()
    x_ode, x_sde = eps.clone(), eps.clone()
    zero = torch.zeros_like(eps)
    for i in range(len(sigmas) - 1):
        x_ode = flow_ode_step(v_true, x_ode, sigmas[i], sigmas[i + 1])
        x_sde = flow_sde_step(v_true, x_sde, sigmas[i], sigmas[i + 1], noise_type="dance",
                              eta=0.0, noise=zero).prev_sample
    torch.testing.assert_close(x_ode, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(x_sde, x0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.75), (0.6, 0.45), (0.2, 0.0)])
def test_straight_path_dance_mean_closed_form(sigma, sigma_next):
    # With the true v, eps_hat = eps, so mu = x_{sigma'} + d_sigma*eta^2/(2 sigma)*eps.
    x0, eps, v_true = _straight_path()
    x = (1 - sigma) * x0 + sigma * eps
    out = flow_sde_step(v_true, x, sigma, sigma_next, noise_type="dance", eta=0.3,
                        noise=torch.zeros_like(x))
    d = sigma_next - sigma
    expected = (1 - sigma_next) * x0 + sigma_next * eps + d * 0.09 / (2 * sigma) * eps
    torch.testing.assert_close(out.mean, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("sigma,sigma_next", [(0.9, 0.7), (0.5, 0.25), (0.7, 0.0)])
def test_cps_straight_path_mean(sigma, sigma_next):
    # x0_hat = x0, eps_hat = eps: mu = (1-s')x0 + sqrt(s'^2 - std^2) eps, std = s' sin(0.4 pi)
    x0, eps, v_true = _straight_path()
    x = (1 - sigma) * x0 + sigma * eps
    out = cps_step(v_true, x, sigma, sigma_next, eta=0.8, noise=torch.zeros_like(x))
    std = sigma_next * math.sin(0.4 * math.pi)
    expected = (1 - sigma_next) * x0 + math.sqrt(sigma_next**2 - std**2) * eps
    torch.testing.assert_close(out.mean, expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(out.std, torch.full((8,), std))


@pytest.mark.parametrize("sigma,sigma_next", [(0.95, 0.9), (0.5, 0.3), (0.1, 0.02)])
def test_sde_mean_equals_reference_written_forms(sigma, sigma_next):
    v, x, _ = _tensors(2)
    d = sigma_next - sigma
    # Flow-GRPO: x(1 + g^2 d/(2 s)) + v(1 + g^2 (1-s)/(2 s)) d, g = a sqrt(s/(1-s))
    g2 = 0.7**2 * sigma / (1 - sigma)
    flow_ref = x * (1 + g2 * d / (2 * sigma)) + v * (1 + g2 * (1 - sigma) / (2 * sigma)) * d
    out = flow_sde_step(v, x, sigma, sigma_next, noise_type="flow", eta=0.7, noise=v)
    torch.testing.assert_close(out.mean, flow_ref, rtol=1e-5, atol=1e-5)
    # DanceGRPO: Euler mean + (-0.5 eta^2 score) d, score = -(x - (1-s) x0_hat)/s^2
    x0_hat = x - sigma * v
    score = -(x - (1 - sigma) * x0_hat) / sigma**2
    dance_ref = x + d * v + (-0.5 * 0.3**2 * score) * d
    out = flow_sde_step(v, x, sigma, sigma_next, noise_type="dance", eta=0.3, noise=v)
    torch.testing.assert_close(out.mean, dance_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("noise_type,eta,sigma,sigma_next,expected", [
    ("dance", 0.3, 0.75, 0.5, 0.15),    # 0.3*sqrt(0.25)
    ("dance", 0.3, 1.0, 0.96, 0.06),    # 0.3*sqrt(0.04)
    ("flow", 0.7, 0.5, 0.25, 0.35),     # g = 0.7*sqrt(0.5/0.5) = 0.7; 0.7*sqrt(0.25)
    ("flow", 0.9, 0.8, 0.6, 0.8049845),  # g = 0.9*sqrt(4) = 1.8; 1.8*sqrt(0.2)
    ("flow", 0.7, 1.0, 0.75, 0.7),      # sigma=1: g = 0.7*sqrt(1/(1-0.75)) = 1.4; 1.4*0.5
])
def test_sde_std_hand_worked(noise_type, eta, sigma, sigma_next, expected):
    v, x, z = _tensors(3)
    out = flow_sde_step(v, x, sigma, sigma_next, noise_type=noise_type, eta=eta,
                        sigma_one_denominator=0.75, noise=z)
    torch.testing.assert_close(out.std, torch.full((8,), expected), rtol=1e-6, atol=1e-7)


def test_cps_std_hand_worked_and_final_step():
    v, x, z = _tensors(4)
    # eta = 1/3: sin(pi/6) = 0.5 -> std = 0.5*0.5 = 0.25; eps coef sqrt(0.25-0.0625) = 0.4330127
    out = cps_step(v, x, 0.75, 0.5, eta=1 / 3, noise=z)
    torch.testing.assert_close(out.std, torch.full((8,), 0.25))
    x0_hat, eps_hat = x - 0.75 * v, x + 0.25 * v
    torch.testing.assert_close(out.mean, 0.5 * x0_hat + 0.4330127 * eps_hat)
    last = cps_step(v, x, 0.25, 0.0, eta=0.8, noise=z)
    assert torch.equal(last.prev_sample, last.mean) and torch.equal(last.log_prob, torch.zeros(8))


@pytest.mark.parametrize("kind", ["dance", "flow", "cps"])
def test_recorded_transition_recomputes_bit_identically(kind):
    v, x, z = _tensors(5)
    rec = _step(kind, v, x, 0.6, 0.5, noise=z)
    for sl in (slice(0, 1), slice(2, 5), slice(0, 8), slice(7, 8)):
        again = _step(kind, v[sl], x[sl], 0.6, 0.5, prev_sample=rec.prev_sample[sl])
        assert torch.equal(again.log_prob, rec.log_prob[sl])
        assert torch.equal(again.mean, rec.mean[sl])


@pytest.mark.parametrize("kind", ["dance", "flow", "cps"])
def test_per_sample_sigmas_equal_scalar_loop(kind):
    v, x, z = _tensors(6)
    sig = torch.tensor([1.0, 0.9375, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1])
    sig_next = torch.tensor([0.9375, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1, 0.0])
    batched = _step(kind, v, x, sig, sig_next, noise=z)
    for i in range(8):
        one = _step(kind, v[i:i + 1], x[i:i + 1], float(sig[i]), float(sig_next[i]),
                    noise=z[i:i + 1])
        for a, b in zip(one, batched, strict=True):
            assert torch.equal(a, b[i:i + 1])


def test_ode_step_float32_from_bf16_and_per_sample():
    v, x, _ = _tensors(7)
    out = flow_ode_step(v.bfloat16(), x.bfloat16(), torch.full((8,), 0.5), 0.25)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.bfloat16().float() - 0.25 * v.bfloat16().float())


def test_input_validation():
    v, x, z = _tensors(8)
    kw = dict(noise_type="dance", eta=0.3)
    with pytest.raises(SlasError, match="exactly one"):
        flow_sde_step(v, x, 0.5, 0.4, **kw)
    with pytest.raises(SlasError, match="exactly one"):
        flow_sde_step(v, x, 0.5, 0.4, noise=z, prev_sample=x, **kw)
    with pytest.raises(SlasError, match="noise must have the shape"):
        flow_sde_step(v, x, 0.5, 0.4, noise=z[:3], **kw)
    with pytest.raises(SlasError, match="model output must have the shape"):
        cps_step(v[:, :2], x, 0.5, 0.4, eta=0.5, noise=z)
    with pytest.raises(SlasError, match="sigma must be"):
        flow_sde_step(v, x, torch.full((3,), 0.5), 0.4, noise=z, **kw)
    with pytest.raises(SlasError, match="no step from"):
        flow_sde_step(v, x, 0.0, 0.0, noise=z, **kw)
    with pytest.raises(SlasError, match="sigma_one_denominator"):
        flow_sde_step(v, x, 1.0, 0.9, noise_type="flow", eta=0.7, noise=z)
    with pytest.raises(SlasError, match="noise_type"):
        flow_sde_step(v, x, 0.5, 0.4, noise_type="ddim", eta=0.7, noise=z)
    with pytest.raises(SlasError, match="logprob_reduction"):
        flow_sde_step(v, x, 0.5, 0.4, noise=z, logprob_reduction="max", **kw)
    with pytest.raises(SlasError, match="eta"):
        cps_step(v, x, 0.5, 0.4, eta=1.5, noise=z)
    with pytest.raises(SlasError, match="same shape"):
        flow_ode_step(v[:2], x, 0.5, 0.4)
