"""Speed-ups of the fast variants (issue "Performance" §3), measured in one run on the world.

Each variant is the world step of ``bench_step`` with one option changed; its speed-up is the
baseline's s/step over its own, both timed minutes apart in the same process:

* ``timestep_fraction``: train a random ⌊(T−1)·frac⌋ of the steps (DanceGRPO), vs all T−1;
* ``sde_window``: MixGRPO's sliding window: SDE and training on W steps, ODE elsewhere;
* ``overlap_reward``: score finished groups in a thread while the next micro-batch is
  sampled. It can only hide reward time that does not compete for the same cores, so it is
  timed with a reward that waits ``LATENCY_S`` per image without computing (a remote judge or
  reward server), against the same reward scored after the rollout.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

LATENCY_S = 0.05  # per image: a reward server (e.g. a VLM judge) answering 20 images/s


def _remote_reward(images: torch.Tensor, prompts, metadata) -> torch.Tensor:
    time.sleep(LATENCY_S * images.shape[0])
    return images.float().mean(dim=(1, 2, 3))


def _time(s, folder: Path, device: torch.device, quick: bool, reward=None, **sample: Any
          ) -> dict[str, Any]:
    from benchmarks.bench_step import build_case, make_config, measure
    from slas.data.prompts import world_prompts
    from slas.trainer import Trainer

    backbone, name, fn = build_case("world", folder, device, quick)
    if reward is not None:
        name, fn = "remote", reward
    run_dir = folder / f"variant_{len(list(folder.glob('variant_*')))}"
    trainer = Trainer(make_config(run_dir, s, reward=name, **sample), backbone=backbone,
                      rewards={name: fn},
                      prompts=world_prompts("train"))
    return measure(trainer, s.warmup, s.steps)


def variants(world, folder: Path, device: torch.device, quick: bool, steps: int
             ) -> list[dict[str, Any]]:
    """Rows ``{variant, baseline, s_per_step, baseline_s_per_step, speedup}``."""
    s = replace(world, steps=steps, num_steps=max(world.num_steps, 4))  # >= 1 step at frac 0.5
    t = s.num_steps
    window = max(1, (t - 1) // 3)
    full = _time(replace(s, timestep_fraction=1.0), folder, device, quick)
    rows = []
    for label, result in (
        ("timestep_fraction=0.5", _time(replace(s, timestep_fraction=0.5), folder, device,
                                        quick)),
        (f"sde_window={window} (of {t} steps)", _time(replace(s, timestep_fraction=1.0), folder,
                                                      device, quick, sde_window=window)),
    ):
        rows.append(_row(label, f"all {t - 1} steps trained", result, full))
    # one group per micro-batch, so each finished micro-batch can be scored during the next
    group = max(2, s.group_size // 2)
    chunked = replace(s, prompts=s.batch_size // group, group_size=group, micro_batch_size=group)
    slow = _time(chunked, folder, device, quick, reward=_remote_reward)
    fast = _time(chunked, folder, device, quick, reward=_remote_reward, overlap_reward=True)
    rows.append(_row(f"overlap_reward (reward server, {LATENCY_S * 1e3:.0f} ms/image; "
                     f"{chunked.prompts} groups of {group}, one per micro-batch)",
                     "same reward after the rollout", fast, slow))
    for row in rows:
        print(f"  variant {row['variant']}: x{row['speedup']:.2f}", flush=True)
    return rows


def _row(label: str, baseline: str, result: dict, base: dict) -> dict[str, Any]:
    return {"variant": label, "baseline": baseline, "s_per_step": result["s_per_step"],
            "baseline_s_per_step": base["s_per_step"],
            "speedup": base["s_per_step"] / result["s_per_step"],
            "model_compute_fraction": result["model_compute_fraction"]}


def render(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the variants table."""
    if not rows:
        return []
    out = ["## Fast variants (world step, speed-up = baseline s/step / variant s/step)", "",
           "| variant | baseline | speed-up | s/step (baseline) | model compute |",
           "|---|---|---|---|---|"]
    out += [f"| {r['variant']} | {r['baseline']} | x{r['speedup']:.2f} | "
            f"{r['s_per_step']:.3f} ({r['baseline_s_per_step']:.3f}) | "
            f"{r['model_compute_fraction']:.2f} |" for r in rows]
    out += ["", "Overlap can hide the reward time of every group but the last, and at most the "
            "rollout time that follows it; the update (most of a step) cannot overlap because "
            "its advantages need every reward."]
    out += ["", "Their effect on the true score is in docs/results-world.md (world "
            "experiment, fast-variant rows).", ""]
    return out
