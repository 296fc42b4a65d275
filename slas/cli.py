"""`slas` command line: parses, dispatches, and turns user errors into one line.

Commands that need heavy imports (torch models) import them inside their handler so that
``slas --help`` and ``slas config`` stay fast.
"""

from __future__ import annotations

import argparse
import inspect
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
    from slas.walkthrough import main as walkthrough

    walkthrough(seed=args.seed)
    return 0


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

    p = sub.add_parser("demo", help="walk through the algorithmic core with real numbers")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def _split_preset(args: argparse.Namespace) -> None:
    """``slas config train.lr=1`` has no preset: move a dotted override out of ``preset``."""
    preset = getattr(args, "preset", None)
    if preset is not None and "=" in preset:
        args.overrides = [preset, *args.overrides]
        args.preset = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except KeyboardInterrupt:
        print(f"slas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
