"""Batched sampling from a flow-matching backbone and world-GenEval evaluation of a policy.

Sampling is the deterministic Euler ODE of the flow (``slas.sampling.steps.flow_ode_step``) over
``shift_sigmas(linear_sigmas(num_steps), shift)`` with classifier-free guidance run as one 2N
forward per step (``Backbone.predict``). Evaluation follows GenEval (djghosh13/geneval): every
image is judged by the rule engine (here through the world's programmatic detector,
``slas.world.detect.verify``), a tag's score is the mean over its images, and Overall is the
unweighted mean over the tags (macro average).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from slas.backbones.base import Backbone
from slas.errors import SlasError
from slas.eval.generate import sample_latents
from slas.sampling.schedules import linear_sigmas, shift_sigmas


class WorldEvalResult(NamedTuple):
    """World-GenEval of a policy.

    Attributes:
        per_tag: tag -> fraction of its images judged correct.
        overall: mean of ``per_tag`` over the tags present (GenEval's macro average).
        images: ``[P*K, 3, 32, 32]`` in [0, 1], prompt-major (prompt i's samples are rows
            ``i*K .. i*K + K - 1``).
        correct: per image, the verifier's verdict (same order as ``images``).
    """

    per_tag: dict[str, float]
    overall: float
    images: Tensor
    correct: list[bool]


def initial_noise(num_samples: int, latent_shape: Sequence[int], seed: int) -> Tensor:
    """Standard normal starting latents ``[num_samples, *latent_shape]``, deterministic in
    ``seed`` and independent of how sampling is later split into batches."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((num_samples, *latent_shape), generator=gen)


def sample_images(
    backbone: Backbone,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int,
    num_steps: int = 20,
    guidance_scale: float = 3.0,
    shift: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """Generate ``K = samples_per_prompt`` images for each of ``P`` prompts with the Euler ODE.

    Args:
        backbone: a ``prediction_type == "flow"`` backbone.
        prompts: P prompts.
        samples_per_prompt: K >= 1.
        num_steps: Euler steps from sigma = 1 to 0.
        guidance_scale: CFG weight ``w`` (1 disables guidance and its extra branch).
        shift: SD3 time shift of the sigma grid (1 = uniform steps).
        seed: seed of the starting noise (sample j uses row j of ``initial_noise``).
        batch_size: images per network batch (memory knob; results do not depend on it beyond
            floating-point reduction order).

    Returns:
        ``[P*K, 3, H, W]`` float32 images in [0, 1], prompt-major.
    """
    if backbone.prediction_type != "flow":
        raise SlasError(f"sample_images needs a flow backbone, got prediction_type "
                        f"{backbone.prediction_type!r}; use the DDIM sampler for it")
    if samples_per_prompt < 1 or batch_size < 1 or not prompts:
        raise SlasError(f"sample_images: need prompts, samples_per_prompt >= 1 and batch_size >= 1"
                        f" (got {len(prompts)} prompts, {samples_per_prompt}, {batch_size})")
    sigmas = shift_sigmas(linear_sigmas(num_steps), shift)
    n = len(prompts) * samples_per_prompt
    noise = initial_noise(n, backbone.latent_shape, seed)
    device = getattr(backbone, "device", torch.device("cpu"))
    out = []
    with torch.inference_mode():
        cond = backbone.encode_prompts(list(prompts))
        rows = torch.arange(len(prompts)).repeat_interleave(samples_per_prompt)
        for lo in range(0, n, batch_size):
            idx = rows[lo:lo + batch_size]
            x = sample_latents(backbone, cond.select(idx), noise[lo:lo + batch_size].to(device),
                               sigmas, guidance_scale)
            out.append(backbone.decode(x).cpu())
    return torch.cat(out)


def geneval_scores(tags: Sequence[str], correct: Sequence[bool]) -> tuple[dict[str, float], float]:
    """GenEval aggregation: per-tag image accuracy and their unweighted mean.

    Args:
        tags: ``[M]`` tag of each image.
        correct: ``[M]`` verdict of each image.

    Returns:
        ``(per_tag, overall)``; tags in first-seen order.
    """
    if len(tags) != len(correct) or not tags:
        raise SlasError(f"geneval_scores: need one verdict per image ({len(tags)} tags, "
                        f"{len(correct)} verdicts)")
    hits: dict[str, list[bool]] = {}
    for tag, ok in zip(tags, correct, strict=True):
        hits.setdefault(tag, []).append(bool(ok))
    per_tag = {t: sum(v) / len(v) for t, v in hits.items()}
    return per_tag, sum(per_tag.values()) / len(per_tag)


def evaluate_policy(
    backbone: Backbone,
    prompts_with_metadata: Sequence[Mapping],
    *,
    samples_per_prompt: int = 4,
    num_steps: int = 20,
    guidance_scale: float = 3.0,
    shift: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
) -> WorldEvalResult:
    """World-GenEval of a policy: sample, verify every image, macro-average over tags.

    Args:
        backbone: a flow backbone of the world (32x32 RGB).
        prompts_with_metadata: GenEval metadata records with ``prompt`` and ``tag`` (e.g.
            ``slas.world.captions.eval_prompts()``).
        samples_per_prompt: images per record (GenEval uses 4).
        num_steps, guidance_scale, shift, seed, batch_size: as in ``sample_images``.

    Returns:
        ``WorldEvalResult``.
    """
    from slas.world.detect import verify  # the verifier is optional at import time

    metas = list(prompts_with_metadata)
    for i, m in enumerate(metas):
        if "prompt" not in m or "tag" not in m:
            raise SlasError(f"evaluate_policy: record {i} lacks 'prompt' or 'tag'; use records "
                            f"from slas.world.captions.eval_prompts()")
    images = sample_images(backbone, [m["prompt"] for m in metas],
                           samples_per_prompt=samples_per_prompt, num_steps=num_steps,
                           guidance_scale=guidance_scale, shift=shift, seed=seed,
                           batch_size=batch_size)
    per_image = [m for m in metas for _ in range(samples_per_prompt)]
    correct = [bool(r.correct) for r in verify(images, per_image)]
    per_tag, overall = geneval_scores([m["tag"] for m in per_image], correct)
    return WorldEvalResult(per_tag, overall, images, correct)
