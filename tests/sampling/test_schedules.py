import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from slas.errors import SlasError
from slas.sampling import (
    ddim_prev_timestep,
    ddim_timesteps,
    ddpm_alphas_cumprod,
    exponential_shift_sigmas,
    linear_sigmas,
    resolution_shift_mu,
    shift_sigmas,
)


def test_linear_sigmas_values():
    s = linear_sigmas(4)
    assert s.dtype == torch.float32
    assert torch.equal(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_shift_sigmas_hand_worked():
    # s*sig/(1+(s-1)*sig) with s=3: 0.5 -> 1.5/2 = 0.75; 0.25 -> 0.75/1.5 = 0.5;
    # 0.75 -> 2.25/2.5 = 0.9; endpoints fixed.
    out = shift_sigmas(linear_sigmas(4), 3.0)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    assert out[0] == 1.0 and out[-1] == 0.0


def test_shift_sigmas_identity_and_monotone():
    s = linear_sigmas(16)
    assert torch.equal(shift_sigmas(s, 1.0), s)
    for shift in (0.5, 3.0, 7.0):
        out = shift_sigmas(s, shift)
        assert bool((out[1:] < out[:-1]).all())
        assert out[0] == 1.0 and out[-1] == 0.0


def test_shift_sigmas_matches_diffusers_static_shift():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sigmas = np.linspace(1.0, 1.0 / 16, 16)
    sched.set_timesteps(sigmas=sigmas)
    ours = shift_sigmas(torch.tensor(np.append(sigmas, 0.0), dtype=torch.float32), 3.0)
    torch.testing.assert_close(ours, sched.sigmas.float(), rtol=1e-6, atol=1e-7)


def test_resolution_shift_mu_hand_worked():
    # slope = 0.65/3840; mu(256) = 0.5, mu(4096) = 1.15, mu(2176) = midpoint 0.825
    assert resolution_shift_mu(256) == pytest.approx(0.5)
    assert resolution_shift_mu(4096) == pytest.approx(1.15)
    assert resolution_shift_mu(2176) == pytest.approx(0.825)
    # FLUX at 720x720: (720/16)^2 = 2025 tokens -> 0.5 + 1769*0.65/3840 = 0.79944...
    assert resolution_shift_mu(2025) == pytest.approx(0.5 + 1769 * 0.65 / 3840)


@pytest.mark.parametrize("num_steps,seq_len", [(16, 2025), (28, 4096), (4, 256)])
def test_exponential_shift_matches_diffusers(num_steps, seq_len):
    mu = resolution_shift_mu(seq_len)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps)  # what FluxPipeline passes
    sched.set_timesteps(sigmas=sigmas, mu=mu)
    ours = exponential_shift_sigmas(linear_sigmas(num_steps), mu)
    torch.testing.assert_close(ours, sched.sigmas.float(), rtol=1e-6, atol=1e-7)


def test_exponential_shift_zero_and_equivalence():
    s = linear_sigmas(8)
    out = exponential_shift_sigmas(s, math.log(3.0))
    assert out[-1] == 0.0 and not torch.isnan(out).any()
    # e^mu = 3 is the static shift 3
    torch.testing.assert_close(out, shift_sigmas(s, 3.0))


def test_ddpm_alphas_cumprod_hand_worked_and_diffusers():
    a = ddpm_alphas_cumprod()
    assert a.shape == (1000,) and a.dtype == torch.float32
    # alpha_bar_0 = 1 - beta_start = 0.99915
    assert a[0].item() == pytest.approx(0.99915, rel=1e-7)
    # alpha_bar_1 = 0.99915 * (1 - beta_1), beta_1 = (sqrt(b0) + (sqrt(b1)-sqrt(b0))/999)^2
    b1 = (0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) / 999) ** 2
    assert a[1].item() == pytest.approx(0.99915 * (1 - b1), rel=1e-7)
    for schedule in ("scaled_linear", "linear"):
        ref = DDIMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
        # diffusers accumulates in float32; ours in float64 (measured gap < 1e-6 relative)
        torch.testing.assert_close(ddpm_alphas_cumprod(beta_schedule=schedule),
                                   ref.alphas_cumprod, rtol=2e-6, atol=0)


@pytest.mark.parametrize("num_steps", [1, 7, 10, 50, 500])
def test_ddim_timesteps_match_diffusers(num_steps):
    sched = DDIMScheduler(steps_offset=1)
    sched.set_timesteps(num_steps)
    ours = ddim_timesteps(num_steps)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, sched.timesteps)


def test_ddim_timesteps_hand_worked_and_prev():
    # 50 steps: ratio 20, offset 1 -> 981, 961, ..., 1
    ts = ddim_timesteps(50)
    assert ts[0] == 981 and ts[1] == 961 and ts[-1] == 1
    assert ddim_prev_timestep(981, 50) == 961
    assert ddim_prev_timestep(1, 50) == -19
    assert torch.equal(ddim_prev_timestep(ts, 50), ts - 20)


def test_schedule_validation():
    with pytest.raises(SlasError, match="num_steps"):
        linear_sigmas(0)
    with pytest.raises(SlasError, match="shift"):
        shift_sigmas(linear_sigmas(4), 0.0)
    with pytest.raises(SlasError, match=r"\[0, 1\]"):
        shift_sigmas(torch.tensor([1.5, 0.0]), 3.0)
    with pytest.raises(SlasError, match="beta_schedule"):
        ddpm_alphas_cumprod(beta_schedule="cosine")
    with pytest.raises(SlasError, match="exceed"):
        ddim_timesteps(2000)
    with pytest.raises(SlasError, match="steps_offset"):
        ddim_timesteps(1000)  # 999*1 + 1 = 1000 is past the last table index 999
