"""Pretraining of the world's base policy with the flow-matching objective.

Rectified-flow / FLUX / SD3 objective (DESIGN section 3): for clean latents ``x0`` (renders mapped
to [-1, 1]), noise ``eps ~ N(0, I)`` and ``sigma ~ U(0, 1)``, ``x_sigma = (1 - sigma) x0 + sigma
eps`` and the loss is ``|| v_theta(x_sigma, sigma, c) - (eps - x0) ||^2`` (mean over elements).
The UNet and the text encoder are trained jointly; a fraction ``caption_dropout`` of captions is
replaced by the empty caption so that classifier-free guidance works.

sigma is uniform by default: at 32x32 the layout is decided at high sigma and the anti-aliased
edges at low sigma, and the evaluation sampler takes uniform Euler steps (shift 1), so no band
deserves less weight; SD3's logit-normal weighting (``sigma_sampling="logit_normal"``) is kept
as a named option.

Every step renders a fresh batch (``sample_pairs`` + ``render``, ~free next to the network) with
the seed ``seed * 1_000_003 + step``; sigma, noise and the dropout mask come from a generator with
the same seed, so a run is deterministic in ``seed`` and its step count (constant learning rate
after warm-up, so the step-k checkpoint of a long run equals the result of ``steps=k``). The saved
weights are an exponential moving average (EMA) of the trained ones.

Run: ``python -m slas.world.pretrain --out DIR --minutes 35`` (or ``--steps N``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from slas.backbones.world import WorldBackbone
from slas.errors import SlasError
from slas.sampling.schedules import shift_sigmas
from slas.world.captions import sample_pairs
from slas.world.render import render

SigmaSampling = Literal["uniform", "logit_normal"]
_SEED_STRIDE = 1_000_003


class PretrainResult(NamedTuple):
    """Outcome of ``pretrain``.

    Attributes:
        out_dir: directory holding the final (EMA) policy.
        steps: optimiser steps taken.
        seconds: wall time of the training loop.
        losses: per-step training loss (before EMA), length ``steps``.
        checkpoints: intermediate policy directories, in order.
    """

    out_dir: Path
    steps: int
    seconds: float
    losses: list[float]
    checkpoints: list[Path]


def step_seed(seed: int, step: int) -> int:
    """Seed of step ``step``'s data, noise and sigma (deterministic, distinct per step)."""
    return seed * _SEED_STRIDE + step


def training_batch(
    step: int, *, batch_size: int, seed: int, caption_dropout: float
) -> tuple[Tensor, list[str], torch.Generator]:
    """Freshly rendered batch of step ``step``.

    Returns:
        ``(x0 [B, 3, 32, 32] in [-1, 1], prompts (dropped ones are ""), generator)``; the
        generator (seeded by ``step_seed``) has drawn the dropout mask and is used next for sigma
        and noise.
    """
    s = step_seed(seed, step)
    scenes, metas = sample_pairs(batch_size, seed=s)
    x0 = WorldBackbone.images_to_latents(render(scenes, seed=s))
    gen = torch.Generator().manual_seed(s)
    keep = torch.rand(batch_size, generator=gen) >= caption_dropout
    prompts = [m["prompt"] if k else "" for m, k in zip(metas, keep.tolist(), strict=True)]
    return x0, prompts, gen


def sample_sigmas(n: int, gen: torch.Generator, sampling: SigmaSampling) -> Tensor:
    """Training noise levels ``[n]`` in (0, 1): uniform, or SD3's logit-normal(0, 1)."""
    if sampling == "uniform":
        return torch.rand(n, generator=gen)
    if sampling == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen))
    raise SlasError(f"sigma_sampling must be 'uniform' or 'logit_normal', got {sampling!r}")


def flow_matching_loss(v_pred: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
    """Mean squared error to the flow-matching target ``v = eps - x0``; all ``[B, 3, H, W]``."""
    return torch.mean((v_pred.float() - (noise - x0)) ** 2)


def _check_args(minutes: float | None, steps: int | None, batch_size: int, lr: float,
                caption_dropout: float, ema_decay: float) -> None:
    if minutes is None and steps is None:
        raise SlasError("pretrain: give minutes=... or steps=... (e.g. --minutes 35)")
    if steps is not None and steps < 1 or minutes is not None and minutes <= 0:
        raise SlasError(f"pretrain: steps must be >= 1 and minutes > 0 (got {steps}, {minutes})")
    if batch_size < 1 or not lr > 0 or not 0 <= caption_dropout < 1 or not 0 <= ema_decay < 1:
        raise SlasError(f"pretrain: need batch_size >= 1, lr > 0, caption_dropout in [0, 1), "
                        f"ema_decay in [0, 1); got {batch_size}, {lr}, {caption_dropout}, "
                        f"{ema_decay}")


def _save_ema(backbone: WorldBackbone, params: list[Tensor], ema: list[Tensor], path: Path,
              info: dict) -> Path:
    """Save the policy with the EMA weights swapped in, then restore the trained ones."""
    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(params, ema)
        backbone.info = info
        backbone.save_pretrained(path)
        torch._foreach_copy_(params, live)
    return path


def pretrain(
    out_dir: str | Path,
    *,
    minutes: float | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    caption_dropout: float = 0.1,
    sigma_sampling: SigmaSampling = "uniform",
    sigma_shift: float = 1.0,
    ema_decay: float = 0.995,
    log_every: int = 10,
    eval_every: int | None = None,
    save_every_minutes: float | None = None,
    unet_kwargs: dict | None = None,
    text_kwargs: dict | None = None,
    init_from: str | Path | None = None,
) -> PretrainResult:
    """Train the world policy from scratch and save it (EMA weights) to ``out_dir``.

    Args:
        out_dir: output directory: the policy, ``pretrain_log.jsonl`` and ``checkpoints/``.
        minutes: stop after this much wall time (checked after each step).
        steps: stop after this many steps (whichever of ``minutes`` / ``steps`` comes first).
        batch_size: images per step.
        lr: AdamW learning rate (linear warm-up over ``warmup_steps``, then constant).
        warmup_steps: warm-up length.
        weight_decay: AdamW weight decay.
        grad_clip: max global gradient norm.
        seed: seed of the initialisation, data, sigma and noise.
        caption_dropout: probability of training on the empty caption (for CFG).
        sigma_sampling: ``"uniform"`` (default, see module docstring) or ``"logit_normal"``.
        sigma_shift: SD3 time shift applied to the drawn sigma (``shift_sigmas``); ``s > 1``
            moves training towards high noise, where the prompt alone must set each object's
            colour and place (a colour is still visible in ``x_sigma`` at moderate noise, so
            without it the network learns to copy colours from the noise).
        ema_decay: EMA decay (with the usual ``(1 + k) / (10 + k)`` ramp); 0 saves the raw weights.
        log_every: steps per log line (stdout and ``pretrain_log.jsonl``).
        eval_every: if set, every this many steps evaluate the EMA policy with
            ``slas.world.generate.evaluate_policy`` (1 sample per evaluation prompt) and log it.
        save_every_minutes: if set, save an EMA checkpoint to ``checkpoints/step_XXXXXX`` this
            often.
        unet_kwargs: overrides of ``slas.backbones.world.unet_config`` arguments.
        text_kwargs: overrides of ``slas.backbones.world.text_encoder_config`` arguments.
        init_from: if set, a policy directory whose weights initialise the networks (a warm
            start with a fresh optimiser, warm-up and step counter; the architecture arguments
            must match). Not a resume: the data seeds restart at step 0, so pass another
            ``seed`` to continue on fresh batches.

    Returns:
        ``PretrainResult``.
    """
    _check_args(minutes, steps, batch_size, lr, caption_dropout, ema_decay)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = WorldBackbone.create(unet_kwargs=unet_kwargs, text_kwargs=text_kwargs, seed=seed)
    if init_from is not None:
        start_from = WorldBackbone.from_pretrained(init_from)
        backbone.unet.load_state_dict(start_from.unet.state_dict())
        backbone.text_encoder.load_state_dict(start_from.text_encoder.state_dict())
    backbone.text_encoder.requires_grad_(True)  # trained jointly here, frozen during RL
    backbone.unet.train()
    params = list(backbone.unet.parameters()) + list(backbone.text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    settings = {"batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps, "seed": seed,
                "caption_dropout": caption_dropout, "sigma_sampling": sigma_sampling,
                "sigma_shift": sigma_shift,
                "ema_decay": ema_decay, "grad_clip": grad_clip, "weight_decay": weight_decay,
                "init_from": None if init_from is None else Path(init_from).name}
    log_path = out_dir / "pretrain_log.jsonl"
    log_path.write_text("")
    losses: list[float] = []
    checkpoints: list[Path] = []
    start = last_save = time.perf_counter()
    step = 0
    while (steps is None or step < steps) and (
            minutes is None or time.perf_counter() - start < 60 * minutes):
        x0, prompts, gen = training_batch(step, batch_size=batch_size, seed=seed,
                                          caption_dropout=caption_dropout)
        sigma = shift_sigmas(sample_sigmas(batch_size, gen, sigma_sampling), sigma_shift)
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        hidden = backbone.encode_ids(backbone.tokenizer.encode(prompts))
        loss = flow_matching_loss(backbone.velocity(x_t, sigma, hidden), x0, noise)
        if not torch.isfinite(loss):
            raise SlasError(f"pretrain: non-finite loss at step {step}; lower --lr (now {lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(warmup_steps, 1))
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        losses.append(loss.item())
        step += 1
        elapsed = time.perf_counter() - start
        if step % log_every == 0 or step == steps:
            _log(log_path, {"step": step, "loss": _mean(losses[-log_every:]),
                            "lr": opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 1),
                            "s_per_step": round(elapsed / step, 3)})
        if eval_every and step % eval_every == 0:
            _log(log_path, _evaluate(backbone, params, ema, step))
        if save_every_minutes and time.perf_counter() - last_save >= 60 * save_every_minutes:
            last_save = time.perf_counter()
            info = {"pretrain": {**settings, "steps": step, "minutes": round(elapsed / 60, 2)}}
            checkpoints.append(_save_ema(backbone, params, ema,
                                         out_dir / "checkpoints" / f"step_{step:06d}", info))
    seconds = time.perf_counter() - start
    info = {"pretrain": {**settings, "steps": step, "minutes": round(seconds / 60, 2)}}
    _save_ema(backbone, params, ema, out_dir, info)
    return PretrainResult(out_dir, step, seconds, losses, checkpoints)


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def _log(path: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _evaluate(backbone: WorldBackbone, params: list[Tensor], ema: list[Tensor], step: int) -> dict:
    """World-GenEval of the EMA weights (1 sample per evaluation prompt, CFG 3, 20 steps)."""
    from slas.world.captions import eval_prompts
    from slas.world.generate import evaluate_policy

    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(params, ema)
    result = evaluate_policy(backbone, eval_prompts(), samples_per_prompt=1)
    with torch.no_grad():
        torch._foreach_copy_(params, live)
    return {"step": step, "eval_overall": result.overall,
            "eval_per_tag": {k: round(v, 4) for k, v in result.per_tag.items()}}


def main(argv: list[str] | None = None) -> PretrainResult:
    """Command-line entry point (``python -m slas.world.pretrain --help``)."""
    p = argparse.ArgumentParser(description="Pretrain the world's base policy (flow matching).")
    p.add_argument("--out", required=True, help="output directory for the policy")
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--sigma-sampling", choices=["uniform", "logit_normal"], default="uniform")
    p.add_argument("--sigma-shift", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--save-every-minutes", type=float, default=None)
    p.add_argument("--init-from", default=None, help="policy directory to warm-start from")
    a = p.parse_args(argv)
    result = pretrain(a.out, minutes=a.minutes, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                      seed=a.seed, caption_dropout=a.caption_dropout,
                      sigma_sampling=a.sigma_sampling, sigma_shift=a.sigma_shift,
                      ema_decay=a.ema_decay,
                      log_every=a.log_every, eval_every=a.eval_every,
                      save_every_minutes=a.save_every_minutes, init_from=a.init_from)
    print(json.dumps({"done": True, "steps": result.steps, "seconds": round(result.seconds, 1),
                      "out_dir": str(result.out_dir)}), flush=True)
    return result


if __name__ == "__main__":
    main()
