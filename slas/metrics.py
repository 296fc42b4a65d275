"""Pure functions behind the trainer's logged numbers and its learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from slas.advantages import finite_group_mask
from slas.config import TrainConfig
from slas.losses import LossOutput


def advantage_metrics(rewards: Tensor, groups: Tensor, adv: Tensor, names: Sequence[str],
                      weights: Sequence[float]) -> dict[str, float]:
    """Reward and advantage statistics of one global batch.

    Args:
        rewards: ``[K, N]`` one row per reward (NaN/inf allowed: such groups are dropped).
        groups: ``[N]`` group ids.
        adv: ``[N]`` the advantages used.
        names: the K reward names; weights: their K weights.

    Returns:
        ``reward/<name>`` (mean of its finite values), ``reward/mean`` (weighted sum over the
        finite groups), ``reward/nonfinite_groups``, ``reward/group_std`` (mean of the per-group
        unbiased stds) and ``reward/batch_std`` of the weighted sum, and ``adv/*``.
    """
    metrics: dict[str, float] = {}
    total = torch.zeros(rewards.shape[1], dtype=torch.float64)
    for k, name in enumerate(names):
        r = rewards[k].double()
        ok = torch.isfinite(r)
        metrics[f"reward/{name}"] = float(r[ok].mean()) if ok.any() else math.nan
        total += weights[k] * torch.nan_to_num(r)
    finite = finite_group_mask(rewards.sum(0), groups)
    metrics["reward/mean"] = float(total[finite].mean()) if finite.any() else math.nan
    metrics["reward/nonfinite_groups"] = float(groups[~finite].unique().numel())
    g_std = [total[groups == g].std() for g in groups[finite].unique()]
    metrics["reward/group_std"] = float(torch.stack(g_std).mean()) if g_std else 0.0
    metrics["reward/batch_std"] = float(total[finite].std()) if finite.sum() > 1 else 0.0
    metrics.update({
        "adv/mean": float(adv.mean()),
        "adv/std": float(adv.std()),
        "adv/abs_mean": float(adv.abs().mean()),
        "adv/max": float(adv.max()),
        "adv/min": float(adv.min()),
        "adv/frac_zero": float((adv == 0).double().mean()),
    })
    return metrics


def loss_metrics(out: LossOutput) -> dict[str, float]:
    """``loss/*`` and ``policy/*`` of one micro-batch's :class:`~slas.losses.LossOutput`."""
    out = type(out)(*(v.detach() for v in out))
    return {
        "loss/total": float(out.loss),
        "loss/policy": float(out.policy_loss),
        "loss/kl": float(out.kl),
        "policy/approx_kl": float(out.approx_kl),
        "policy/clipfrac": float(out.clipfrac),
        "policy/ratio_mean": float(out.ratio_mean),
        "policy/ratio_max_dev": float(max(out.ratio_max - 1, 1 - out.ratio_min)),
    }


def lr_factor(cfg: TrainConfig, opt_step: int) -> float:
    """Multiplier of ``train.lr`` at optimiser step ``opt_step`` (0-based): linear warm-up over
    ``warmup_steps``, then constant or cosine to 0 at ``steps x optimizer_steps_per_iteration``."""
    warm = min(1.0, (opt_step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule == "constant_with_warmup":
        return warm
    total = max(1, cfg.steps * cfg.optimizer_steps_per_iteration)
    return warm * 0.5 * (1 + math.cos(math.pi * min(opt_step, total) / total))
