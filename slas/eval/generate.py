"""Generate benchmark images from any backbone into the official folder layouts, resumably.

Layouts:
- GenEval (djghosh13/geneval ``generation/diffusers_generate.py``, read by
  ``evaluation/evaluate_images.py``): ``<root>/<%05d prompt index>/metadata.jsonl`` (the
  prompt's metadata line) and ``<root>/<idx>/samples/<%0Nd>.png``;
- UniGenBench (CodeGoat24/UniGenBench README): ``<dir>/<index>_<j>.png``.

Sampling is deterministic, chosen by the backbone's prediction type (never its name): the Euler
ODE of the flow (``flow_ode_step``) for flow backbones, DDIM with eta = 0 (``ddim_step``) for
DDPM-type ones, over ``slas.sampling.rollout.make_times``. As in both reference protocols
(GenEval re-seeds one generator per prompt; UniGenBench's FLUX script uses seed 3407 + j), image
j of EVERY prompt starts from the same noise, ``torch.randn(latent_shape)`` under
``manual_seed(seed + j)``, so an image does not depend on batching or on which images already
exist. ``manifest.json`` records the settings and seeds; a rerun with the same settings skips
the images present, a rerun with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from slas.backbones.base import Backbone, Conditioning
from slas.config import SampleConfig
from slas.errors import SlasError
from slas.sampling.ddim import ddim_step
from slas.sampling.rollout import make_times
from slas.sampling.steps import flow_ode_step

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class GenerationSettings:
    """Sampler settings of a benchmark generation (all recorded in the manifest).

    Attributes:
        samples_per_prompt: images per prompt K (GenEval and UniGenBench use 4).
        num_steps: deterministic sampling steps.
        guidance_scale: classifier-free guidance weight (1 = off).
        schedule: flow sigma schedule (``linear``, ``shift`` or ``resolution``; see
            ``SampleConfig.schedule``); ignored by DDPM-type backbones.
        shift: shift of the ``shift`` schedule.
        seed: image j of every prompt starts from noise seeded with ``seed + j``.
        batch_size: images per network batch (memory knob; not part of the result).
    """

    samples_per_prompt: int = 4
    num_steps: int = 20
    guidance_scale: float = 3.0
    schedule: Literal["linear", "shift", "resolution"] = "shift"
    shift: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or self.num_steps < 1 or self.batch_size < 1:
            raise SlasError("generation: samples_per_prompt, num_steps and batch_size must be "
                            f">= 1, got {self.samples_per_prompt}, {self.num_steps}, "
                            f"{self.batch_size}")


class GenerationResult(NamedTuple):
    """What a generation call did: images ``written`` now, ``skipped`` because present, and
    the ``manifest`` path."""

    written: int
    skipped: int
    manifest: Path


class _Job(NamedTuple):
    prompt: str
    j: int
    path: Path


def sample_latents(
    backbone: Backbone, cond: Conditioning, noise: Tensor, times: Tensor, guidance_scale: float
) -> Tensor:
    """Deterministic sampling: flow Euler ODE or DDIM eta = 0, by ``backbone.prediction_type``.

    Args:
        backbone: any ``Backbone``.
        cond: conditioning with rows ``[N, ...]`` (one per sample).
        noise: ``[N, *latent_shape]`` starting latents.
        times: ``[T+1]`` sampler times from ``make_times`` (sigmas, or DDIM timesteps ending
            in -1).
        guidance_scale: CFG weight passed to ``backbone.predict``.

    Returns:
        ``[N, *latent_shape]`` final latents.
    """
    x = noise
    n = x.shape[0]
    flow = backbone.prediction_type == "flow"
    table = backbone.alphas_cumprod
    for i in range(times.numel() - 1):
        out = backbone.predict(x, times[i].float().expand(n).to(x.device), cond, guidance_scale)
        if flow:
            x = flow_ode_step(out, x, float(times[i]), float(times[i + 1]))
        else:
            x = ddim_step(out, x, int(times[i]), int(times[i + 1]), table, eta=0.0,
                          prediction_type=backbone.prediction_type,
                          final_alpha_cumprod=float(table[0]), noise=torch.zeros_like(x),
                          ).prev_sample
    return x


def _save_png(image: Tensor, path: Path) -> None:
    """``[3, H, W]`` in [0, 1] -> 8-bit PNG, written atomically (no half-written file counts
    as done on resume)."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())).save(
        tmp, format="PNG")
    os.replace(tmp, path)


def _manifest(backbone: Backbone, s: GenerationSettings, times: Tensor, layout: str,
              prompt_lines: Sequence[str], model_name: str, image_name: str) -> dict:
    """Everything that determines the images; ``prompt_lines`` identify the prompt set."""
    settings = asdict(s)
    del settings["batch_size"]
    flow = backbone.prediction_type == "flow"
    return {
        "format": "slas-benchmark-generation", "version": MANIFEST_VERSION, "layout": layout,
        "image_name": image_name, "model": model_name, "backbone": type(backbone).__name__,
        "prediction_type": backbone.prediction_type,
        "latent_shape": list(backbone.latent_shape),
        "sampler": "flow Euler ODE" if flow else "DDIM eta=0",
        **settings,
        "times": [float(t) for t in times],
        "image_seeds": [s.seed + j for j in range(s.samples_per_prompt)],
        "noise": "image j of every prompt: torch.randn(latent_shape) after "
                 "torch.Generator().manual_seed(seed + j)",
        "num_prompts": len(prompt_lines),
        "prompts_sha256": hashlib.sha256("\n".join(prompt_lines).encode("utf-8")).hexdigest(),
    }


def _check_manifest(path: Path, manifest: Mapping) -> None:
    """Refuse to mix images of different settings in one folder."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise SlasError(f"{path}: not valid JSON; delete it only if the folder holds no "
                        "images from other settings") from None
    diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
    if diff:
        raise SlasError(f"{path}: the folder was generated with other settings (differ: {diff}); "
                        "use a new output folder or the same settings to resume")


def _run(backbone: Backbone, jobs: list[_Job], s: GenerationSettings, manifest_path: Path,
         manifest: dict) -> GenerationResult:
    _check_manifest(manifest_path, manifest)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest_path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)
    todo = [job for job in jobs if not job.path.is_file()]
    if not todo:
        return GenerationResult(0, len(jobs), manifest_path)
    times = torch.tensor(manifest["times"], dtype=torch.float64)
    gen_noise = [torch.randn(tuple(backbone.latent_shape),
                             generator=torch.Generator().manual_seed(s.seed + j))
                 for j in range(s.samples_per_prompt)]
    device = getattr(backbone, "device", torch.device("cpu"))
    with torch.inference_mode():
        for lo in range(0, len(todo), s.batch_size):
            batch = todo[lo:lo + s.batch_size]
            unique = list(dict.fromkeys(job.prompt for job in batch))
            rows = torch.tensor([unique.index(job.prompt) for job in batch])
            cond = backbone.encode_prompts(unique).select(rows)
            noise = torch.stack([gen_noise[job.j] for job in batch]).to(device)
            images = backbone.decode(sample_latents(backbone, cond, noise, times,
                                                    s.guidance_scale)).cpu()
            for job, image in zip(batch, images, strict=True):
                job.path.parent.mkdir(parents=True, exist_ok=True)
                _save_png(image, job.path)
    return GenerationResult(len(todo), len(jobs) - len(todo), manifest_path)


def _times(backbone: Backbone, s: GenerationSettings) -> Tensor:
    cfg = SampleConfig(num_steps=s.num_steps, schedule=s.schedule, shift=s.shift,
                       guidance_scale=s.guidance_scale)
    return make_times(backbone, cfg)


def generate_geneval(
    backbone: Backbone,
    metadata: Sequence[Mapping],
    root: str | os.PathLike,
    settings: GenerationSettings = GenerationSettings(),
    *,
    model_name: str = "",
    image_digits: int = 5,
) -> GenerationResult:
    """Images for GenEval prompts in the official layout (prompt i -> folder ``%05d`` % i).

    Args:
        backbone: any ``Backbone``.
        metadata: GenEval metadata records (``slas.eval.geneval_io.load_metadata``), each with
            a ``prompt``; record i is prompt folder i.
        root: output folder.
        settings: sampler settings.
        model_name: free text recorded in the manifest (e.g. the checkpoint).
        image_digits: digits of the image names: 5 (``00000.png``, what the official generator
            writes) or 4 (``0000.png``, as in its README); the evaluator accepts both.

    Returns:
        ``GenerationResult``; ``metadata.jsonl`` files are (re)written every call.
    """
    root = Path(root)
    if not metadata or any(not isinstance(m.get("prompt"), str) for m in metadata):
        raise SlasError("generate_geneval: need metadata records that each have a 'prompt'")
    if image_digits not in (4, 5):
        raise SlasError(f"generate_geneval: image_digits must be 4 or 5, got {image_digits}")
    manifest = _manifest(backbone, settings, _times(backbone, settings), "geneval",
                         [json.dumps(dict(m), sort_keys=True) for m in metadata], model_name,
                         f"<%05d>/samples/<%0{image_digits}d>.png")
    _check_manifest(root / MANIFEST, manifest)
    jobs = []
    for i, meta in enumerate(metadata):
        folder = root / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(dict(meta)) + "\n", encoding="utf-8")
        jobs += [_Job(meta["prompt"], j, folder / "samples" / f"{j:0{image_digits}d}.png")
                 for j in range(settings.samples_per_prompt)]
    return _run(backbone, jobs, settings, root / MANIFEST, manifest)


def generate_unigenbench(
    backbone: Backbone,
    indexed_prompts: Sequence[tuple[int, str]],
    out_dir: str | os.PathLike,
    settings: GenerationSettings = GenerationSettings(),
    *,
    model_name: str = "",
) -> GenerationResult:
    """Images ``<out_dir>/<index>_<j>.png`` for UniGenBench prompts.

    Args:
        backbone: any ``Backbone``.
        indexed_prompts: ``(index, prompt)`` per row, e.g. ``[(r.index, r.prompt) for r in
            load_prompts(...).records]``.
        out_dir: output folder (upstream: ``eval_data/<category>/<model>/``).
        settings: sampler settings.
        model_name: free text recorded in the manifest.

    Returns:
        ``GenerationResult``.
    """
    out_dir = Path(out_dir)
    indices = [int(i) for i, _ in indexed_prompts]
    if not indexed_prompts or len(set(indices)) != len(indices):
        raise SlasError("generate_unigenbench: need (index, prompt) pairs with unique indices")
    jobs = [_Job(prompt, j, out_dir / f"{int(i)}_{j}.png")
            for i, prompt in indexed_prompts for j in range(settings.samples_per_prompt)]
    manifest = _manifest(backbone, settings, _times(backbone, settings), "unigenbench",
                         [f"{int(i)}\t{p}" for i, p in indexed_prompts], model_name,
                         "<index>_<j>.png")
    return _run(backbone, jobs, settings, out_dir / MANIFEST, manifest)
