"""Advantage estimators: pure functions ``(rewards [N], group_ids [N]) -> advantages [N]``.

A *group* is the G samples of one prompt (same ``group_id``); the *batch* is everything passed in,
which must be the GLOBAL batch gathered from all processes (with one prompt per GPU a per-GPU
"batch" std would collapse to the group std). Hyperparameters are keywords, bound from
:class:`~slas.config.AdvantageConfig` by :func:`get_advantage_fn`.

Degenerate input never yields NaN (DESIGN §3.2):
  * a constant group (max == min) gets exactly 0 advantages, whatever the rounding of its mean;
  * a group holding any non-finite reward is dropped for this step: its advantages are 0 and it
    is excluded from every batch statistic (see :func:`finite_group_mask` to report it);
  * a batch std of 0 gives 0 advantages (the numerator is 0 too).
Statistics are computed in float64 and returned in the rewards' dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from slas.errors import SlasError

AdvantageFn = Callable[[Tensor, Tensor], Tensor]
StdEstimator = Literal["unbiased", "biased"]


class GroupStats(NamedTuple):
    """Per-sample views of the statistics of each sample's group, all ``[N]`` float64."""

    mean: Tensor
    std: Tensor
    count: Tensor
    constant: Tensor  # bool: every reward of the group is equal (max == min)


def finite_group_mask(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """``[N]`` bool: True where every reward of the sample's group is finite."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    bad = torch.zeros(k, dtype=torch.long).index_add_(0, inverse, (~torch.isfinite(rewards)).long())
    return bad[inverse] == 0


def group_stats(rewards: Tensor, group_ids: Tensor, std: StdEstimator = "unbiased") -> GroupStats:
    """Group mean / std / size per sample. Groups of one sample have std 0.

    Args:
        rewards: ``[N]`` finite rewards.
        group_ids: ``[N]`` integer group labels (any values, any order).
        std: ``unbiased`` divides by n - 1 (torch ``.std()``, DanceGRPO); ``biased`` by n
            (``np.std``, Flow-GRPO).
    """
    r = rewards.double()
    _, inv = torch.unique(group_ids, return_inverse=True)
    k = int(inv.max()) + 1 if inv.numel() else 0
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
    mean = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, r) / count
    sq = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, (r - mean[inv]) ** 2)
    dof = (count - 1).clamp(min=1) if std == "unbiased" else count
    gstd = torch.where(count > 1, (sq / dof).sqrt(), torch.zeros_like(sq))
    gmax = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, inv, r, "amax")
    gmin = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, inv, r, "amin")
    return GroupStats(mean[inv], gstd[inv], count[inv], (gmax == gmin)[inv])


def batch_std(values: Tensor, std: StdEstimator = "unbiased") -> Tensor:
    """Scalar std of ``[M]`` values (0 for M < 2), float64."""
    v = values.double()
    if v.numel() < 2:
        return torch.zeros((), dtype=torch.float64)
    return v.std(correction=1 if std == "unbiased" else 0)


def _centred(
    rewards: Tensor, group_ids: Tensor, std: StdEstimator
) -> tuple[Tensor, GroupStats, Tensor]:
    """Delta r = r - mean_g over valid groups (0 elsewhere), the stats, and the valid mask."""
    _check_inputs(rewards, group_ids)
    valid = finite_group_mask(rewards, group_ids)
    safe = torch.where(valid, rewards.double(), torch.zeros((), dtype=torch.float64))
    stats = group_stats(safe, group_ids, std)
    delta = torch.where(valid & ~stats.constant, safe - stats.mean, torch.zeros_like(safe))
    return delta, stats, valid


def grpo(
    rewards: Tensor, group_ids: Tensor, *, std: StdEstimator = "unbiased", eps: float = 1e-8
) -> Tensor:
    """DanceGRPO: A = (r - mean_g) / (std_g + eps), per-group std.

    The estimator whose division by a near-zero group std creates "illusory advantages"
    (arXiv 2605.10937 §3). Returns ``[N]``.
    """
    delta, stats, _ = _centred(rewards, group_ids, std)
    return (delta / (stats.std + eps)).to(rewards.dtype)


def mean_only(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """The paper's Eq. 9 (Dr.-GRPO style): A = r - mean_g, no std. Returns ``[N]``."""
    delta, _, _ = _centred(rewards, group_ids, "unbiased")
    return delta.to(rewards.dtype)


def global_std(
    rewards: Tensor, group_ids: Tensor, *, std: StdEstimator = "unbiased", eps: float = 1e-8
) -> Tensor:
    """Flow-GRPO ``global_std=True``: A = (r - mean_g) / (std_batch(r) + eps).

    The batch std is over the raw rewards of all valid samples. Returns ``[N]``.
    """
    delta, _, valid = _centred(rewards, group_ids, std)
    scale = batch_std(rewards[valid], std)
    return (delta / (scale + eps)).to(rewards.dtype)


def slas(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    gamma: float = 0.5,
    normalize: Literal["pre", "post"] = "pre",
    std: StdEstimator = "unbiased",
    eps: float = 1e-8,
) -> Tensor:
    """Super-Linear Advantage Shaping (arXiv 2605.10937): Ã = sign(Δr)·|Δr|^(1+γ).

    Δr = r - mean_g (no per-prompt std), normalised by a std over the whole batch:

    * ``pre``:  z = Δr / (std_batch(r) + eps),  A = sign(z)·|z|^(1+γ). Advantages below one batch
      std are damped, above it amplified. γ = 0 equals :func:`global_std`.
    * ``post``: Ã = sign(Δr)·|Δr|^(1+γ),  A = Ã / (std_batch(Ã) + eps).

    Both are invariant to r -> c·r (c > 0) and r -> r + b (up to eps). Returns ``[N]``.
    """
    delta, _, valid = _centred(rewards, group_ids, std)
    if normalize == "pre":
        z = delta / (batch_std(rewards[valid], std) + eps)
        return _power(z, gamma).to(rewards.dtype)
    if normalize == "post":
        shaped = _power(delta, gamma)
        return (shaped / (batch_std(shaped[valid], std) + eps)).to(rewards.dtype)
    raise SlasError(f"advantage.normalize must be 'pre' or 'post', got {normalize!r}")


def _power(x: Tensor, gamma: float) -> Tensor:
    return torch.sign(x) * x.abs().pow(1.0 + gamma)


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo,
    "mean_only": mean_only,
    "global_std": global_std,
    "slas": slas,
}


def get_advantage_fn(
    name: str,
    *,
    gamma: float = 0.5,
    normalize: str = "pre",
    std: StdEstimator = "unbiased",
    eps: float = 1e-8,
) -> AdvantageFn:
    """Bind an estimator's hyperparameters -> ``fn(rewards [N], group_ids [N]) -> [N]``.

    Each estimator receives only the hyperparameters it declares.
    """
    if name not in ADVANTAGES:
        raise SlasError(f"unknown advantage estimator {name!r}; valid: {', '.join(ADVANTAGES)}")
    fn = ADVANTAGES[name]
    offered = {"gamma": gamma, "normalize": normalize, "std": std, "eps": eps}
    accepted = fn.__kwdefaults__ or {}
    return functools.partial(fn, **{k: v for k, v in offered.items() if k in accepted})


def clamp_advantages(advantages: Tensor, clamp: float | None) -> Tensor:
    """Clamp to ±clamp (every reference uses 5); ``None`` leaves them unchanged."""
    return advantages if clamp is None else advantages.clamp(-clamp, clamp)


def combine(
    rewards: Tensor,
    weights: Tensor | list[float],
    group_ids: Tensor,
    advantage_fn: AdvantageFn,
    aggregate: Literal["rewards", "advantages"] = "rewards",
    clamp: float | None = None,
) -> Tensor:
    """Advantages from K rewards (DESIGN §3.2 multi-reward).

    Args:
        rewards: ``[K, N]`` one row per reward model.
        weights: ``[K]``.
        group_ids: ``[N]``.
        advantage_fn: a bound estimator.
        aggregate: ``rewards``: A = f(Σ_k w_k r_k) (Flow-GRPO); ``advantages``:
            A = Σ_k w_k f(r_k), each normalised alone (Pref-GRPO, the DanceGRPO lineage).
        clamp: applied once to the final advantages.

    A sample with any non-finite reward drops its whole group in every component. Returns ``[N]``.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if rewards.ndim != 2 or w.shape != (rewards.shape[0],):
        raise SlasError(
            f"rewards must be [K, N] with one weight per row; got rewards "
            f"{tuple(rewards.shape)} and {w.numel()} weights"
        )
    finite = torch.isfinite(rewards).all(dim=0)
    r = torch.where(finite, rewards.double(), torch.full_like(rewards.double(), torch.nan))
    if aggregate == "rewards":
        adv = advantage_fn((w[:, None] * r).sum(0), group_ids)
    elif aggregate == "advantages":
        adv = sum(w[k] * advantage_fn(r[k], group_ids) for k in range(r.shape[0]))
    else:
        raise SlasError(f"reward.aggregate must be 'rewards' or 'advantages', got {aggregate!r}")
    return clamp_advantages(adv, clamp).to(rewards.dtype)


def pairwise_winrate(preference: Tensor, group_ids: Tensor) -> Tensor:
    """Pref-GRPO reward: each sample's mean win rate against the others of its group.

    Args:
        preference: ``[N, N]``, ``preference[i, j]`` = probability that sample i is preferred to
            sample j (1 win, 0 loss, 0.5 tie). Only same-group, off-diagonal entries are read.
        group_ids: ``[N]``.

    Returns:
        ``[N]`` win rates in [0, 1]; 0.5 for a sample alone in its group.
    """
    n = group_ids.numel()
    if preference.shape != (n, n):
        raise SlasError(f"preference must be [N, N] = [{n}, {n}], got {tuple(preference.shape)}")
    same = (group_ids[:, None] == group_ids[None, :]) & ~torch.eye(n, dtype=torch.bool)
    p = torch.where(same, preference.double(), torch.zeros((), dtype=torch.float64))
    others = same.sum(1)
    rate = p.sum(1) / others.clamp(min=1)
    return torch.where(others > 0, rate, torch.full_like(rate, 0.5)).to(preference.dtype)


def preference_matrix(group_ids: Tensor, prefer: Callable[[int, int], float]) -> Tensor:
    """Build ``[N, N]`` from a pairwise judge ``prefer(i, j) -> P(i beats j)``.

    The judge is called once per unordered same-group pair (i < j); ``[j, i] = 1 - [i, j]``.
    A return value outside [0, 1] or NaN counts as a tie (0.5).
    """
    n = group_ids.numel()
    matrix = torch.full((n, n), 0.5, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            if group_ids[i] == group_ids[j]:
                p = float(prefer(i, j))
                p = p if 0.0 <= p <= 1.0 else 0.5
                matrix[i, j], matrix[j, i] = p, 1.0 - p
    return matrix


def _check_inputs(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise SlasError(
            f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)} and "
            f"{tuple(group_ids.shape)}"
        )
    if rewards.is_floating_point() is False:
        raise SlasError(f"rewards must be floating point, got {rewards.dtype}")
