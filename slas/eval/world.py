"""World-GenEval of a policy: the true compositional score, fidelity and proxy rewards of the
out-of-domain evaluation prompts, as one flat dict of ``eval/*`` metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from slas.backbones.base import Backbone
from slas.config import EvalConfig
from slas.rewards import RewardFn


class WorldEvaluation(NamedTuple):
    metrics: dict[str, float]  # eval/geneval/<tag|overall>, eval/fidelity/*, eval/reward/<name>
    images: Tensor  # [P*K, 3, 32, 32] prompt-major
    grid: Tensor  # [grid_prompts*K, 3, 32, 32] the images of the first prompts, for a grid


def evaluate_world(
    backbone: Backbone,
    cfg: EvalConfig,
    rewards: Mapping[str, RewardFn],
    *,
    seed: int,
    records: Sequence[Mapping] | None = None,
) -> WorldEvaluation:
    """Sample ``cfg.samples_per_prompt`` images per evaluation record (ODE, CFG), verify them
    with the GenEval rules, and score fidelity and every proxy reward."""
    from slas.world.captions import eval_prompts
    from slas.world.fidelity import artifact_fraction, mean_saturation
    from slas.world.generate import evaluate_policy

    records = list(records) if records is not None else eval_prompts()
    result = evaluate_policy(
        backbone,
        records,
        samples_per_prompt=cfg.samples_per_prompt,
        num_steps=cfg.num_steps,
        guidance_scale=cfg.guidance_scale,
        seed=seed,
    )
    metrics = {f"eval/geneval/{tag}": v for tag, v in result.per_tag.items()}
    metrics["eval/geneval/overall"] = result.overall
    metrics["eval/fidelity/artifact_fraction"] = float(artifact_fraction(result.images).mean())
    metrics["eval/fidelity/saturation"] = float(mean_saturation(result.images).mean())
    k = cfg.samples_per_prompt
    prompts = [r["prompt"] for r in records for _ in range(k)]
    meta = [dict(r) for r in records for _ in range(k)]
    with torch.inference_mode():
        for name, fn in rewards.items():
            metrics[f"eval/reward/{name}"] = float(fn(result.images, prompts, meta).float().mean())
    grid = result.images[: cfg.grid_prompts * k]
    return WorldEvaluation(metrics, result.images, grid)
