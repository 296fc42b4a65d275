"""`slas` command line: parses, dispatches, and turns user errors into one line.

Commands that need heavy imports (torch models) import them inside their handler so that
``slas --help`` and ``slas config`` stay fast.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable, Sequence

from slas.errors import SlasError


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def cmd_config(args: argparse.Namespace) -> int:
    from slas import config_io

    config = config_io.load_config(args.preset, args.overrides)
    print(config_io.explain(config) if args.explain else config_io.dump_yaml(config), end="")
    if args.explain:
        print()
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from slas.advantages import ADVANTAGES
    from slas.backbones import BACKBONES
    from slas.config_io import list_presets
    from slas.rewards import REWARDS

    tables: list[tuple[str, dict]] = [
        ("advantages (advantage.estimator)", ADVANTAGES),
        ("rewards (reward.names)", REWARDS),
        ("backbones (model.backbone)", BACKBONES),
    ]
    for title, table in tables:
        print(f"{title}:")
        if not table:
            print("  (none registered)")
        width = max((len(name) for name in table), default=0)
        for name, fn in table.items():
            print(f"  {name:<{width}}  {_first_line(fn)}")
        print()
    print("presets (slas config PRESET):")
    print("  " + ", ".join(list_presets()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from slas.demo import run_demo

    run_demo(args.out, steps=args.steps, overrides=args.overrides)
    return 0


def cmd_walkthrough(args: argparse.Namespace) -> int:
    from slas.walkthrough import main as walkthrough

    walkthrough(seed=args.seed)
    return 0


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from slas import cli_commands

        return getattr(cli_commands, name)(args)

    return run


def _world_passthrough(args: argparse.Namespace) -> int:
    from slas.cli_commands import passthrough

    module = {"pretrain": "slas.world.pretrain", "rewards": "slas.world.train_rewards",
              "experiment": "slas.world.experiment"}
    return passthrough(module[args.world_command], args.rest)


def _add_policy_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        default=None,
        help="policy folder or run directory (default: the committed base policy)",
    )
    p.add_argument("--samples", type=int, default=4, help="images per prompt (GenEval: 4)")
    p.add_argument("--steps", type=int, default=20, help="ODE sampling steps")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="world_eval.png", help="sample grid PNG")
    p.set_defaults(func=_lazy("eval_world"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slas",
        description="RL post-training of text-to-image diffusion and flow-matching models with "
        "Super-Linear Advantage Shaping (arXiv 2605.10937).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("config", help="print the resolved config of a preset plus overrides")
    p.add_argument(
        "preset",
        nargs="?",
        default=None,
        help="preset name (see `slas ls`) or a YAML file; omitted = defaults",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5")
    p.add_argument("--explain", action="store_true", help="document every field")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("ls", help="list advantage estimators, rewards, backbones and presets")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("train", help="train a policy: rollout -> score -> advantages -> update")
    p.add_argument(
        "preset", nargs="?", default=None, help="preset name or YAML file (default: world_slas)"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=50")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, check paths, build on the meta device, estimate memory; exit")
    p.add_argument("--processes", type=int, default=1,
                   help="with --dry-run: the number of processes the job will use")
    p.set_defaults(func=_lazy("train"))

    p = sub.add_parser("sample", help="generate images from a policy")
    p.add_argument("prompt", nargs="+", help="one or more prompts")
    p.add_argument("--policy", default=None, help="policy folder or run directory")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="grid PNG to write")
    p.set_defaults(func=_lazy("sample"))

    p = sub.add_parser("eval", help="evaluate a policy out of domain")
    ev = p.add_subparsers(dest="eval_command", metavar="BENCHMARK", required=True)
    _add_policy_eval_args(ev.add_parser("world", help="world-GenEval, fidelity, proxy rewards"))
    from slas.cli_eval import add_geneval_parser, add_summary_parser, add_unigenbench_parser

    add_unigenbench_parser(ev)
    add_summary_parser(ev)
    add_geneval_parser(ev)

    p = sub.add_parser("report", help="Markdown + HTML report comparing run directories")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="report", help="output folder")
    p.set_defaults(func=_lazy("report"))

    p = sub.add_parser("world", help="the built-in world: render, pretrain, eval")
    w = p.add_subparsers(dest="world_command", metavar="WORLD_COMMAND", required=True)
    q = w.add_parser("render", help="grid PNG of clean renders, one row per GenEval tag")
    q.add_argument("--per-tag", type=int, default=8)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="world_render.png")
    q.set_defaults(func=_lazy("world_render"))
    _add_policy_eval_args(w.add_parser("eval", help="same as `slas eval world`"))
    for name, text in (
        ("pretrain", "retrain the base policy (see --help)"),
        ("rewards", "retrain the proxy rewards (see --help)"),
        ("experiment", "every advantage estimator x seeds -> docs/results-world.md"),
    ):
        q = w.add_parser(name, help=text, add_help=False)
        q.add_argument("rest", nargs=argparse.REMAINDER)
        q.set_defaults(func=_world_passthrough)

    p = sub.add_parser("demo", help="GRPO vs SLAS on the world: train, evaluate, report")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to both runs")
    p.add_argument("--steps", type=int, default=None, help="training steps per method")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("walkthrough", help="the algorithmic core on a toy problem, in numbers")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_walkthrough)
    return parser


def _split_preset(args: argparse.Namespace) -> None:
    """``slas config train.lr=1`` has no preset: move a dotted override out of ``preset``."""
    preset = getattr(args, "preset", None)
    if preset is not None and "=" in preset:
        args.overrides = [preset, *args.overrides]
        args.preset = None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if len(argv) >= 2 and argv[0] == "world" and argv[1] in ("pretrain", "rewards", "experiment"):
        # these keep their own argparse (and --help); everything after the name is theirs
        args = argparse.Namespace(
            command="world", world_command=argv[1], rest=argv[2:], func=_world_passthrough
        )
    else:
        # overrides may follow options (`slas train P --dry-run a.b=1`): collect them here
        args, unknown = parser.parse_known_args(argv)
        stray = [u for u in unknown if u.startswith("-") or "=" not in u]
        if stray or (unknown and not hasattr(args, "overrides")):
            parser.error(f"unrecognized arguments: {' '.join(stray or unknown)}")
        if unknown:
            args.overrides = [*args.overrides, *unknown]
    if args.command is None:
        parser.print_help()
        return 0
    _split_preset(args)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except SlasError as err:
        print(f"slas {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0
    except KeyboardInterrupt:
        print(f"slas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
