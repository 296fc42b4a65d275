"""GRPO and SLAS on the world, the whole algorithm in one file.

    python examples/minimal_world_grpo.py --estimator slas --gamma 0.5
    python examples/minimal_world_grpo.py --estimator grpo            # the DanceGRPO baseline

One training step is ``rollout -> score -> advantages -> update`` (DESIGN section 2), written
here with only the pure modules of ``slas`` (schedules, the flow SDE step, advantage estimators,
the PPO-clip loss) plus the world's policy, proxy rewards and verifier. ``slas train`` runs the
same algorithm with checkpoints, logging and several processes. Notation (arXiv 2605.10937,
DanceGRPO): a *group* is the G images of one prompt, the *batch* is all P x G images of a step;
flow models use ``x_sigma = (1 - sigma) x0 + sigma eps`` and predict ``v = eps - x0``.

It prints one line per step: mean reward, mean |A|, the within-group and batch reward stds (whose
ratio is what separates GRPO from SLAS), approx_kl, clipfrac, and max |rho - 1| over the chunks
before the step's first optimiser update, which is exactly 0 (DESIGN 3.1 invariant).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from slas.advantages import batch_std, clamp_advantages, get_advantage_fn, group_stats
from slas.backbones.base import Conditioning
from slas.backbones.world import DEFAULT_POLICY_DIR, WorldBackbone
from slas.config import RewardConfig
from slas.errors import SlasError
from slas.losses import ppo_clip_loss
from slas.rewards import REWARDS, get_reward
from slas.sampling.schedules import linear_sigmas, shift_sigmas
from slas.sampling.steps import flow_sde_step
from slas.world.captions import TAGS, eval_prompts, train_prompts
from slas.world.generate import evaluate_policy

SHIFT = 3.0  # DanceGRPO FLUX: sigma = 3t / (1 + 2t), t = linspace(1, 0, T + 1)
CLIP_RANGE = 1e-4  # PPO epsilon of DanceGRPO / Flow-GRPO / DDPO (log-probs are element means)
ADV_CLAMP = 5.0  # every reference clamps advantages to +-5
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 1e-4
EVAL_SAMPLES = 2  # images per evaluation prompt (GenEval uses 4; 2 keeps the example quick)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--estimator", default="slas", choices=["grpo", "mean_only", "global_std",
                                                           "slas"])
    p.add_argument("--gamma", type=float, default=0.5, help="SLAS exponent: A = sign(z)|z|^(1+g)")
    p.add_argument("--steps", type=int, default=50, help="training steps")
    p.add_argument("--prompts-per-step", type=int, default=8, help="P")
    p.add_argument("--group-size", type=int, default=8, help="G, images per prompt")
    p.add_argument("--sample-steps", type=int, default=10, help="T, SDE steps per rollout")
    p.add_argument("--eta", type=float, default=0.3, help="DanceGRPO noise level (FLUX: 0.3)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW lr (DanceGRPO full: 1e-5)")
    p.add_argument("--reward", default=None, help="a name of slas.rewards.REWARDS or "
                   "'saturation'; default world_pref (world_clip if not registered), "
                   "'saturation' with --tiny")
    p.add_argument("--policy", default=str(DEFAULT_POLICY_DIR), help="world policy directory")
    p.add_argument("--tiny", action="store_true", help="small random-init policy (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=10, help="world-GenEval every N steps "
                   "and after the last (0 = never)")
    p.add_argument("--eval-per-tag", type=int, default=4, help="evaluation prompts per tag")
    p.add_argument("--micro-batch", type=int, default=8, help="images per forward, the same in "
                   "rollout and update")
    p.add_argument("--train-fraction", type=float, default=0.6, help="fraction of the first "
                   "T-1 steps trained (DanceGRPO FLUX: 0.6)")
    p.add_argument("--updates-per-step", type=int, default=2, help="optimiser steps per "
                   "training step; the batch is split evenly between them")
    args = p.parse_args(argv)
    n_micro = math.ceil(args.prompts_per_step * args.group_size / max(args.micro_batch, 1))
    for ok, name, fix in [
        (args.group_size >= 2, "group_size", "groups need two images; use e.g. 8"),
        (args.sample_steps >= 2, "sample_steps", "the last step is never trained; use >= 2"),
        (1 <= args.prompts_per_step <= len(train_prompts()), "prompts_per_step",
         f"use 1 to {len(train_prompts())} (the number of training prompts)"),
        (args.micro_batch >= 1, "micro_batch", "use >= 1"),
        (1 <= args.updates_per_step <= n_micro, "updates_per_step",
         f"use 1 to the number of micro-batches ({n_micro})"),
        (0 < args.train_fraction <= 1, "train_fraction", "use a value in (0, 1]"),
    ]:
        if not ok:
            flag = "--" + name.replace("_", "-")
            raise SlasError(f"{flag} {getattr(args, name)} is invalid: {fix}")
    return args


# ---------------------------------------------------------------- policy and reward
# The committed world policy (pixel-space flow-matching UNet) and a proxy reward; --tiny swaps in
# a random policy and an image statistic so that tests run in seconds.

def load_policy(args: argparse.Namespace) -> WorldBackbone:
    if not args.tiny:
        return WorldBackbone.from_pretrained(args.policy)
    return WorldBackbone.create(  # ~65k parameters: a step takes well under a second
        unet_kwargs=dict(block_out_channels=(8, 16), attention_levels=(False, True),
                         norm_num_groups=4, attention_heads=2),
        text_kwargs=dict(hidden_size=16, num_heads=2), seed=args.seed)


def saturation(images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
    """Mean chroma ``max_c - min_c`` per image ``[N]`` of ``images [N, 3, H, W]``: a stand-in
    reward for the random ``--tiny`` policy, whose images no proxy reward could judge."""
    return (images.amax(dim=1) - images.amin(dim=1)).mean(dim=(1, 2))


def load_reward(args: argparse.Namespace) -> tuple[str, Callable[..., Tensor]]:
    """``(name, fn)`` with ``fn(images [N, 3, H, W], prompts [N], metadata [N]) -> [N]``."""
    name = args.reward or ("saturation" if args.tiny else
                           "world_pref" if "world_pref" in REWARDS else "world_clip")
    if name == "saturation":
        return name, saturation
    if name not in REWARDS:
        raise SlasError(f"--reward {name} is not registered; use one of: "
                        f"{', '.join(['saturation', *REWARDS])}")
    return name, get_reward(name, RewardConfig(names=[name]), "cpu")


# ---------------------------------------------------------------- 1. prompts
# P distinct prompts from the training split, each repeated G times: one group per prompt.
# The text encoder is frozen, so the prompts are encoded once per step and reused in the update.

class Batch(NamedTuple):
    records: list[dict]  # N metadata records (each prompt repeated G times)
    cond: Conditioning  # N rows of text states, encoded once per step
    group_ids: Tensor  # [N] prompt index of each image


def pick_prompts(backbone: WorldBackbone, pool: list[dict], args: argparse.Namespace,
                 gen: torch.Generator) -> Batch:
    """P distinct training prompts, each repeated G times (a GRPO group)."""
    chosen = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:args.prompts_per_step]]
    group_ids = torch.arange(len(chosen)).repeat_interleave(args.group_size)
    cond = backbone.encode_prompts([r["prompt"] for r in chosen]).select(group_ids)
    return Batch([chosen[i] for i in group_ids.tolist()], cond, group_ids)


# ---------------------------------------------------------------- 2. rollout
# Euler-Maruyama on the reverse flow SDE with DanceGRPO's constant noise g = eta (DESIGN 3.1):
#   mu = x + dsigma [v + g^2 / (2 sigma) eps_hat],  s = g sqrt(|dsigma|),  x' = mu + s z,
# over the shift-3 sigmas; the Gaussian log-density of each x' is the "old" policy's log-prob.

class Rollout(NamedTuple):
    latents: Tensor  # [N, T+1, 3, 32, 32]; latents[:, 0] is the initial noise
    log_probs: Tensor  # [N, T] log pi_old of each recorded transition


def rollout(backbone: WorldBackbone, batch: Batch, sigmas: Tensor, args: argparse.Namespace,
            gen: torch.Generator) -> Rollout:
    """Sample N trajectories over ``sigmas [T+1]`` in micro-batches, without gradients; record
    every x and ``log N(x'; mu, s^2)`` averaged over latent elements."""
    n, steps = len(batch.records), len(sigmas) - 1
    noise = torch.randn(n, steps + 1, *backbone.latent_shape, generator=gen)
    lats, lps = [], []
    with torch.inference_mode():
        for lo in range(0, n, args.micro_batch):
            rows = slice(lo, lo + args.micro_batch)
            x, cond = noise[rows, 0], batch.cond.select(torch.arange(n)[rows])
            traj, lp = [x], []
            for i in range(steps):
                v = backbone.predict(x, sigmas[i].expand(len(x)), cond, guidance_scale=1.0)
                out = flow_sde_step(v, x, sigmas[i], sigmas[i + 1], noise_type="dance",
                                    eta=args.eta, noise=noise[rows, i + 1])
                x = out.prev_sample
                traj.append(x)
                lp.append(out.log_prob)
            lats.append(torch.stack(traj, 1))
            lps.append(torch.stack(lp, 1))
    return Rollout(torch.cat(lats).clone(), torch.cat(lps).clone())  # clone: leave inference mode


# ---------------------------------------------------------------- 3. score
# r_i = R(decode(x_0^i), prompt_i): one scalar per image from the (imperfect) proxy reward.

def score(backbone: WorldBackbone, reward_fn: Callable[..., Tensor], batch: Batch,
          roll: Rollout) -> Tensor:
    """Rewards ``[N]`` of the decoded final samples."""
    with torch.inference_mode():
        images = backbone.decode(roll.latents[:, -1])
        r = reward_fn(images, [m["prompt"] for m in batch.records], batch.records)
    return r.float().clone()


# ---------------------------------------------------------------- 4. advantages
# GRPO: A = (r - mean_g) / std_g.  SLAS (arXiv 2605.10937): dr = r - mean_g (Eq. 9 without the
# std), z = dr / std_batch(r), A = sign(z) |z|^(1 + gamma): gaps below one batch std are damped.

def advantages(rewards: Tensor, group_ids: Tensor,
               args: argparse.Namespace) -> tuple[Tensor, dict]:
    """Advantages ``[N]`` of ``rewards [N]`` grouped by ``group_ids [N]`` (DESIGN 3.2), clamped
    to +-5, and their statistics. When the within-group std is much smaller than the batch std,
    grpo inflates reward noise into full-size advantages; slas does not."""
    adv = get_advantage_fn(args.estimator, gamma=args.gamma)(rewards, group_ids)
    adv = clamp_advantages(adv, ADV_CLAMP)
    stats = {"reward": float(rewards.mean()), "adv_abs": float(adv.abs().mean()),
             "std_group": float(group_stats(rewards, group_ids).std.mean()),
             "std_batch": float(batch_std(rewards))}
    return adv, stats


# ---------------------------------------------------------------- 5. update
# PPO-clip per (image, trained step) (DESIGN 3.3): rho = exp(log pi_theta - log pi_old),
#   l = max(-A rho, -A clip(rho, 1 - eps, 1 + eps)),  eps = 1e-4,
# averaged over pairs; AdamW with the gradient norm clipped to 1.

def update(backbone: WorldBackbone, optimizer: torch.optim.Optimizer, batch: Batch,
           roll: Rollout, adv: Tensor, sigmas: Tensor, args: argparse.Namespace,
           gen: torch.Generator) -> dict:
    """Recompute each trained transition's log-prob with gradients (``prev_sample=``) and take
    ``--updates-per-step`` optimiser steps over ``adv [N]``.

    DanceGRPO drops the last step and trains a random floor((T-1) frac) of the rest; here one
    draw serves the whole batch, so every (micro-batch, step) chunk repeats a rollout forward
    exactly and, before the first optimiser step, rho is exactly 1.
    """
    n, steps = roll.log_probs.shape
    k = max(1, math.floor((steps - 1) * args.train_fraction))
    trained = torch.randperm(steps - 1, generator=gen)[:k].sort().values.tolist()
    starts, u = list(range(0, n, args.micro_batch)), args.updates_per_step
    parts = [starts[j * len(starts) // u:(j + 1) * len(starts) // u] for j in range(u)]
    params = backbone.trainable_parameters()
    sums = {"approx_kl": 0.0, "clipfrac": 0.0}
    first_dev, chunks = 0.0, 0
    for j, part in enumerate(p for p in parts if p):
        for lo in part:
            rows = slice(lo, lo + args.micro_batch)
            cond = batch.cond.select(torch.arange(n)[rows])
            for i in trained:
                x, prev = roll.latents[rows, i], roll.latents[rows, i + 1]
                v = backbone.predict(x, sigmas[i].expand(len(x)), cond, guidance_scale=1.0)
                new = flow_sde_step(v, x, sigmas[i], sigmas[i + 1], noise_type="dance",
                                    eta=args.eta, prev_sample=prev)
                out = ppo_clip_loss(new.log_prob, roll.log_probs[rows, i], adv[rows],
                                    clip_range=CLIP_RANGE)
                (out.loss / (len(part) * k)).backward()
                if j == 0:  # still the policy that sampled: rho == 1 bit for bit
                    dev = max(float(out.ratio_max) - 1.0, 1.0 - float(out.ratio_min))
                    first_dev = max(first_dev, dev)
                sums["approx_kl"] += float(out.approx_kl)
                sums["clipfrac"] += float(out.clipfrac)
                chunks += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {**{key: v / chunks for key, v in sums.items()}, "grad_norm": float(grad_norm),
            "first_ratio_dev": first_dev}


# ---------------------------------------------------------------- 6. evaluate
# The true metric, out of domain: world-GenEval (GenEval's rules, the world's verifier) on
# held-out prompts, deterministic ODE sampling. Reward hacking shows as reward up, GenEval down.

def evaluate(backbone: WorldBackbone, per_tag: int, seed: int) -> float:
    """World-GenEval overall (macro average over the six tags) of ``per_tag`` held-out prompts
    per tag, sampled with the deterministic ODE, checked by the world's verifier."""
    rows = eval_prompts()
    subset = []
    for tag in TAGS:
        mine = [r for r in rows if r["tag"] == tag]
        subset += mine[:: max(1, len(mine) // per_tag)][:per_tag]
    return evaluate_policy(backbone, subset, samples_per_prompt=EVAL_SAMPLES, seed=seed).overall


# ---------------------------------------------------------------- the loop

def main(argv: list[str] | None = None) -> dict:
    """Train; print one line per step; return the final step's metrics (plus ``geneval`` if
    evaluated, ``first_ratio_dev`` = max |rho - 1| before each step's first optimiser update,
    over all steps, and ``param_change`` = L2 distance the trainable weights moved)."""
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    backbone = load_policy(args)
    reward_name, reward_fn = load_reward(args)
    params = backbone.trainable_parameters()
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=WEIGHT_DECAY)
    sigmas = shift_sigmas(linear_sigmas(args.sample_steps), SHIFT)
    pool = train_prompts()
    print(f"{args.estimator} (gamma {args.gamma}) | reward {reward_name} | "
          f"{sum(p.numel() for p in params):,} trainable parameters | sigmas "
          f"{[round(s, 3) for s in sigmas.tolist()]}")
    metrics: dict = {}
    worst_dev = 0.0
    for step in range(1, args.steps + 1):
        tic = time.perf_counter()
        batch = pick_prompts(backbone, pool, args, gen)
        roll = rollout(backbone, batch, sigmas, args, gen)
        rewards = score(backbone, reward_fn, batch, roll)
        adv, adv_stats = advantages(rewards, batch.group_ids, args)
        upd = update(backbone, optimizer, batch, roll, adv, sigmas, args, gen)
        worst_dev = max(worst_dev, upd["first_ratio_dev"])
        metrics = {**metrics, **adv_stats, **upd, "s_per_step": time.perf_counter() - tic}
        print(f"step {step:4d} | reward {metrics['reward']:.4f} | |A| {metrics['adv_abs']:.3f} "
              f"| std group {metrics['std_group']:.4f} batch {metrics['std_batch']:.4f} "
              f"| approx_kl {metrics['approx_kl']:.2e} | clipfrac {metrics['clipfrac']:.3f} "
              f"| first rho-1 {upd['first_ratio_dev']:.0e} | {metrics['s_per_step']:.1f} s/step")
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
            metrics["geneval"] = evaluate(backbone, args.eval_per_tag, args.seed)
            print(f"           world-GenEval overall {metrics['geneval']:.3f}")
    metrics["first_ratio_dev"] = worst_dev
    with torch.no_grad():
        moved = sum(((p - s) ** 2).sum() for p, s in zip(params, start, strict=True))
    metrics["param_change"] = float(moved) ** 0.5
    return metrics


if __name__ == "__main__":
    try:
        main()
    except SlasError as err:
        raise SystemExit(f"error: {err}") from None
