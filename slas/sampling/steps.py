"""Flow-matching sampler steps with Gaussian log-probabilities (DESIGN section 3.1).

Convention: ``x_sigma = (1 - sigma)*x0 + sigma*eps``, the model predicts ``v ~ eps - x0``, so
``x0_hat = x - sigma*v`` and ``eps_hat = x + (1 - sigma)*v``; sampling runs sigma from 1 to 0
and ``d_sigma = sigma_next - sigma < 0``.

Every stochastic step takes EITHER ``noise`` (draw ``prev_sample = mean + std*noise``) OR
``prev_sample`` (re-evaluate a recorded transition). The log-prob is always computed from
``prev_sample - mean`` by one code path in float32, so re-evaluating a recorded transition with
unchanged inputs returns the recorded log-prob bit for bit.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from slas.errors import SlasError

LogProbReduction = Literal["mean", "sum"]
FlowNoise = Literal["dance", "flow"]
ScheduleValue = float | Tensor

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class StepOutput(NamedTuple):
    """One sampler transition ``x_i -> x_{i+1}``.

    Attributes:
        prev_sample: ``[N, *S]`` float32 next sample ``x_{i+1}``.
        log_prob: ``[N]`` float32 ``log N(prev_sample; mean, std^2)`` reduced over ``*S``
            (0 where ``std == 0``).
        mean: ``[N, *S]`` float32 transition mean.
        std: ``[N]`` float32 per-sample scalar std (broadcast over ``*S``).
    """

    prev_sample: Tensor
    log_prob: Tensor
    mean: Tensor
    std: Tensor


def gaussian_log_prob(
    x: Tensor, mean: Tensor, std: ScheduleValue, reduction: LogProbReduction = "mean"
) -> Tensor:
    """Per-sample log-density of an isotropic Gaussian, reduced over non-batch dims.

    Per element ``-(x - mean)^2 / (2 s^2) - log s - 0.5 log(2 pi)``, then the mean (default; what
    DanceGRPO, Flow-GRPO and DDPO do, which is why their PPO clip ranges are ~1e-4) or the sum over
    all non-batch elements. A sample with ``s == 0`` is a deterministic transition with no
    density; its log-prob is returned as 0 and such a step carries no policy gradient (do not
    train on it).

    Args:
        x: ``[N, *S]`` sample.
        mean: ``[N, *S]`` Gaussian mean.
        std: ``[N]`` per-sample std, or a scalar (float or 0-d tensor), ``>= 0``.
        reduction: ``"mean"`` or ``"sum"`` over ``*S``.

    Returns:
        ``[N]`` float32 log-probabilities.
    """
    if reduction not in ("mean", "sum"):
        raise SlasError(f"logprob_reduction must be 'mean' or 'sum', got {reduction!r}")
    if not isinstance(x, Tensor) or not isinstance(mean, Tensor) or x.shape != mean.shape:
        raise SlasError(f"x and mean must be tensors of the same shape [N, *S]; got "
                        f"{_shape(x)} and {_shape(mean)}")
    if x.ndim < 1:
        raise SlasError("x must have a batch dimension [N, *S]; got a 0-d tensor")
    n = x.shape[0]
    s = _per_sample(std, n, "std", x.device)
    if bool((s < 0).any()):
        raise SlasError("std must be >= 0 for every sample")
    diff = x.float().reshape(n, -1) - mean.float().reshape(n, -1)
    return _log_prob_from_diff(diff, s, reduction)


def _log_prob_from_diff(diff: Tensor, std: Tensor, reduction: LogProbReduction) -> Tensor:
    """``diff [N, D]`` float32, ``std [N]`` float32 -> ``[N]``; the one log-prob code path."""
    positive = std > 0
    s = torch.where(positive, std, torch.ones_like(std)).unsqueeze(1)
    elem = -(diff**2) / (2.0 * s**2) - torch.log(s) - _HALF_LOG_2PI
    reduced = elem.mean(dim=1) if reduction == "mean" else elem.sum(dim=1)
    return torch.where(positive, reduced, torch.zeros_like(reduced))


def _shape(t: object) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _per_sample(value: ScheduleValue, n: int, name: str, device: torch.device) -> Tensor:
    """Float, 0-d or ``[N]`` tensor -> ``[N]`` float32 on ``device``."""
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return value.detach().to(device=device, dtype=torch.float32).expand(n)
        if value.shape == (n,):
            return value.detach().to(device=device, dtype=torch.float32)
        raise SlasError(f"{name} must be a float, a 0-d tensor or a [N] tensor with N={n}; "
                        f"got shape {list(value.shape)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SlasError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    return torch.full((n,), float(value), dtype=torch.float32, device=device)


def _bcast(per_sample: Tensor, ndim: int) -> Tensor:
    """``[N]`` -> ``[N, 1, ..., 1]`` with ``ndim`` dims."""
    return per_sample.reshape(per_sample.shape[0], *([1] * (ndim - 1)))


def _check_step_inputs(
    model_output: Tensor, x: Tensor, noise: Tensor | None, prev_sample: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Validate the shared step inputs; return ``(model_output, x)`` as float32.

    Exactly one of ``noise`` / ``prev_sample`` must be given, every tensor shaped like ``x``.
    """
    if (noise is None) == (prev_sample is None):
        raise SlasError("pass exactly one of noise= (to draw a transition) or prev_sample= "
                        "(to re-evaluate a recorded one)")
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise SlasError(f"x must be a tensor [N, *S], got {_shape(x)}")
    for name, t in (("model output", model_output), ("noise", noise),
                    ("prev_sample", prev_sample)):
        if t is not None and (not isinstance(t, Tensor) or t.shape != x.shape):
            raise SlasError(f"{name} must have the shape of x {list(x.shape)}, got {_shape(t)}")
    return model_output.float(), x.float()


def _finish_step(
    mean: Tensor, std: Tensor, noise: Tensor | None, prev_sample: Tensor | None,
    reduction: LogProbReduction,
) -> StepOutput:
    """Draw or take ``prev_sample``, then score it; ``mean [N, *S]``, ``std [N]`` float32."""
    if reduction not in ("mean", "sum"):
        raise SlasError(f"logprob_reduction must be 'mean' or 'sum', got {reduction!r}")
    if prev_sample is None:
        prev_sample = mean + _bcast(std, mean.ndim) * noise.to(device=mean.device,
                                                               dtype=torch.float32)
    else:
        prev_sample = prev_sample.to(device=mean.device, dtype=torch.float32)
    n = mean.shape[0]
    # Always from (prev_sample - mean): both modes share every floating-point operation.
    diff = prev_sample.reshape(n, -1) - mean.reshape(n, -1)
    return StepOutput(prev_sample, _log_prob_from_diff(diff, std, reduction), mean, std)


def _flow_sigmas(
    x: Tensor, sigma: ScheduleValue, sigma_next: ScheduleValue
) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    s = _per_sample(sigma, n, "sigma", x.device)
    s_next = _per_sample(sigma_next, n, "sigma_next", x.device)
    if bool(((s <= 0) | (s > 1) | (s_next < 0) | (s_next >= s)).any()):
        raise SlasError(f"need 0 <= sigma_next < sigma <= 1 for every sample (no step from "
                        f"sigma=0); got sigma={s.tolist()}, sigma_next={s_next.tolist()}")
    return s, s_next


def _flow_diffusion_coefficient(
    s: Tensor, noise_type: FlowNoise, eta: float, sigma_one_denominator: float | None
) -> Tensor:
    """``g`` per sample: ``eta`` (dance) or ``eta*sqrt(sigma/(1-sigma))`` (flow)."""
    if noise_type == "dance":
        return torch.full_like(s, float(eta))
    if noise_type != "flow":
        raise SlasError(f"noise_type must be one of ['dance', 'flow'], got {noise_type!r}")
    at_one = s == 1
    if sigma_one_denominator is None:
        if bool(at_one.any()):
            raise SlasError("flow noise at sigma=1 needs sigma_one_denominator (Flow-GRPO uses "
                            "sigmas[1], the second value of the schedule)")
        denom_sigma = s
    else:
        if not 0 <= sigma_one_denominator < 1:
            raise SlasError(f"sigma_one_denominator must be in [0, 1), got "
                            f"{sigma_one_denominator!r}; pass sigmas[1]")
        denom_sigma = torch.where(at_one, torch.full_like(s, sigma_one_denominator), s)
    return float(eta) * torch.sqrt(s / (1.0 - denom_sigma))


def flow_sde_step(
    v: Tensor,
    x: Tensor,
    sigma: ScheduleValue,
    sigma_next: ScheduleValue,
    *,
    noise_type: FlowNoise,
    eta: float,
    sigma_one_denominator: float | None = None,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
    logprob_reduction: LogProbReduction = "mean",
) -> StepOutput:
    """Euler-Maruyama step of the reverse flow SDE with its Gaussian log-prob.

    DESIGN 3.1 (shared by DanceGRPO ``flux_step`` and Flow-GRPO ``sde_step_with_logprob``):
    ``mu = x + d_sigma*[v + g^2/(2 sigma)*eps_hat]``, ``s = g*sqrt(|d_sigma|)``,
    ``prev = mu + s*z``. ``noise_type="dance"``: ``g = eta`` (DanceGRPO FLUX: 0.3).
    ``noise_type="flow"``: ``g = eta*sqrt(sigma/(1 - sigma))`` (Flow-GRPO ``noise_level``: 0.7
    SD3, 0.9 FLUX), where at ``sigma == 1`` the denominator uses ``sigma_one_denominator``
    (Flow-GRPO passes ``sigmas[1]``). ``eta = 0`` gives the deterministic Euler (ODE) step.

    Args:
        v: ``[N, *S]`` predicted velocity ``eps - x0``.
        x: ``[N, *S]`` current sample ``x_i``.
        sigma: float, 0-d or ``[N]``; current sigma in (0, 1].
        sigma_next: float, 0-d or ``[N]``; next sigma in [0, sigma).
        noise_type: ``"dance"`` or ``"flow"``.
        eta: noise scale ``>= 0``.
        sigma_one_denominator: sigma used in ``1 - sigma`` when ``sigma == 1`` (flow only).
        noise: ``[N, *S]`` standard normal draw; excludes ``prev_sample``.
        prev_sample: ``[N, *S]`` recorded ``x_{i+1}``; excludes ``noise``.
        logprob_reduction: ``"mean"`` or ``"sum"`` over ``*S``.

    Returns:
        ``StepOutput`` (float32).
    """
    v, x = _check_step_inputs(v, x, noise, prev_sample)
    if not eta >= 0:
        raise SlasError(f"eta must be >= 0, got {eta!r}")
    s, s_next = _flow_sigmas(x, sigma, sigma_next)
    g = _flow_diffusion_coefficient(s, noise_type, eta, sigma_one_denominator)
    d_sigma = s_next - s
    eps_hat = x + _bcast(1.0 - s, x.ndim) * v
    drift = v + _bcast(g**2 / (2.0 * s), x.ndim) * eps_hat
    mean = x + _bcast(d_sigma, x.ndim) * drift
    std = g * torch.sqrt(-d_sigma)
    return _finish_step(mean, std, noise, prev_sample, logprob_reduction)


def cps_step(
    v: Tensor,
    x: Tensor,
    sigma: ScheduleValue,
    sigma_next: ScheduleValue,
    *,
    eta: float,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
    logprob_reduction: LogProbReduction = "mean",
) -> StepOutput:
    """Coefficient-preserving sampling step (Flow-GRPO ``sde_type="cps"``).

    ``s = sigma_next*sin(eta*pi/2)``,
    ``mu = x0_hat*(1 - sigma_next) + eps_hat*sqrt(sigma_next^2 - s^2)``, so the noise and signal
    coefficients of ``prev`` keep the flow-matching form. The log-prob here is the proper
    Gaussian density (``gaussian_log_prob``). Flow-GRPO's CPS instead uses
    ``-mean((prev - mu)^2)``, dropping the constants and the ``1/(2 s^2)`` factor, so its PPO
    ratios (and clip ranges) are on a different scale from these. The last step
    (``sigma_next = 0``) is deterministic: std 0, log-prob 0.

    Args:
        v: ``[N, *S]`` predicted velocity.
        x: ``[N, *S]`` current sample.
        sigma: float, 0-d or ``[N]``; current sigma in (0, 1].
        sigma_next: float, 0-d or ``[N]``; next sigma in [0, sigma).
        eta: Flow-GRPO ``noise_level`` in [0, 1] (0.8 in its fast/CPS configs).
        noise: ``[N, *S]`` standard normal draw; excludes ``prev_sample``.
        prev_sample: ``[N, *S]`` recorded ``x_{i+1}``; excludes ``noise``.
        logprob_reduction: ``"mean"`` or ``"sum"`` over ``*S``.

    Returns:
        ``StepOutput`` (float32).
    """
    v, x = _check_step_inputs(v, x, noise, prev_sample)
    if not 0 <= eta <= 1:
        raise SlasError(f"cps eta must be in [0, 1], got {eta!r}")
    s, s_next = _flow_sigmas(x, sigma, sigma_next)
    std = s_next * math.sin(float(eta) * math.pi / 2.0)
    x0_hat = x - _bcast(s, x.ndim) * v
    eps_hat = x + _bcast(1.0 - s, x.ndim) * v
    eps_coef = torch.sqrt(torch.clamp(s_next**2 - std**2, min=0.0))  # clamp: rounding at eta=1
    mean = _bcast(1.0 - s_next, x.ndim) * x0_hat + _bcast(eps_coef, x.ndim) * eps_hat
    return _finish_step(mean, std, noise, prev_sample, logprob_reduction)


def flow_ode_step(v: Tensor, x: Tensor, sigma: ScheduleValue, sigma_next: ScheduleValue) -> Tensor:
    """Deterministic Euler step ``x + (sigma_next - sigma)*v`` (the evaluation sampler).

    Args:
        v: ``[N, *S]`` predicted velocity.
        x: ``[N, *S]`` current sample.
        sigma: float, 0-d or ``[N]``; current sigma in (0, 1].
        sigma_next: float, 0-d or ``[N]``; next sigma in [0, sigma).

    Returns:
        ``[N, *S]`` float32 next sample.
    """
    if not isinstance(x, Tensor) or x.ndim < 1 or not isinstance(v, Tensor) or v.shape != x.shape:
        raise SlasError(f"v and x must be tensors of the same shape [N, *S]; got {_shape(v)} "
                        f"and {_shape(x)}")
    x = x.float()
    s, s_next = _flow_sigmas(x, sigma, sigma_next)
    return x + _bcast(s_next - s, x.ndim) * v.float()
