"""PPO-clip loss: hand-worked clipped/unclipped cases, gradient sign, KL."""

import math

import pytest
import torch

from slas.errors import SlasError
from slas.losses import gaussian_kl, ppo_clip_loss


def test_ratio_one_gives_minus_mean_advantage():
    lp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    out = ppo_clip_loss(lp, lp.detach().clone(), torch.tensor([1.0, -2.0, 4.0]), clip_range=0.1)
    # ρ = 1 everywhere: ℓ = -A -> mean(-1, 2, -4) = -1
    assert out.loss.item() == pytest.approx(-1.0)
    assert out.clipfrac.item() == 0.0 and out.approx_kl.item() == 0.0
    assert out.ratio_min.item() == 1.0 == out.ratio_max.item()
    out.loss.backward()
    # d/dlp (-A·exp(lp - old)) at ratio 1 = -A / 3 (mean over 3)
    assert torch.allclose(lp.grad, torch.tensor([-1.0, 2.0, -4.0]) / 3)


def test_clipped_and_unclipped_hand_worked():
    eps = 0.2
    old = torch.zeros(4)
    # ratios 1.5, 1.5, 0.5, 0.5 with A = +1, -1, +1, -1
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = ppo_clip_loss(lp, old, adv, clip_range=eps)
    # A=+1, ρ=1.5: max(-1.5, -1.2) = -1.2 (clipped, no gradient)
    # A=-1, ρ=1.5: max( 1.5,  1.2) =  1.5 (unclipped, gradient)
    # A=+1, ρ=0.5: max(-0.5, -0.8) = -0.5 (unclipped, gradient)
    # A=-1, ρ=0.5: max( 0.5,  0.8) =  0.8 (clipped, no gradient)
    assert out.policy_loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert out.clipfrac.item() == 1.0  # every |ρ - 1| = 0.5 > 0.2
    out.loss.backward()
    # gradient of -A·ρ wrt lp is -A·ρ / 4 where unclipped
    assert torch.allclose(lp.grad, torch.tensor([0.0, 1.5 / 4, -0.5 / 4, 0.0]))
    # approx_kl = ½ mean(log² ρ) = ½ (2 ln²1.5 + 2 ln²0.5) / 4
    want = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4
    assert out.approx_kl.item() == pytest.approx(want, rel=1e-6)


def test_gradient_raises_logprob_of_positive_advantage():
    lp = torch.zeros(2, requires_grad=True)
    out = ppo_clip_loss(lp, torch.zeros(2), torch.tensor([2.0, -2.0]))
    out.loss.backward()
    # descending the loss increases log π where A > 0 and decreases it where A < 0
    assert lp.grad[0] < 0 < lp.grad[1]


def test_advantage_broadcast_over_steps_and_sample_mean():
    lp = torch.zeros(2, 3)
    adv = torch.tensor([1.0, 3.0])
    w = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # mean over 4 counted pairs: -(1+1+1+3)/4 = -1.5; sample_mean: -(1 + 3)/2 = -2
    assert ppo_clip_loss(lp, lp, adv, weight=w).loss.item() == pytest.approx(-1.5)
    assert ppo_clip_loss(
        lp, lp, adv, weight=w, loss_agg="sample_mean"
    ).loss.item() == pytest.approx(-2.0)


def test_kl_term_added_with_beta():
    lp = torch.zeros(3)
    kl = torch.tensor([0.3, 0.6, 0.9])
    out = ppo_clip_loss(lp, lp, torch.zeros(3), kl=kl, kl_beta=0.5)
    assert out.kl.item() == pytest.approx(0.6) and out.loss.item() == pytest.approx(0.3)


def test_gaussian_kl_exact():
    mu = torch.zeros(2, 4)
    ref = torch.tensor([[0.0] * 4, [1.0, 1.0, 0.0, 0.0]])
    std = torch.tensor([1.0, 0.5])
    # sample 1: mean((1,1,0,0)^2) = 0.5; / (2·0.25) = 1.0
    assert torch.allclose(gaussian_kl(mu, ref, std), torch.tensor([0.0, 1.0]))
    assert torch.allclose(gaussian_kl(mu, ref, std, "sum"), torch.tensor([0.0, 4.0]))
    # agrees with torch.distributions (per element, averaged)
    p = torch.distributions.Normal(mu[1], std[1])
    q = torch.distributions.Normal(ref[1], std[1])
    assert torch.allclose(torch.distributions.kl_divergence(p, q).mean(), torch.tensor(1.0))
    # KL = 0 for identical means
    assert torch.equal(gaussian_kl(ref, ref, std), torch.zeros(2))


def test_shape_errors():
    with pytest.raises(SlasError):
        ppo_clip_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3))
    with pytest.raises(SlasError):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2))
