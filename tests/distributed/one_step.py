"""Run one training step of the tiny world policy and write this rank's results.

Launched by tests/distributed/test_processes.py with 1 process and with 2 processes
(``torchrun --standalone --nproc_per_node N``); every rank writes ``rank<R>.pt``.
"""

import sys
from pathlib import Path

import torch

from slas.config_io import load_config
from slas.data.prompts import world_prompts
from slas.trainer import Trainer
from tests.conftest import brightness_reward, tiny_world_backbone


def main(out_dir: str) -> None:
    out = Path(out_dir)
    cfg = load_config(
        None,
        [
            "advantage.estimator=slas",
            "reward.names=[bright]",
            f"run.output_dir={out / 'run'}",
            "sample.batch_size=8",
            "sample.group_size=2",
            "sample.micro_batch_size=2",
            "sample.num_steps=3",
            "train.steps=1",
            "train.lr=1e-3",
            "run.tensorboard=false",
            "run.checkpoint_every=0",
            "eval.prompts=none",
        ],
    )
    trainer = Trainer(
        cfg,
        backbone=tiny_world_backbone(),
        rewards={"bright": brightness_reward},
        prompts=world_prompts("train"),
    )
    captured = {}
    score, advantages = trainer.score, trainer.compute_advantages

    def keep_score(traj, batch):
        captured["rewards"] = score(traj, batch)
        return captured["rewards"]

    def keep_adv(rewards, traj):
        captured["advantages"], stats = advantages(rewards, traj)
        captured["sample_ids"] = traj.sample_ids
        return captured["advantages"], stats

    trainer.score, trainer.compute_advantages = keep_score, keep_adv
    trainer.step()
    torch.save(
        {
            "world": trainer.world,
            **captured,
            "params": [p.detach().clone() for p in trainer.params],
        },
        out / f"rank{trainer.rank}.pt",
    )
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1])
