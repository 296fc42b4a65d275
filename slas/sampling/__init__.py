"""Sampler schedules and stochastic steps with log-probabilities (DESIGN section 3.1)."""

from slas.sampling.ddim import PredictionType, ddim_step
from slas.sampling.schedules import (
    ddim_prev_timestep,
    ddim_timesteps,
    ddpm_alphas_cumprod,
    exponential_shift_sigmas,
    linear_sigmas,
    resolution_shift_mu,
    shift_sigmas,
)
from slas.sampling.steps import (
    FlowNoise,
    LogProbReduction,
    StepOutput,
    cps_step,
    flow_ode_step,
    flow_sde_step,
    gaussian_log_prob,
)

__all__ = [
    "FlowNoise",
    "LogProbReduction",
    "PredictionType",
    "StepOutput",
    "cps_step",
    "ddim_prev_timestep",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_alphas_cumprod",
    "exponential_shift_sigmas",
    "flow_ode_step",
    "flow_sde_step",
    "gaussian_log_prob",
    "linear_sigmas",
    "resolution_shift_mu",
    "shift_sigmas",
]
