"""`slas eval unigenbench` and `slas eval geneval`: generate, score, summarise."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from slas.errors import SlasError


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="world", help="backbone adapter (see `slas ls`)")
    p.add_argument("--policy", default=None, help="model folder (model.path) or a run directory")
    p.add_argument("--samples", type=int, default=4, help="images per prompt (official: 4)")
    p.add_argument("--steps", type=int, default=20, help="deterministic sampling steps")
    p.add_argument("--guidance", type=float, default=3.0, help="CFG scale")
    p.add_argument("--seed", type=int, default=0, help="image j of a prompt uses seed + j")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--out", required=True, help="output folder (images, progress, summary)")


def add_unigenbench_parser(sub) -> None:
    p = sub.add_parser("unigenbench", help="UniGenBench++: generate, judge, 10-column table")
    add_generation_args(p)
    p.add_argument("--prompts", required=True, help="test_prompts_{en,en_long,zh,zh_long}.csv")
    p.add_argument("--judge-prompts", required=True, help="judge_prompts.json")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL, e.g. .../v1")
    p.add_argument("--judge-model", default="QwenVL", help="model name the endpoint serves")
    p.add_argument("--judge-backend", choices=["gemini", "vllm"], default="vllm")
    p.add_argument("--api-key-env", default=None, help="environment variable holding the key")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=10)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--generate-only", action="store_true")
    mode.add_argument("--score-only", action="store_true", help="judge images already in --out")
    p.set_defaults(func=eval_unigenbench)


def eval_unigenbench(args: argparse.Namespace) -> int:
    from slas.eval import unigenbench as ugb
    from slas.eval.judge import JudgeSettings, OpenAIJudge, make_tasks, read_results, run_judgements

    judge_prompts = ugb.load_judge_prompts(args.judge_prompts)
    prompts = ugb.load_prompts(args.prompts, judge_prompts)
    if args.limit is not None:
        prompts = prompts._replace(records=prompts.records[: args.limit])
    out = Path(args.out)
    images = out / "images"
    if not args.score_only:
        _generate_unigenbench(args, prompts, images)
        if args.generate_only:
            return 0
    if not args.judge_url:
        raise SlasError("--judge-url is needed to judge the images (or pass --generate-only)")
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    settings = JudgeSettings(base_url=args.judge_url, model=args.judge_model,
                             backend=args.judge_backend, api_key=api_key,
                             timeout_s=args.timeout, max_retries=args.max_retries)
    tasks = make_tasks(prompts, judge_prompts, images, images_per_prompt=args.samples)
    progress = out / "progress.jsonl"
    stats = run_judgements(tasks, OpenAIJudge(settings), progress, judge_name=args.judge_model,
                           concurrency=args.concurrency, max_retries=args.max_retries)
    summary = ugb.aggregate(read_results(progress))
    table = ugb.format_table({Path(args.policy or args.out).name: summary})
    (out / "summary.json").write_text(json.dumps(ugb.summary_to_dict(summary), indent=1) + "\n")
    (out / "summary.md").write_text(table + "\n")
    print(f"{stats.judged} judged, {stats.skipped} already done, {summary.n_dropped} dropped "
          f"judgement(s)\n\n{table}")
    return 0


def _generate_unigenbench(args: argparse.Namespace, prompts, images: Path) -> None:
    from slas.cli_commands import load_policy, policy_dir
    from slas.eval.generate import GenerationSettings, generate_unigenbench

    backbone = load_policy(policy_dir(args.policy), args.backbone)
    settings = GenerationSettings(samples_per_prompt=args.samples, num_steps=args.steps,
                                  guidance_scale=args.guidance, seed=args.seed)
    result = generate_unigenbench(backbone, [(r.index, r.prompt) for r in prompts.records],
                                  images, settings, model_name=args.policy or args.backbone)
    print(f"images: {result.written} written, {result.skipped} already there ({images})")


def add_geneval_parser(sub) -> None:
    p = sub.add_parser("geneval", help="GenEval: generate, detect + rules, per-task table")
    add_generation_args(p)
    p.add_argument("--metadata", default=None,
                   help="evaluation_metadata.jsonl (needed unless --score-only)")
    p.add_argument("--batch-size", type=int, default=16, help="images per network batch")
    p.add_argument("--image-digits", type=int, choices=[4, 5], default=5,
                   help="image names 0000.png (4) or 00000.png (5, the official generator)")
    p.add_argument("--detector", choices=["mmdet2", "transformers", "world"], default="mmdet2",
                   help="mmdet2: the official Mask2Former (paper-comparable); transformers: a "
                   "local HF model (not comparable); world: the built-in world's verifier")
    p.add_argument("--detector-config", default=None, help="mmdet2: the mmdet config .py")
    p.add_argument("--detector-checkpoint", default=None, help="mmdet2: the weights .pth")
    p.add_argument("--detector-dir", default=None, help="transformers: the model folder")
    p.add_argument("--clip-checkpoint", default=None,
                   help="colour classifier: OpenAI ViT-L-14.pt or an open_clip checkpoint")
    p.add_argument("--clip-arch", default="ViT-L-14", help="open_clip architecture name")
    p.add_argument("--device", default=None, help="scoring device (default: cuda if available)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--generate-only", action="store_true")
    mode.add_argument("--score-only", action="store_true", help="score images already in --out")
    p.set_defaults(func=eval_geneval)


def eval_geneval(args: argparse.Namespace) -> int:
    from slas.eval.geneval_io import format_summary, load_metadata, summarize
    from slas.eval.geneval_run import score_folder, write_summary

    out = Path(args.out)
    if not args.score_only:
        if not args.metadata:
            raise SlasError("--metadata is needed to generate (evaluation_metadata.jsonl); "
                            "or pass --score-only to score images already in --out")
        records = load_metadata(args.metadata)[: args.limit]
        _generate_geneval(args, records, out)
        if args.generate_only:
            return 0
    detector, colors, scorer = _geneval_scorer(args)
    result = score_folder(out, detector, colors, scorer=scorer, max_prompts=args.limit)
    summary = summarize(result.rows)
    write_summary(out, summary, scorer)
    print(f"images: {result.scored} scored, {result.skipped} already scored "
          f"({result.results})\n\n{format_summary(summary)}", end="")
    return 0


def _generate_geneval(args: argparse.Namespace, records: list, out: Path) -> None:
    from slas.cli_commands import load_policy, policy_dir
    from slas.eval.generate import GenerationSettings, generate_geneval

    backbone = load_policy(policy_dir(args.policy), args.backbone)
    settings = GenerationSettings(samples_per_prompt=args.samples, num_steps=args.steps,
                                  guidance_scale=args.guidance, seed=args.seed,
                                  batch_size=args.batch_size)
    result = generate_geneval(backbone, records, out, settings,
                              model_name=args.policy or args.backbone,
                              image_digits=args.image_digits)
    print(f"images: {result.written} written, {result.skipped} already there ({out})")


def _need(args: argparse.Namespace, *flags: str) -> None:
    for flag in flags:
        if not getattr(args, flag.lstrip("-").replace("-", "_")):
            raise SlasError(f"{flag} is needed with --detector {args.detector}")


def _geneval_scorer(args: argparse.Namespace) -> tuple:
    """(detector, colour classifier, description recorded with the results) for --detector."""
    if args.detector == "world":
        from slas.world.detect import WorldColorClassifier, WorldDetector

        return WorldDetector(), WorldColorClassifier(), {"detector": "world",
                                                         "color_classifier": "world"}
    import torch

    from slas.eval.detectors import ClipColorClassifier, Mmdet2Detector, TransformersDetector

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.detector == "mmdet2":
        _need(args, "--detector-config", "--detector-checkpoint", "--clip-checkpoint")
        detector = Mmdet2Detector(args.detector_config, args.detector_checkpoint, device)
        where = {"detector_config": Path(args.detector_config).name,
                 "detector_checkpoint": Path(args.detector_checkpoint).name}
    else:
        _need(args, "--detector-dir", "--clip-checkpoint")
        detector = TransformersDetector(args.detector_dir, device)
        where = {"detector_dir": Path(args.detector_dir).name}
    colors = ClipColorClassifier(args.clip_checkpoint, args.clip_arch, device)
    return detector, colors, {"detector": args.detector, **where, "color_classifier": "clip",
                              "clip_checkpoint": Path(args.clip_checkpoint).name,
                              "clip_arch": args.clip_arch}


GENEVAL_COLUMNS = {"single_object": "Single Obj.", "two_object": "Two Obj.", "counting": "Counting",
                   "colors": "Colors", "position": "Position", "color_attr": "Color Attri."}


def add_summary_parser(sub) -> None:
    p = sub.add_parser("summary", help="paper-style tables of several evaluation folders")
    p.add_argument("dirs", nargs="+", help="output folders of `slas eval geneval|unigenbench`")
    p.set_defaults(func=eval_summary)


def eval_summary(args: argparse.Namespace) -> int:
    """Print one Markdown table per benchmark, one row per folder (its summary.json)."""
    from slas.eval.unigenbench import PRIMARY_DIMENSIONS

    geneval, unigen = [], []
    for d in args.dirs:
        path = Path(d) / "summary.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise SlasError(f"{path}: cannot read an evaluation summary ({err}); run `slas eval "
                            "geneval` or `slas eval unigenbench` with --out there first") from None
        name = Path(d).resolve().name
        if "per_tag" in data:
            cells = [data["per_tag"].get(t) for t in GENEVAL_COLUMNS] + [data["overall"]]
            geneval.append((name, [f"{v:.2f}" if v is not None else "–" for v in cells]))
        elif "primary_dimensions" in data:
            prim = data["primary_dimensions"]
            cells = [prim[p]["accuracy"] if p in prim else None for p in PRIMARY_DIMENSIONS]
            cells.append(data["overall"])
            unigen.append((name, [f"{100 * v:.2f}" if v is not None else "–" for v in cells]))
        else:
            raise SlasError(f"{path}: neither a GenEval nor a UniGenBench summary")
    if geneval:
        print(_markdown(["model", *GENEVAL_COLUMNS.values(), "Overall"], geneval))
    if unigen:
        print(_markdown(["model", *PRIMARY_DIMENSIONS, "Overall"], unigen))
    return 0


def _markdown(head: list[str], rows: list[tuple[str, list[str]]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows]
    return "\n".join(lines) + "\n"
