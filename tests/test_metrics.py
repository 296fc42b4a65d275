"""Pure metric and schedule functions used by the trainer, by hand."""

import math

import pytest
import torch

from slas.config import TrainConfig
from slas.losses import ppo_clip_loss
from slas.metrics import advantage_metrics, loss_metrics, lr_factor


def test_advantage_metrics_by_hand():
    # two rewards, weights 1 and 2; group 1 has a NaN and is dropped from the batch statistics
    rewards = torch.tensor([[1.0, 3.0, 0.0, math.nan], [0.0, 1.0, 1.0, 1.0]])
    groups = torch.tensor([0, 0, 1, 1])
    adv = torch.tensor([-1.0, 1.0, 0.0, 0.0])
    m = advantage_metrics(rewards, groups, adv, ["a", "b"], [1.0, 2.0])
    assert m["reward/a"] == pytest.approx(4 / 3) and m["reward/b"] == pytest.approx(0.75)
    # weighted totals of group 0: 1 + 0 = 1 and 3 + 2 = 5 -> mean 3, std sqrt(8)
    assert m["reward/mean"] == pytest.approx(3.0)
    assert m["reward/group_std"] == pytest.approx(math.sqrt(8))
    assert m["reward/batch_std"] == pytest.approx(math.sqrt(8))
    assert m["reward/nonfinite_groups"] == 1.0
    assert m["adv/frac_zero"] == 0.5 and m["adv/max"] == 1.0 and m["adv/abs_mean"] == 0.5


def test_loss_metrics_report_the_ratio_deviation():
    out = ppo_clip_loss(torch.tensor([0.1, -0.2]), torch.tensor([0.0, 0.0]),
                        torch.tensor([1.0, 1.0]), clip_range=0.5)
    m = loss_metrics(out)
    assert m["policy/ratio_max_dev"] == pytest.approx(1 - math.exp(-0.2))
    assert m["policy/approx_kl"] == pytest.approx(0.5 * (0.01 + 0.04) / 2)


def test_lr_factor_schedules():
    cfg = TrainConfig(steps=2, optimizer_steps_per_iteration=2, lr_schedule="cosine",
                      warmup_steps=2)
    # total 4 optimiser steps; warm-up (k+1)/2 for k < 2
    got = [lr_factor(cfg, k) for k in range(5)]
    assert got == pytest.approx([0.5, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                 (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    assert lr_factor(TrainConfig(lr_schedule="constant", warmup_steps=5), 0) == 1.0
    assert lr_factor(TrainConfig(lr_schedule="constant_with_warmup", warmup_steps=4), 1) == 0.5
