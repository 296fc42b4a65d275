"""Rollouts: run a backbone with a stochastic step over a batch, recording a Trajectory.

Noise is a pure function of ``(seed, iteration, global sample index, step)`` (DESIGN §6), so a
rollout does not depend on the number of processes or on the micro-batch size. The step rule is
chosen by the backbone's prediction type (flow -> flow SDE / CPS, DDPM types -> DDIM-η), never by
the backbone's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from slas.backbones.base import Backbone, Conditioning
from slas.config import SampleConfig
from slas.errors import SlasError
from slas.sampling.ddim import ddim_step
from slas.sampling.schedules import (
    ddim_timesteps,
    exponential_shift_sigmas,
    linear_sigmas,
    resolution_shift_mu,
    shift_sigmas,
)
from slas.sampling.steps import StepOutput, cps_step, flow_sde_step

_MASK64 = (1 << 64) - 1
INITIAL_NOISE_STEP = -1


class Trajectory(NamedTuple):
    """One rollout round on this process.

    Attributes:
        latents: ``[N, T+1, *S]`` float32; ``latents[:, 0]`` is the initial noise and
            ``latents[:, i+1]`` the sample after step i.
        log_probs: ``[N, T]`` log π_old of each recorded transition.
        times: ``[T+1]`` sampler times: sigmas (flow) or DDIM timesteps with ``-1`` last (DDPM).
        prompt_ids: ``[N]`` index of each sample's prompt in the round's prompt list.
        group_ids: ``[N]`` global group label (one per prompt of the round).
        sample_ids: ``[N]`` global sample index, which seeds the sample's noise.
    """

    latents: Tensor
    log_probs: Tensor
    times: Tensor
    prompt_ids: Tensor
    group_ids: Tensor
    sample_ids: Tensor


def _mix(*values: int) -> int:
    """SplitMix64-style hash of integers -> a 63-bit generator seed."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h >> 1


def sample_noise(
    shape: Sequence[int],
    seed: int,
    iteration: int,
    ids: Tensor,
    step: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Standard normal ``[len(ids), *shape]``; row k depends on (seed, iteration, ids[k], step)."""
    rows = []
    for k in ids.tolist():
        gen = torch.Generator().manual_seed(_mix(seed, iteration, k, step))
        rows.append(torch.randn(tuple(shape), generator=gen))
    return torch.stack(rows).to(device)


def make_times(backbone: Backbone, cfg: SampleConfig) -> Tensor:
    """Sampler times ``[T+1]`` for the backbone's prediction type (see :class:`Trajectory`)."""
    if backbone.prediction_type == "flow":
        sigmas = linear_sigmas(cfg.num_steps)
        if cfg.schedule == "shift":
            return shift_sigmas(sigmas, cfg.shift)
        if cfg.schedule == "resolution":
            seq_len = int(torch.tensor(backbone.latent_shape[1:]).prod()) // 4
            return exponential_shift_sigmas(sigmas, resolution_shift_mu(seq_len))
        return sigmas
    if backbone.alphas_cumprod is None:
        raise SlasError(
            f"backbone with prediction_type={backbone.prediction_type!r} has no "
            "alphas_cumprod; a DDPM-type backbone must provide its schedule"
        )
    steps = ddim_timesteps(cfg.num_steps, backbone.alphas_cumprod.shape[0])
    return torch.cat([steps, torch.tensor([-1])]).to(torch.float64)


def transition(
    backbone: Backbone,
    cfg: SampleConfig,
    times: Tensor,
    step: Tensor,
    x: Tensor,
    model_output: Tensor,
    *,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> StepOutput:
    """One step ``x_i -> x_{i+1}`` for per-sample step indices ``step`` ``[N]``.

    Flow backbones use ``cfg.sde`` (DanceGRPO ``dance``, Flow-GRPO ``flow``, or ``cps``);
    DDPM-type backbones use DDIM-η with ``final_alpha_cumprod = alphas_cumprod[0]`` (SD1.x's
    ``set_alpha_to_one=False``). Exactly one of ``noise`` / ``prev_sample`` is given.
    """
    common = dict(noise=noise, prev_sample=prev_sample, logprob_reduction=cfg.logprob_reduction)
    now, nxt = times[step], times[step + 1]
    if backbone.prediction_type == "flow":
        now, nxt = now.float(), nxt.float()
        if cfg.sde == "cps":
            return cps_step(model_output, x, now, nxt, eta=cfg.eta, **common)
        return flow_sde_step(
            model_output,
            x,
            now,
            nxt,
            noise_type=cfg.sde,
            eta=cfg.eta,
            sigma_one_denominator=float(times[1]),
            **common,
        )
    table = backbone.alphas_cumprod
    return ddim_step(
        model_output,
        x,
        now.long(),
        nxt.long(),
        table,
        eta=cfg.eta,
        prediction_type=backbone.prediction_type,
        final_alpha_cumprod=float(table[0]),
        **common,
    )


def model_time(times: Tensor, step: Tensor) -> Tensor:
    """The ``t`` passed to ``Backbone.predict`` for step indices ``[N]``."""
    return times[step].float()


def rollout(
    backbone: Backbone,
    cond: Conditioning,
    cfg: SampleConfig,
    *,
    times: Tensor,
    prompt_ids: Tensor,
    group_ids: Tensor,
    sample_ids: Tensor,
    seed: int,
    iteration: int,
    sde_steps: range | None = None,
    on_chunk: Callable[[int, int, Tensor], None] | None = None,
) -> Trajectory:
    """Sample ``N`` trajectories in micro-batches of ``cfg.micro_batch_size`` under inference mode.

    Args:
        backbone: any :class:`Backbone`.
        cond: conditioning of the round's prompts, rows ``[P, ...]`` (encoded once per batch).
        cfg: sampling settings.
        times: ``[T+1]`` from :func:`make_times`.
        prompt_ids: ``[N]`` row of each sample in ``cond``.
        group_ids: ``[N]``; with ``cfg.same_initial_noise`` the group shares its initial noise.
        sample_ids: ``[N]`` global sample indices (seed the noise).
        seed, iteration: the run seed and training iteration.
        sde_steps: steps that use the SDE (MixGRPO window); the others take the deterministic
            step (eta = 0, log-prob 0). ``None``: every step is stochastic.
        on_chunk: called as ``on_chunk(start, end, x_T [end-start, *S])`` after each
            micro-batch (e.g. to start scoring it while the next one is sampled).
    """
    ode = dataclasses.replace(cfg, eta=0.0, sde_window=0)
    chunks_lat, chunks_lp = [], []
    n, mb = sample_ids.numel(), cfg.micro_batch_size
    device = times.device
    with torch.inference_mode():
        for start in range(0, n, mb):
            idx = slice(start, min(start + mb, n))
            init_ids = group_ids[idx] if cfg.same_initial_noise else sample_ids[idx]
            x = sample_noise(
                backbone.latent_shape, seed, iteration, init_ids, INITIAL_NOISE_STEP, device
            )
            c = cond.select(prompt_ids[idx])
            lat, lps = [x], []
            for i in range(cfg.num_steps):
                step = torch.full((x.shape[0],), i, dtype=torch.long, device=device)
                out = backbone.predict(x, model_time(times, step), c, cfg.guidance_scale)
                if sde_steps is None or i in sde_steps:
                    z = sample_noise(backbone.latent_shape, seed, iteration, sample_ids[idx], i,
                                     device)
                    res = transition(backbone, cfg, times, step, x, out, noise=z)
                else:
                    res = transition(backbone, ode, times, step, x, out, noise=torch.zeros_like(x))
                x = res.prev_sample
                lat.append(x)
                lps.append(res.log_prob)
            chunks_lat.append(torch.stack(lat, 1))
            chunks_lp.append(torch.stack(lps, 1))
            if on_chunk is not None:
                on_chunk(idx.start, idx.stop, x)
    return Trajectory(
        torch.cat(chunks_lat).clone(),
        torch.cat(chunks_lp).clone(),
        times,
        prompt_ids,
        group_ids,
        sample_ids,
    )
