"""Handlers of the heavier `slas` commands (imported lazily by :mod:`slas.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slas.errors import SlasError


def train(args: argparse.Namespace) -> int:
    from slas.config_io import load_config
    from slas.trainer import Trainer

    config = load_config(args.preset or "world_slas", args.overrides)
    if args.dry_run:
        from slas.dry_run import dry_run

        print("\n".join(dry_run(config, num_processes=args.processes).lines))
        return 0
    trainer = Trainer(config, resume=args.resume)
    try:
        trainer.train()
    finally:
        trainer.close()
    if trainer.is_main:
        print(
            f"run directory: {config.run.output_dir} (step {trainer.step_index}); "
            f"report: slas report {config.run.output_dir}"
        )
    return 0


def load_policy(path: str | None, backbone: str = "world"):
    """Load a backbone from ``path`` (None = the adapter's default)."""
    from slas.backbones import get_backbone
    from slas.config import ModelConfig

    return get_backbone(ModelConfig(backbone=backbone, path=path))


def policy_dir(arg: str | None) -> str | None:
    """``--policy`` may name a policy folder or a run directory holding ``policy/``."""
    if arg and (Path(arg) / "policy").is_dir():
        return str(Path(arg) / "policy")
    return arg


def sample(args: argparse.Namespace) -> int:
    from slas.images import save_grid
    from slas.world.captions import parse_prompt
    from slas.world.generate import sample_images

    for prompt in args.prompt:
        parse_prompt(prompt)  # names an unknown word before any model work
    backbone = load_policy(policy_dir(args.policy))
    images = sample_images(
        backbone,
        args.prompt,
        samples_per_prompt=args.samples,
        num_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
    )
    path = save_grid(images, Path(args.out), nrow=args.samples)
    print(f"wrote {len(images)} images to {path}")
    return 0


def eval_world(args: argparse.Namespace) -> int:
    from slas.config import EvalConfig, RewardConfig
    from slas.eval.world import evaluate_world
    from slas.images import save_grid
    from slas.rewards import REWARDS, get_reward

    backbone = load_policy(policy_dir(args.policy))
    cfg = EvalConfig(
        samples_per_prompt=args.samples, num_steps=args.steps, guidance_scale=args.guidance
    )
    names = [n for n in ("world_clip", "world_pref") if n in REWARDS]
    rewards = {n: get_reward(n, RewardConfig(names=[n])) for n in names}
    result = evaluate_world(backbone, cfg, rewards, seed=args.seed)
    print(format_world_table({args.policy or "base policy": result.metrics}))
    grid = save_grid(result.grid, Path(args.out), nrow=2 * args.samples)
    print(f"\nsample grid: {grid}")
    return 0


def format_world_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per policy, world-GenEval per tag, fidelity, proxy rewards."""
    tags = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    extra = sorted({k for m in rows.values() for k in m if k.startswith("eval/reward/")})
    head = ["policy", *tags, "overall", "artifacts", *[k.rsplit("/", 1)[1] for k in extra]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows.items():
        cells = [f"{m.get(f'eval/geneval/{t}', float('nan')):.3f}" for t in tags]
        cells += [
            f"**{m['eval/geneval/overall']:.3f}**",
            f"{m['eval/fidelity/artifact_fraction']:.4f}",
        ]
        cells += [f"{m[k]:.4f}" for k in extra]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def world_render(args: argparse.Namespace) -> int:
    import random

    from slas.images import save_grid
    from slas.world.captions import TAGS, sample_spec, scene_for
    from slas.world.render import render

    rng = random.Random(args.seed)
    metas = [sample_spec(tag, rng) for tag in TAGS for _ in range(args.per_tag)]
    images = render([scene_for(m, rng) for m in metas], seed=args.seed)
    path = save_grid(images, Path(args.out), nrow=args.per_tag, scale=3)
    for tag in TAGS:
        print(f"row {TAGS.index(tag) + 1}: {tag}")
    print(f"wrote {path}")
    return 0


def report(args: argparse.Namespace) -> int:
    from slas.report import write_report

    paths = write_report([Path(d) for d in args.runs], Path(args.out))
    print(f"report: {paths.markdown}\n        {paths.html}")
    return 0


def passthrough(module: str, argv: list[str]) -> int:
    """Run a module's own argparse entry point (``slas world pretrain ...``)."""
    import importlib

    return importlib.import_module(module).main(argv) or 0


def require_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise SlasError(f"{what} {path} not found")
    return p
