"""DDIM-eta step with Gaussian log-probability (DESIGN section 3.1, SD1.x).

Implements the behaviour of DDPO's ``ddim_step_with_logprob`` (copied verbatim into DanceGRPO),
which follows diffusers ``DDIMScheduler.step`` (Song et al. 2021, eq. 12 and eq. 16) and adds the
log-density of the drawn sample. Per-sample timesteps are supported so that a training batch may
mix steps.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from slas.errors import SlasError
from slas.sampling.steps import (
    LogProbReduction,
    StepOutput,
    _bcast,
    _check_step_inputs,
    _finish_step,
)

PredictionType = Literal["epsilon", "v_prediction", "sample"]
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _timesteps(value: int | Tensor, n: int, name: str, device: torch.device) -> Tensor:
    """Int, 0-d or ``[N]`` integer tensor -> ``[N]`` int64 on ``device``."""
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool:
            raise SlasError(f"{name} must be an integer timestep tensor, got dtype {value.dtype}")
        if value.ndim == 0:
            value = value.expand(n)
        elif value.shape != (n,):
            raise SlasError(f"{name} must be an int, a 0-d or a [N] tensor with N={n}; got "
                            f"shape {list(value.shape)}")
        return value.to(device=device, dtype=torch.int64)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SlasError(f"{name} must be an int or an integer tensor, got {type(value).__name__}")
    return torch.full((n,), value, dtype=torch.int64, device=device)


def _alphas(
    t: Tensor, t_prev: Tensor, alphas_cumprod: Tensor, final_alpha_cumprod: float
) -> tuple[Tensor, Tensor]:
    """``alpha_bar_t [N]`` and ``alpha_bar_{t'} [N]`` (``final_alpha_cumprod`` where ``t' < 0``)."""
    if not isinstance(alphas_cumprod, Tensor) or alphas_cumprod.ndim != 1:
        raise SlasError("alphas_cumprod must be a 1-D tensor [T]; build it with "
                        "ddpm_alphas_cumprod()")
    num_train = alphas_cumprod.shape[0]
    if bool(((t < 0) | (t >= num_train) | (t_prev >= t)).any()):
        raise SlasError(f"need t_prev < t and 0 <= t < {num_train}; got t={t.tolist()}, "
                        f"t_prev={t_prev.tolist()}")
    if not 0 < final_alpha_cumprod <= 1:
        raise SlasError(f"final_alpha_cumprod must be in (0, 1], got {final_alpha_cumprod!r}")
    table = alphas_cumprod.to(device=t.device, dtype=torch.float32)
    a_t = table[t]
    a_prev = torch.where(t_prev >= 0, table[t_prev.clamp(min=0)],
                         torch.full_like(a_t, float(final_alpha_cumprod)))
    return a_t, a_prev


def _x0_eps(
    model_output: Tensor, x: Tensor, a_t: Tensor, prediction_type: PredictionType
) -> tuple[Tensor, Tensor]:
    """``(x0_hat, eps_hat)`` from the model output, as diffusers ``DDIMScheduler.step``."""
    sqrt_a = _bcast(torch.sqrt(a_t), x.ndim)
    sqrt_b = _bcast(torch.sqrt(1.0 - a_t), x.ndim)
    if prediction_type == "epsilon":
        return (x - sqrt_b * model_output) / sqrt_a, model_output
    if prediction_type == "sample":
        return model_output, (x - sqrt_a * model_output) / sqrt_b
    if prediction_type == "v_prediction":
        return sqrt_a * x - sqrt_b * model_output, sqrt_a * model_output + sqrt_b * x
    raise SlasError(f"prediction_type must be one of {list(_PREDICTION_TYPES)}, "
                    f"got {prediction_type!r}")


def ddim_step(
    model_output: Tensor,
    x: Tensor,
    t: int | Tensor,
    t_prev: int | Tensor,
    alphas_cumprod: Tensor,
    *,
    eta: float,
    prediction_type: PredictionType,
    final_alpha_cumprod: float = 1.0,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
    logprob_reduction: LogProbReduction = "mean",
) -> StepOutput:
    """DDIM-eta step ``x_t -> x_{t'}`` with its Gaussian log-prob (DDPO / DanceGRPO SD1.x).

    ``x0_hat`` and ``eps_hat`` come from the prediction type (for ``sample`` and
    ``v_prediction`` the implied noise is re-derived, as in diffusers);
    ``sigma_t^2 = eta^2 (1 - a')/(1 - a) (1 - a/a')`` (DDIM eq. 16 scaled by eta),
    ``mean = sqrt(a') x0_hat + sqrt(1 - a' - sigma_t^2) eps_hat``, ``std = sigma_t``, with
    ``a = alpha_bar_t`` and ``a' = alpha_bar_{t'}``. ``x0_hat`` is not clipped (SD1.x schedulers
    use ``clip_sample=False``). ``eta = 0`` is plain DDIM (std 0, log-prob 0, not trainable);
    ``eta = 1`` is the DDPM-like posterior used by DDPO and DanceGRPO.

    Args:
        model_output: ``[N, *S]`` network output (the CFG-combined prediction under guidance).
        x: ``[N, *S]`` current latent ``x_t``.
        t: int, 0-d or ``[N]`` int64 current timesteps in ``[0, T)``.
        t_prev: int, 0-d or ``[N]`` int64 previous timesteps ``< t``; negative means "past the
            last step" and uses ``final_alpha_cumprod``.
        alphas_cumprod: ``[T]`` DDPM cumulative alphas (``ddpm_alphas_cumprod``).
        eta: DDIM eta in [0, 1].
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        final_alpha_cumprod: ``alpha_bar`` used where ``t_prev < 0``; 1.0 matches diffusers'
            ``set_alpha_to_one=True``. SD1.x configs use ``set_alpha_to_one=False``, i.e.
            ``alphas_cumprod[0]`` (which also equals DDPO's clamping of ``t'`` to 0).
        noise: ``[N, *S]`` standard normal draw; excludes ``prev_sample``.
        prev_sample: ``[N, *S]`` recorded ``x_{t'}``; excludes ``noise``.
        logprob_reduction: ``"mean"`` or ``"sum"`` over ``*S``.

    Returns:
        ``StepOutput`` (float32).
    """
    model_output, x = _check_step_inputs(model_output, x, noise, prev_sample)
    if not 0 <= eta <= 1:
        raise SlasError(f"ddim eta must be in [0, 1], got {eta!r} (DDPO/DanceGRPO use 1.0)")
    n = x.shape[0]
    t_n = _timesteps(t, n, "t", x.device)
    t_prev_n = _timesteps(t_prev, n, "t_prev", x.device)
    a_t, a_prev = _alphas(t_n, t_prev_n, alphas_cumprod, final_alpha_cumprod)
    x0_hat, eps_hat = _x0_eps(model_output, x, a_t, prediction_type)
    variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
    std = float(eta) * torch.sqrt(variance)
    # The clamp only absorbs rounding: 1 - a' - sigma_t^2 >= 0 exactly for eta <= 1.
    dir_coef = torch.sqrt(torch.clamp(1.0 - a_prev - std**2, min=0.0))
    mean = _bcast(torch.sqrt(a_prev), x.ndim) * x0_hat + _bcast(dir_coef, x.ndim) * eps_hat
    return _finish_step(mean, std, noise, prev_sample, logprob_reduction)
