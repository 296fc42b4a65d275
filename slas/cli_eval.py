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
