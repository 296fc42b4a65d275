"""The γ trust region measured during training (DESIGN §3.4), and adaptive γ.

The pure pieces live in :mod:`slas.trust_region`; this is the trainer's view of them. On a
measured step, before the update, ``trust.samples`` trained transitions are evaluated once:

* ``grad/g2``        G² = mean_i ‖∇_θ log π(x_{i+1} | x_i)‖² (one backward per transition);
* ``fisher/lambda_max``  λ_max of the step's Fisher (power iteration, double backward);

after the update the same transitions give

* ``trust/kl``       the exact KL(π_old ‖ π_new) of the whole iteration (``gaussian_kl``);
* ``trust/kl_curvature_bound``  ½·λ_max·‖Δθ‖², which must exceed ``trust/kl`` up to
  third-order terms (the first inequality of the chain);
* ``gamma/bound``    the largest γ with M_{2(1+γ)}(z) ≤ B = 2δ / (λ_max·η²·G²).

Appendix E's η is an SGD step size. ``trust.step_size="lr"`` (default) takes
η = lr × optimiser steps per iteration, as stated there; the optimiser is Adam, whose
per-coordinate preconditioning makes ‖Δθ‖ nearly independent of the advantage scale, so the
bound is then a heuristic scale, not a guarantee. ``"effective"`` takes Adam's actual step,
η = ‖Δθ‖ / ‖g‖ (``trust/eta_effective``, ‖g‖ the pre-clip gradient norm of the last optimiser
step): the SGD bound of a step of the same length, which is far more conservative because
Δθ is not aligned with the top Fisher direction (compare ``trust/kl`` with
``trust/kl_curvature_bound``).
With ``trust.adaptive``, :class:`~slas.trust_region.AdaptiveGamma` moves γ toward
``trust.kl_target`` after every step (the KL is then measured every step) and never past the
last bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from slas.advantages import combine, get_advantage_fn
from slas.config import Config
from slas.losses import gaussian_kl
from slas.sampling.steps import StepOutput
from slas.trust_region import AdaptiveGamma, fisher_lambda_max_graph, kl_budget, moment_bound_gamma

_SEARCH_MAX = 10.0  # the logged bounds search this far; adaptive γ stops at trust.gamma_max
StepFn = Callable[[Tensor, Tensor], StepOutput]  # (rows [m], steps [m]) -> the policy's step


class TrustMonitor:
    """Measures the trust region on schedule and owns the adaptive-γ state.

    Args:
        config: the run's config (``trust``, ``advantage``, ``reward``, ``sample``, ``train``).
        params: the trainable parameters (the ones the optimiser updates).
        reduce_mean: averages a tensor over processes (each measures its own transitions).
    """

    def __init__(self, config: Config, params: list[torch.nn.Parameter],
                 reduce_mean: Callable[[Tensor], Tensor] = lambda x: x) -> None:
        self.config, self.cfg, self.params = config, config.trust, params
        self._reduce = reduce_mean  # every process must see the same numbers (adaptive γ)
        self.bound = math.inf
        self.controller = (
            AdaptiveGamma(config.advantage.gamma, self.cfg.kl_target, rate=self.cfg.rate,
                          gamma_max=self.cfg.gamma_max)
            if self.cfg.adaptive else None
        )
        adv = config.advantage
        self._z_fn = get_advantage_fn("global_std", std=adv.std, eps=adv.eps)
        self._pending: dict[str, Any] | None = None

    @property
    def gamma(self) -> float:
        """The shaping exponent for the next advantages."""
        return self.controller.gamma if self.controller else self.config.advantage.gamma

    def measures(self, step_index: int) -> bool:
        """Whether step ``step_index`` (0-based) computes λ_max, G² and the bound."""
        return bool(self.cfg.every) and step_index % self.cfg.every == 0

    def before_update(self, step_index: int, rewards: Tensor, groups: Tensor,
                      step_fn: StepFn, steps: Tensor) -> dict[str, float]:
        """Measure before the update.

        Args:
            rewards: ``[K, N]`` rewards of the global batch; groups: ``[N]``.
            step_fn: the policy's transition for (local rows, step indices).
            steps: ``[n, k]`` the trained step indices of this process's samples.
        """
        self._pending = None
        measure = self.measures(step_index)
        if not (measure or self.controller):
            return {}
        gen = torch.Generator().manual_seed(self.config.run.seed * 104_729 + step_index)
        n = steps.shape[0]
        rows = torch.linspace(0, n - 1, min(self.cfg.samples, n)).round().long()
        cols = torch.randint(steps.shape[1], (rows.numel(),), generator=gen)
        picked = steps[rows, cols]
        metrics: dict[str, float] = {"gamma/value": self.gamma}
        reduction = self.config.sample.logprob_reduction
        if measure:
            with sdpa_kernel(SDPBackend.MATH):  # fused kernels lack double backward
                out = step_fn(rows, picked)
            g2 = torch.stack([
                sum(g.double().pow(2).sum() for g in torch.autograd.grad(
                    out.log_prob[i], self.params, retain_graph=True, allow_unused=True)
                    if g is not None)
                for i in range(rows.numel())
            ]).mean()
            lam = fisher_lambda_max_graph(out.mean, self.params, out.std.detach(),
                                          iters=self.cfg.fisher_iters, tol=1e-3,
                                          generator=gen, reduction=reduction)
            cfg = self.config
            z = combine(rewards, cfg.reward.weights, groups, self._z_fn, cfg.reward.aggregate)
            lam, g2 = self._reduce(torch.tensor([max(lam, 0.0), float(g2)],
                                                device=out.mean.device)).tolist()
            metrics.update({"fisher/lambda_max": lam, "grad/g2": g2})
            mean, std = out.mean.detach(), out.std.detach()
            before = [p.detach().clone() for p in self.params]
            z = z[torch.isfinite(z)]
        else:
            with torch.no_grad():
                out = step_fn(rows, picked)
            mean, std, before, lam, g2, z = out.mean, out.std, None, 0.0, 0.0, None
        self._pending = dict(rows=rows, steps=picked, mean=mean, std=std, before=before,
                             lam=lam, g2=float(g2), z=z, step_fn=step_fn)
        return metrics

    def after_update(self, grad_norm: float) -> dict[str, float]:
        """KL of the update, the γ bound (measured steps), the controller's step (adaptive)."""
        if self._pending is None:
            return {}
        p, self._pending = self._pending, None
        reduction = self.config.sample.logprob_reduction
        with torch.no_grad():
            new = p["step_fn"](p["rows"], p["steps"])
            kl = gaussian_kl(new.mean, p["mean"], p["std"], reduction).mean()
            kl = float(self._reduce(kl.reshape(1))[0])
        metrics = {"trust/kl": kl}
        if p["before"] is not None:
            step_sq = float(sum((q.detach() - b).double().pow(2).sum()  # same on every rank
                                for q, b in zip(self.params, p["before"], strict=True)))
            eta = math.sqrt(step_sq) / grad_norm if grad_norm > 0 else 0.0
            metrics.update({"trust/step_norm": math.sqrt(step_sq), "trust/eta_effective": eta,
                            "trust/kl_curvature_bound": 0.5 * p["lam"] * step_sq})
            etas = {"lr": self.config.train.lr * self.config.train.optimizer_steps_per_iteration,
                    "effective": eta}
            for name, value in etas.items():  # both logged; trust.step_size picks the one used
                if value > 0 and p["z"].numel():
                    budget = kl_budget(self.cfg.kl_target, p["lam"], value, p["g2"])
                    bound = moment_bound_gamma(p["z"], budget, gamma_max=_SEARCH_MAX)
                    metrics[f"gamma/bound_{name}"] = bound
                    metrics[f"trust/budget_{name}"] = budget
                    if name == self.cfg.step_size:
                        self.bound = bound
            metrics["gamma/bound"] = self.bound
        if self.controller:
            metrics["gamma/next"] = self.controller.update(kl, min(self.bound, self.cfg.gamma_max))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"bound": self.bound,
                "controller": self.controller.state_dict() if self.controller else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bound = float(state["bound"])
        if self.controller and state.get("controller"):
            self.controller.load_state_dict(state["controller"])


def current_advantage_fn(config: Config, gamma: float):
    """The configured estimator bound with ``gamma`` (adaptive γ changes it between steps)."""
    adv = config.advantage
    return get_advantage_fn(adv.estimator, gamma=gamma, normalize=adv.normalize, std=adv.std,
                            eps=adv.eps)
