"""Policy loss: PPO-clip surrogate per (sample, trained step), exact Gaussian KL, diagnostics.

DESIGN §3.3. Inputs are per (sample, step) pairs: any shape ``[M]`` or ``[N, S]`` works as long
as all inputs share it; advantages are repeated over the steps of a sample by the caller.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from slas.errors import SlasError

LossAgg = Literal["mean", "sample_mean"]


class LossOutput(NamedTuple):
    """Scalar loss and detached diagnostics (all 0-d tensors)."""

    loss: Tensor  # policy + kl_beta * kl, differentiable
    policy_loss: Tensor  # differentiable
    kl: Tensor  # mean exact KL to the reference (0 when not given), differentiable
    approx_kl: Tensor  # ½·mean((log π_θ − log π_old)²), every reference's diagnostic
    clipfrac: Tensor  # fraction of pairs with |ρ − 1| > clip_range
    ratio_mean: Tensor
    ratio_min: Tensor
    ratio_max: Tensor


def ppo_clip_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    *,
    clip_range: float = 1e-4,
    kl: Tensor | None = None,
    kl_beta: float = 0.0,
    loss_agg: LossAgg = "mean",
    weight: Tensor | None = None,
) -> LossOutput:
    """ℓ = max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) with ρ = exp(log π_θ − log π_old).

    DanceGRPO / Flow-GRPO / DDPO clipped surrogate (ε = 1e-4 in all of them).

    Args:
        log_prob: ``[N, S]`` (or ``[M]``) log π_θ of the recorded transitions, with grad.
        old_log_prob: same shape, recorded at rollout time.
        advantages: same shape (or ``[N]`` with ``[N, S]`` log-probs: broadcast over steps).
        clip_range: ε.
        kl: optional per-pair KL to the reference policy, same shape as ``log_prob``.
        kl_beta: weight of ``kl`` in the loss.
        loss_agg: ``mean`` over all pairs, or ``sample_mean`` (steps within each row of a 2-D
            input, then rows); they differ only when ``weight`` masks unequal step counts.
        weight: optional 0/1 mask of pairs that count, same shape as ``log_prob``.
    """
    if old_log_prob.shape != log_prob.shape:
        raise SlasError(
            f"log_prob {tuple(log_prob.shape)} and old_log_prob "
            f"{tuple(old_log_prob.shape)} must have the same shape"
        )
    if advantages.shape != log_prob.shape:
        advantages = advantages.reshape(advantages.shape + (1,) * (log_prob.ndim - advantages.ndim))
        advantages = advantages.expand_as(log_prob)
    w = torch.ones_like(log_prob) if weight is None else weight.to(log_prob.dtype)
    diff = log_prob - old_log_prob
    ratio = torch.exp(diff)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy = _aggregate(torch.maximum(unclipped, clipped), w, loss_agg)
    kl_term = _aggregate(kl, w, loss_agg) if kl is not None else log_prob.new_zeros(())
    with torch.no_grad():
        mask = w > 0
        r = ratio[mask] if mask.any() else ratio.new_ones(1)
        stats = (
            0.5 * _aggregate(diff.detach() ** 2, w, "mean"),
            _aggregate(((ratio - 1).abs() > clip_range).to(ratio.dtype), w, "mean"),
            r.mean(),
            r.min(),
            r.max(),
        )
    return LossOutput(policy + kl_beta * kl_term, policy, kl_term, *stats)


def gaussian_kl(
    mean: Tensor, ref_mean: Tensor, std: Tensor, reduction: Literal["mean", "sum"] = "mean"
) -> Tensor:
    """Exact KL(N(μ_θ, s²) ‖ N(μ_ref, s²)) = ‖μ_θ − μ_ref‖² / (2s²) per sample, reduced.

    Pref-GRPO's form. Flow-GRPO divides by 2g² without the √|Δσ| of s, i.e. its value is this
    KL times |Δσ| (DESIGN §3.3). ``reduction`` should match the log-prob reduction.

    Args:
        mean: ``[N, *S]`` policy step mean.
        ref_mean: ``[N, *S]`` reference-policy step mean.
        std: ``[N]`` step std (> 0).
    Returns:
        ``[N]``.
    """
    if mean.shape != ref_mean.shape:
        raise SlasError(f"mean {tuple(mean.shape)} and ref_mean {tuple(ref_mean.shape)} differ")
    per = (mean - ref_mean).pow(2).flatten(1)
    per = per.mean(1) if reduction == "mean" else per.sum(1)
    return per / (2 * std.reshape(-1).to(per.dtype) ** 2)


def _aggregate(x: Tensor, w: Tensor, how: LossAgg) -> Tensor:
    if how == "mean" or x.ndim < 2:
        return (x * w).sum() / w.sum().clamp(min=1)
    if how == "sample_mean":
        rows = w.sum(-1)
        per_row = (x * w).sum(-1) / rows.clamp(min=1)
        return (per_row * (rows > 0)).sum() / (rows > 0).sum().clamp(min=1)
    raise SlasError(f"train.loss_agg must be 'mean' or 'sample_mean', got {how!r}")
