"""`slas train PRESET --dry-run`: check a job before spending GPU hours on it.

Validates the config, checks every path it names, builds the model's components on the meta
device from their config files only (no weights are read), and prints parameter counts, the
trainable fraction and a per-GPU memory estimate: weights, gradients and AdamW state (the
denoiser's divided by the process count with ``model.shard=fsdp``), plus the activations of one
training micro-batch measured by a meta-device forward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch

from slas.config import Config
from slas.errors import SlasError

_BYTES = {"fp32": 4, "bf16": 2}
# The denoiser component of each diffusers pipeline layout, and its forward's extra inputs.
_DENOISERS = ("unet", "transformer")


class Component(NamedTuple):
    name: str
    params: int
    trainable: int


class DryRunReport(NamedTuple):
    components: list[Component]
    weights_gb: float
    optimizer_gb: float
    activations_gb: float | None
    lines: list[str]


def check_paths(config: Config) -> list[str]:
    """Every file or folder the job will read; raises one SlasError listing what is missing."""
    from slas.rewards import REWARDS

    missing, checked = [], []
    if config.model.path is not None:
        (checked if Path(config.model.path).is_dir() else missing).append(
            f"model.path = {config.model.path}")
    elif config.model.backbone != "world":
        missing.append(f"model.path is not set (backbone {config.model.backbone!r} needs one)")
    fields = {"hps_v21": "hps_checkpoint", "clip_score": "clip_checkpoint",
              "pickscore": "pickscore_path"}
    for name in config.reward.names:
        if name not in REWARDS:
            raise SlasError(f"unknown reward {name!r} in reward.names; valid: {', '.join(REWARDS)}")
        field = fields.get(name)
        if field:
            value = getattr(config.reward, field)
            ok = value is not None and Path(value).exists()
            (checked if ok else missing).append(f"reward.{field} = {value}")
    if config.run.prompts != "world":
        (checked if Path(config.run.prompts).is_file() else missing).append(
            f"run.prompts = {config.run.prompts}")
    if missing:
        raise SlasError("missing: " + "; ".join(missing) + " (set these fields to local paths)")
    return checked


def build_on_meta(path: Path) -> dict[str, torch.nn.Module]:
    """Instantiate every model component of a diffusers pipeline folder on the meta device."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    index = path / "model_index.json"
    if not index.is_file():
        raise SlasError(f"{index} not found: model.path must be a diffusers pipeline folder")
    modules = {}
    for name, spec in json.loads(index.read_text()).items():
        if not (isinstance(spec, list) and (path / name / "config.json").is_file()):
            continue  # schedulers, tokenizers, absent parts
        library, cls_name = spec
        cfg_file = path / name / "config.json"
        with init_empty_weights():
            if library == "diffusers":
                cls = getattr(diffusers, cls_name)
                modules[name] = cls.from_config(cls.load_config(cfg_file.parent))
            else:
                cfg = transformers.AutoConfig.from_pretrained(cfg_file.parent)
                modules[name] = getattr(transformers, cls_name)(cfg)
    return modules


def lora_parameters(module: torch.nn.Module, targets: list[str], rank: int) -> int:
    """Parameters a LoRA of ``rank`` adds to the Linear layers whose name ends with a target."""
    total = 0
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            total += rank * (sub.in_features + sub.out_features)
    return total


def activation_bytes(denoiser: torch.nn.Module, inputs: dict[str, Any]) -> int:
    """Bytes of every module output in one forward on the meta device (what autograd keeps,
    to within the modules' internal temporaries)."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in denoiser.modules()]
    try:
        denoiser(**inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def dry_run(config: Config, num_processes: int = 1) -> DryRunReport:
    """Everything `--dry-run` prints; raises SlasError on the first problem."""
    config.validate_for(num_processes)
    lines = ["config: valid"]
    lines += [f"path ok: {p}" for p in check_paths(config)]
    if config.model.path is None:
        from slas.backbones.world import DEFAULT_POLICY_DIR

        path = DEFAULT_POLICY_DIR
    else:
        path = Path(config.model.path)
    modules = _world_modules(path) if config.model.backbone == "world" else build_on_meta(path)
    denoiser = next((n for n in _DENOISERS if n in modules), None)
    if denoiser is None:
        raise SlasError(f"{path}: found no denoiser ({' or '.join(_DENOISERS)}) component")
    comps = []
    for name, module in modules.items():
        n = sum(p.numel() for p in module.parameters())
        trainable = 0
        if name == denoiser:
            trainable = (lora_parameters(module, config.model.lora_targets, config.model.lora_rank)
                         if config.model.finetune == "lora" else n)
        comps.append(Component(name, n, trainable))
    frozen_bytes = _BYTES[config.model.dtype]
    n_train = sum(c.trainable for c in comps)
    per_comp = {c.name: (c.params - (c.trainable if config.model.finetune == "full" else 0))
                * frozen_bytes for c in comps}
    per_comp[denoiser] += 4 * n_train  # trainable weights are fp32 master weights
    # model.shard=fsdp: each process holds 1/num_processes of the denoiser and of its optimizer
    # state (slas.distributed); the frozen encoders and VAE stay replicated
    shards = num_processes if config.model.shard == "fsdp" else 1
    weights = sum(per_comp.values()) - per_comp[denoiser] * (1 - 1 / shards)
    optimizer = 3 * 4 * n_train / shards  # gradient + AdamW exp_avg + exp_avg_sq, fp32
    act = _denoiser_activations(modules[denoiser], config)
    for c in comps:
        lines.append(f"{c.name:<16} {c.params / 1e6:10.2f} M params"
                     + (f", {c.trainable / 1e6:.2f} M trainable" if c.trainable else ", frozen"))
    total = sum(c.params for c in comps)
    lines.append(f"trainable fraction: {n_train / max(total, 1):.4%} of {total / 1e6:.1f} M")
    act_text = (f"{act / 2**30:.2f} GiB (module outputs in fp32, without gradient checkpointing)"
                if act else "not measured (forward failed on meta)")
    lines.append(f"per-GPU memory: weights {weights / 2**30:.2f} GiB, grads+AdamW "
                 f"{optimizer / 2**30:.2f} GiB, activations of one micro-batch of "
                 f"{config.sample.micro_batch_size}: {act_text}")
    if shards > 1:
        lines.append(f"sharded (model.shard=fsdp): {denoiser} weights and grads+AdamW divided by "
                     f"{shards} processes, plus the gathered weights of the block being computed")
    return DryRunReport(comps, weights / 2**30, optimizer / 2**30,
                        act / 2**30 if act else None, lines)


def _world_modules(path: Path) -> dict[str, torch.nn.Module]:
    from slas.backbones.world import WorldBackbone

    backbone = WorldBackbone.from_pretrained(path)
    return {"unet": backbone.unet, "text_encoder": backbone.text_encoder}


def _denoiser_activations(module: torch.nn.Module, config: Config) -> int | None:
    """Activation bytes of a training micro-batch (CFG doubles it), or None if the meta
    forward is not possible for this architecture."""
    batch = config.sample.micro_batch_size * (2 if config.sample.guidance_scale != 1 else 1)
    cfg = module.config
    try:
        with torch.device("meta"):
            if hasattr(cfg, "cross_attention_dim") and hasattr(cfg, "sample_size"):  # UNet
                side = config.model.resolution // 8 if config.model.resolution else cfg.sample_size
                inputs = {"sample": torch.randn(batch, cfg.in_channels, side, side),
                          "timestep": torch.ones(batch),
                          "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim)}
            else:  # FLUX transformer: packed 2x2 latent tokens
                side = (config.model.resolution or 1024) // 16
                inputs = {"hidden_states": torch.randn(batch, side * side, cfg.in_channels),
                          "encoder_hidden_states": torch.randn(batch, 512, cfg.joint_attention_dim),
                          "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim),
                          "timestep": torch.ones(batch),
                          "guidance": torch.ones(batch) if cfg.guidance_embeds else None,
                          "img_ids": torch.zeros(side * side, 3), "txt_ids": torch.zeros(512, 3)}
            return activation_bytes(module.to("meta"), inputs)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError, ValueError):
        return None
