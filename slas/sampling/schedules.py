"""Noise schedules: flow-matching sigmas (with time shifts) and DDPM/DDIM timesteps.

All functions are pure. Flow schedules run sigma from 1 (pure noise) to 0 (data); DDIM timesteps
are integer indices into a DDPM ``alphas_cumprod`` table, in descending order.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from slas.errors import SlasError

BetaSchedule = Literal["scaled_linear", "linear"]


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SlasError(f"{name} must be a positive integer, got {value!r}; pass e.g. {name}=16")


def _check_sigmas(sigmas: Tensor, name: str = "sigmas") -> Tensor:
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1:
        raise SlasError(f"{name} must be a 1-D tensor, got {type(sigmas).__name__}; "
                        f"build it with linear_sigmas(num_steps)")
    if bool(((sigmas < 0) | (sigmas > 1)).any()):
        raise SlasError(f"{name} must lie in [0, 1]; got min {sigmas.min().item():.4g} "
                        f"max {sigmas.max().item():.4g}")
    return sigmas


def linear_sigmas(num_steps: int) -> Tensor:
    """Evenly spaced flow-matching sigmas ``linspace(1, 0, num_steps + 1)``.

    Args:
        num_steps: number of sampler steps (>= 1).

    Returns:
        ``[num_steps + 1]`` float32, descending, first 1 and last 0.
    """
    _check_positive_int(num_steps, "num_steps")
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64).float()


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """SD3 time shift ``sigma' = s*sigma / (1 + (s - 1)*sigma)``.

    This is the fixed (resolution-independent) shift that DanceGRPO's FLUX training applies to
    ``t = linspace(1, 0, N + 1)`` with ``s = 3`` (its ``sd3_time_shift``); ``shift = 1`` is the
    identity. Endpoints 0 and 1 are fixed points and the map is strictly increasing for ``s > 0``.

    Args:
        sigmas: ``[K]`` values in [0, 1].
        shift: ``s > 0``.

    Returns:
        ``[K]`` float32 shifted sigmas.
    """
    if not shift > 0 or not math.isfinite(shift):
        raise SlasError(f"shift must be a finite number > 0, got {shift!r}; DanceGRPO FLUX uses 3")
    s = _check_sigmas(sigmas).double()
    return (shift * s / (1.0 + (shift - 1.0) * s)).float()


def resolution_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Resolution-dependent shift ``mu`` of FLUX (diffusers ``FluxPipeline`` ``calculate_shift``).

    ``mu`` is linear in the number of latent tokens, ``base_shift`` at ``base_seq_len`` and
    ``max_shift`` at ``max_seq_len`` (linear extrapolation outside that range).

    Args:
        image_seq_len: number of packed latent tokens (FLUX: (H/16)*(W/16)).
        base_seq_len: token count where ``mu = base_shift``.
        max_seq_len: token count where ``mu = max_shift``.
        base_shift: ``mu`` at ``base_seq_len``.
        max_shift: ``mu`` at ``max_seq_len``.

    Returns:
        ``mu`` as a Python float.
    """
    _check_positive_int(image_seq_len, "image_seq_len")
    if max_seq_len == base_seq_len:
        raise SlasError("max_seq_len must differ from base_seq_len (defaults 4096 and 256)")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(image_seq_len * slope + (base_shift - slope * base_seq_len))


def exponential_shift_sigmas(sigmas: Tensor, mu: float) -> Tensor:
    """Exponential time shift ``sigma' = e^mu / (e^mu + (1/sigma - 1))``.

    diffusers ``FlowMatchEulerDiscreteScheduler`` with ``use_dynamic_shifting=True`` and
    ``time_shift_type="exponential"`` (exponent 1). It equals ``shift_sigmas`` with
    ``shift = e^mu``; written here as ``e^mu*sigma / (e^mu*sigma + 1 - sigma)`` so that
    ``sigma = 0`` maps to 0 without a division by zero.

    Args:
        sigmas: ``[K]`` values in [0, 1].
        mu: shift exponent, e.g. from ``resolution_shift_mu``.

    Returns:
        ``[K]`` float32 shifted sigmas.
    """
    if not math.isfinite(mu):
        raise SlasError(f"mu must be finite, got {mu!r}; compute it with resolution_shift_mu")
    s = _check_sigmas(sigmas).double()
    e = math.exp(mu)
    return (e * s / (e * s + (1.0 - s))).float()


def ddpm_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: BetaSchedule = "scaled_linear",
) -> Tensor:
    """Cumulative products ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` of a DDPM beta schedule.

    ``scaled_linear`` (Stable Diffusion 1.x): ``beta = linspace(sqrt(b0), sqrt(b1), T)^2``;
    ``linear``: ``beta = linspace(b0, b1, T)`` (diffusers ``DDIMScheduler`` beta schedules).
    Computed in float64 and returned as float32.

    Args:
        num_train_timesteps: T, length of the table.
        beta_start: beta at t = 0.
        beta_end: beta at t = T - 1.
        beta_schedule: ``"scaled_linear"`` or ``"linear"``.

    Returns:
        ``[T]`` float32, strictly decreasing in (0, 1).
    """
    _check_positive_int(num_train_timesteps, "num_train_timesteps")
    if not 0 < beta_start <= beta_end < 1:
        raise SlasError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                        f"beta_end={beta_end}; SD1.x uses 0.00085 and 0.012")
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                               dtype=torch.float64) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise SlasError(f"beta_schedule must be one of ['linear', 'scaled_linear'], "
                        f"got {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).float()


def ddim_timesteps(
    num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1
) -> Tensor:
    """DDIM timesteps with "leading" spacing, as diffusers ``DDIMScheduler.set_timesteps``.

    ``t_k = k * (T // num_steps) + steps_offset`` for ``k = num_steps-1, ..., 0`` (SD1.x:
    ``steps_offset = 1``, so 50 steps give 981, 961, ..., 1).

    Args:
        num_steps: number of sampler steps, ``1 <= num_steps <= T``.
        num_train_timesteps: T.
        steps_offset: added to every timestep.

    Returns:
        ``[num_steps]`` int64, descending.
    """
    _check_positive_int(num_steps, "num_steps")
    _check_positive_int(num_train_timesteps, "num_train_timesteps")
    if num_steps > num_train_timesteps:
        raise SlasError(f"num_steps ({num_steps}) must not exceed num_train_timesteps "
                        f"({num_train_timesteps})")
    step_ratio = num_train_timesteps // num_steps
    ts = torch.arange(num_steps - 1, -1, -1, dtype=torch.int64) * step_ratio + steps_offset
    if int(ts[0]) >= num_train_timesteps or steps_offset < 0:
        raise SlasError(f"steps_offset={steps_offset} puts a timestep outside "
                        f"[0, {num_train_timesteps - 1}]; SD1.x uses steps_offset=1")
    return ts


def ddim_prev_timestep(
    t: int | Tensor, num_steps: int, num_train_timesteps: int = 1000
) -> int | Tensor:
    """Previous DDIM timestep ``t' = t - T // num_steps`` (negative after the last step).

    A negative result means "use the final alpha" (see ``ddim_step``'s ``final_alpha_cumprod``).

    Args:
        t: int or ``[N]`` int64 current timesteps.
        num_steps: number of sampler steps.
        num_train_timesteps: T.

    Returns:
        Same type as ``t``.
    """
    _check_positive_int(num_steps, "num_steps")
    _check_positive_int(num_train_timesteps, "num_train_timesteps")
    return t - num_train_timesteps // num_steps
