"""The trust region measured inside the trainer (slas.trust_monitor) on a tiny world policy."""

from __future__ import annotations

import math

import pytest
import torch

from slas.config_io import load_config
from slas.errors import SlasError
from slas.trust_region import kl_budget
from tests.test_trainer import make_config, make_trainer


def test_measurements_are_logged_and_consistent(tmp_path):
    trainer = make_trainer(tmp_path, "trust.every=1", "trust.samples=4", "trust.fisher_iters=30")
    m = trainer.step()
    for key in ("fisher/lambda_max", "grad/g2", "trust/kl", "trust/step_norm",
                "gamma/bound_lr", "gamma/bound_effective", "gamma/bound", "gamma/value"):
        assert key in m and math.isfinite(m[key]), key
    assert m["fisher/lambda_max"] > 0 and m["grad/g2"] > 0 and m["trust/kl"] > 0
    assert m["gamma/value"] == 0.5  # the configured gamma: nothing adapts it
    # the first link of the chain: KL <= 1/2 lambda_max |dtheta|^2 (up to third order)
    assert m["trust/kl"] <= m["trust/kl_curvature_bound"]
    # the default convention is eta = lr x optimiser steps per iteration
    assert m["gamma/bound"] == m["gamma/bound_lr"]
    budget = kl_budget(2e-3, m["fisher/lambda_max"], 1e-3, m["grad/g2"])  # delta, lam, lr, G^2
    assert m["trust/budget_lr"] == pytest.approx(budget, rel=1e-12)
    assert trainer.step()["gamma/bound"] >= 0  # measured again on step 2 (every=1)


def test_measured_kl_scales_with_lr_squared(tmp_path):
    # Adam's first step is lr * sign(g) (bias-corrected), so |dtheta| is proportional to lr and
    # the exact KL of a small update to lr^2.
    kls = []
    for i, lr in enumerate((1e-6, 2e-6)):
        trainer = make_trainer(tmp_path / str(i), f"train.lr={lr}", "trust.every=1",
                               "trust.samples=4", "trust.fisher_iters=2")
        kls.append(trainer.step()["trust/kl"])
    assert kls[1] / kls[0] == pytest.approx(4.0, rel=0.02)


def test_not_measured_off_schedule(tmp_path):
    trainer = make_trainer(tmp_path, "trust.every=2", "train.steps=2")
    first, second = trainer.step(), trainer.step()
    assert "fisher/lambda_max" in first and "fisher/lambda_max" not in second
    assert "trust/kl" not in second  # no adaptive gamma: nothing measured off schedule
    plain = make_trainer(tmp_path / "off").step()
    assert not any(k.startswith(("trust/", "fisher/", "gamma/")) for k in plain)


@pytest.mark.parametrize("target, expected", [(1e6, [0.5, 0.6, 0.7]), (1e-5, [0.5, 0.4, 0.3])])
def test_adaptive_gamma_moves_toward_the_target(tmp_path, target, expected):
    # KL far below the target: error clipped to -1, gamma += rate; far above: gamma -= rate.
    trainer = make_trainer(tmp_path, "trust.every=1", "trust.adaptive=true", "trust.samples=4",
                           "trust.fisher_iters=3", f"trust.kl_target={target}", "trust.rate=0.1")
    seen = []
    for _ in range(2):
        m = trainer.step()
        seen.append(m["gamma/value"])
    seen.append(m["gamma/next"])
    assert seen == pytest.approx(expected, abs=1e-8)


def test_adaptive_gamma_never_exceeds_the_bound(tmp_path):
    # A tiny budget gives a bound of 0: gamma is pulled down to it whatever the KL says.
    trainer = make_trainer(tmp_path, "trust.every=1", "trust.adaptive=true", "trust.samples=4",
                           "trust.fisher_iters=3", "trust.kl_target=1e-12",
                           "trust.step_size=effective")
    m = trainer.step()
    assert m["gamma/bound"] == 0.0 and m["gamma/next"] == 0.0


def test_adaptive_gamma_state_resumes_exactly(tmp_path):
    args = ("trust.every=1", "trust.adaptive=true", "trust.samples=4", "trust.fisher_iters=3",
            "trust.kl_target=1e6", "train.steps=3")
    straight = make_trainer(tmp_path / "a", *args)
    straight.train()
    first = make_trainer(tmp_path / "b", *args[:-1], "train.steps=2")
    first.train()
    resumed = make_trainer(tmp_path / "b", *args, resume=True)
    assert resumed.trust.gamma == pytest.approx(0.7)
    resumed.train()
    assert resumed.trust.gamma == straight.trust.gamma == pytest.approx(0.8)
    for p, q in zip(straight.params, resumed.params, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("overrides, field", [
    (["trust.adaptive=true", "trust.every=1", "advantage.estimator=grpo"], "advantage.estimator"),
    (["trust.adaptive=true"], "trust.every"),
    (["trust.adaptive=true", "trust.every=1", "advantage.gamma=5", "trust.gamma_max=4"],
     "trust.gamma_max"),
    (["trust.samples=1"], "trust.samples"),
])
def test_config_errors_say_how_to_fix(tmp_path, overrides, field):
    with pytest.raises(SlasError, match=field.replace(".", r"\.")):
        make_config(tmp_path, *overrides)


def test_world_presets_accept_trust_overrides():
    cfg = load_config("world_slas", ["trust.every=10", "trust.adaptive=true"])
    assert cfg.trust.every == 10 and cfg.trust.step_size == "lr"
