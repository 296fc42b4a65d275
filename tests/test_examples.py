"""examples/minimal_world_grpo.py: the single-file GRPO / SLAS loop, run in-process with --tiny."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from slas.errors import SlasError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minimal_world_grpo.py"
TINY = ["--tiny", "--steps", "2", "--prompts-per-step", "2", "--group-size", "4",
        "--sample-steps", "4", "--micro-batch", "4", "--updates-per-step", "2",
        "--train-fraction", "1", "--eval-every", "2", "--eval-per-tag", "1", "--lr", "1e-4"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("minimal_world_grpo", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(example):
    """Two steps of 2 prompts x 4 images, 4 SDE steps, two optimiser steps per training step."""
    return example.main(TINY)


def test_tiny_run_metrics_are_finite(tiny_run):
    for key in ("reward", "adv_abs", "std_group", "std_batch", "approx_kl", "clipfrac",
                "grad_norm", "s_per_step", "geneval"):
        assert math.isfinite(tiny_run[key]), key
    assert 0.0 <= tiny_run["clipfrac"] <= 1.0 and 0.0 <= tiny_run["geneval"] <= 1.0
    # the stand-in reward is a mean chroma in [0, 1]
    assert 0.0 <= tiny_run["reward"] <= 1.0


def test_first_ratio_is_exactly_one(tiny_run):
    # before the first optimiser step of each training step, every chunk re-evaluates a rollout
    # transition with the same micro-batch and weights: rho = exp(0) = 1 with no rounding at all
    assert tiny_run["first_ratio_dev"] == 0.0


def test_policy_parameters_changed(tiny_run):
    # 2 steps x 2 AdamW updates at lr 1e-4: Adam's first step moves each weight with a nonzero
    # gradient by ~lr, so the 65k-parameter UNet moves by far more than float rounding
    assert tiny_run["param_change"] > 1e-4


def test_saturation_reward_by_hand(example):
    # image 0: pure red (1, 0, 0) -> chroma 1; image 1: grey 0.5 -> 0;
    # image 2: half of the pixels (0.2, 0.6, 0.4) -> 0.4, half grey -> mean 0.2
    images = torch.zeros(3, 3, 2, 2)
    images[0, 0] = 1.0
    images[1] = 0.5
    images[2] = 0.5
    images[2, :, 0, :] = torch.tensor([0.2, 0.6, 0.4]).view(3, 1)
    got = example.saturation(images, ["p"] * 3, [{}] * 3)
    torch.testing.assert_close(got, torch.tensor([1.0, 0.0, 0.2]))


def test_advantage_statistics_by_hand(example):
    # rewards [0, 2 | 10, 14]; mean_only: A = r - mean_g = [-1, 1, -2, 2], |A| mean 1.5.
    # unbiased group stds sqrt(2) and sqrt(8): per-sample mean (2*1.4142 + 2*2.8284)/4 = 2.1213.
    # batch: mean 6.5, squared deviations 42.25 + 20.25 + 12.25 + 56.25 = 131, /3 -> std 6.6081
    args = example.parse_args(["--estimator", "mean_only"])
    adv, stats = example.advantages(torch.tensor([0.0, 2.0, 10.0, 14.0]),
                                    torch.tensor([0, 0, 1, 1]), args)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -2.0, 2.0]))
    assert stats["adv_abs"] == pytest.approx(1.5)
    assert stats["reward"] == pytest.approx(6.5)
    assert stats["std_group"] == pytest.approx((math.sqrt(2) + math.sqrt(8)) / 2)
    assert stats["std_batch"] == pytest.approx(math.sqrt(131 / 3))


def test_slas_advantages_damp_small_gaps(example):
    # z = dr / std_batch; |z| < 1 shrinks under |z|^1.5, while grpo scales every group to +-0.71
    rewards, groups = torch.tensor([0.300, 0.301, 0.20, 0.40]), torch.tensor([0, 0, 1, 1])
    slas, _ = example.advantages(rewards, groups, example.parse_args(["--gamma", "0.5"]))
    grpo, _ = example.advantages(rewards, groups, example.parse_args(["--estimator", "grpo"]))
    assert slas[1].abs() < 1e-3 < grpo[1].abs()
    torch.testing.assert_close(grpo, torch.tensor([-1, 1, -1, 1]) / math.sqrt(2), atol=1e-4,
                               rtol=0)


def test_bad_flag_names_the_flag(example):
    with pytest.raises(SlasError, match="--group-size 1"):
        example.parse_args(["--group-size", "1"])
    with pytest.raises(SlasError, match="--updates-per-step"):
        example.parse_args(["--updates-per-step", "99"])
    with pytest.raises(SlasError, match="--reward nope is not registered"):
        example.load_reward(example.parse_args(["--reward", "nope"]))
