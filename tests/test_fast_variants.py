"""Fast variants in the trainer: MixGRPO sliding SDE window, reward scoring overlapped with
sampling (the timestep fraction is covered by tests/sampling/test_selection.py)."""

from __future__ import annotations

import torch

from slas.trainer import Trainer
from tests.conftest import brightness_reward
from tests.test_trainer import make_trainer


def test_overlapped_scoring_gives_identical_training(tmp_path):
    calls = []

    def recording(images, prompts, metadata):
        calls.append([m["group_id"] for m in metadata])
        return brightness_reward(images, prompts, metadata)

    # micro-batches of 2 split the groups of 4: each group is scored once it is complete
    args = ("sample.micro_batch_size=2", "train.steps=2")
    plain = make_trainer(tmp_path / "a", *args)
    overlapped = make_trainer(tmp_path / "b", *args, "sample.overlap_reward=true",
                              reward=recording)
    for _ in range(2):
        a, b = plain.step(), overlapped.step()
        assert a["reward/mean"] == b["reward/mean"] and a["adv/max"] == b["adv/max"]
    for p, q in zip(plain.params, overlapped.params, strict=True):
        assert torch.equal(p, q)
    assert calls and all(len(c) % 4 == 0 and c == sorted(c) for c in calls)
    assert sum(len(c) for c in calls) == 16  # 2 steps x 8 samples, each scored once


def test_overlapped_scoring_reraises_a_reward_error(tmp_path):
    def broken(images, prompts, metadata):
        raise RuntimeError("judge unreachable")

    trainer = make_trainer(tmp_path, "sample.overlap_reward=true", reward=broken)
    try:
        trainer.step()
    except RuntimeError as err:
        assert "judge unreachable" in str(err)
    else:
        raise AssertionError("the reward's error was swallowed")


def test_sde_window_trains_only_window_steps(tmp_path, monkeypatch):
    trained: list[list[int]] = []
    original = Trainer._policy_step

    def recording(self, traj, cond, rows, step):
        trained[-1].extend(step.tolist())
        return original(self, traj, cond, rows, step)

    monkeypatch.setattr(Trainer, "_policy_step", recording)
    trainer = make_trainer(tmp_path, "sample.num_steps=4", "sample.sde_window=2",
                           "sample.window_every=1", "train.steps=3")
    for _ in range(3):
        trained.append([])
        m = trainer.step()
        assert m["policy/ratio_max_dev"] == 0.0  # still exactly on-policy at the first step
    # starts 0, 1, 0 (T - W = 2 starts), every sample trains both window steps
    assert [sorted(set(t)) for t in trained] == [[0, 1], [1, 2], [0, 1]]
    assert [len(t) for t in trained] == [16, 16, 16]  # 8 samples x 2 steps
