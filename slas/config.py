"""Typed configuration: nested dataclasses, one per phase of a training step.

Every field carries its documentation in ``metadata["help"]`` (``slas config --explain`` prints it).
YAML presets and dotted CLI overrides (``train.lr=1e-5``) only override these defaults; loading,
type checking and the fix-it messages live in :mod:`slas.config_io`. Invariants that involve one
section are checked in that section's ``__post_init__``; cross-section ones in ``Config``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from slas.errors import SlasError


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at the declaration
    """A dataclass field with its documentation attached."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise SlasError(f"{where}: {message}")


@dataclass
class ModelConfig:
    backbone: str = _f("world", "Backbone adapter name; `slas ls` lists them.")
    path: str | None = _f(
        None,
        "Local model directory (or hub id where the adapter allows); None = the adapter's "
        "default (the committed world policy for `world`).",
    )
    finetune: Literal["full", "lora"] = _f("full", "Train all denoiser weights or a LoRA adapter.")
    lora_rank: int = _f(32, "LoRA rank r (finetune=lora).")
    lora_alpha: float = _f(64.0, "LoRA alpha; the update is scaled by alpha / r.")
    lora_targets: list[str] = _f(
        ["to_q", "to_k", "to_v", "to_out.0"], "Module names that receive LoRA adapters."
    )
    dtype: Literal["fp32", "bf16"] = _f(
        "fp32", "Autocast dtype of model forwards (bf16 on GPU); sampler math is always fp32."
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass.")
    resolution: int | None = _f(
        None, "Image side in pixels (SD/FLUX; DanceGRPO FLUX: 720); None = the model's default."
    )
    guidance: float = _f(3.5, "FLUX distilled-guidance embedding value (FLUX.1-dev has no CFG).")
    shard: Literal["none", "fsdp"] = _f(
        "none",
        "none: every process holds the trained network, gradients are averaged; fsdp: shard it "
        "over the processes with PyTorch FSDP2 (fp32 master weights and reductions, each block "
        "gathered for its forward/backward; DanceGRPO FLUX). An accelerate FSDP config also "
        "selects fsdp.",
    )
    reshard_after_forward: bool = _f(
        True,
        "fsdp: free each block's gathered weights after its forward and gather them again for "
        "backward (least memory, ZeRO-3); false keeps them until backward (fewer all-gathers).",
    )

    def __post_init__(self) -> None:
        _check(self.lora_rank >= 1, "model.lora_rank", f"must be >= 1, got {self.lora_rank}")
        _check(self.lora_alpha > 0, "model.lora_alpha", f"must be > 0, got {self.lora_alpha}")
        _check(self.resolution is None or self.resolution % 16 == 0, "model.resolution",
               f"must be a multiple of 16, got {self.resolution}")


@dataclass
class SampleConfig:
    num_steps: int = _f(10, "Denoising steps T per rollout.")
    group_size: int = _f(8, "Samples per prompt G (the group of GRPO).")
    batch_size: int = _f(64, "Samples per rollout round on ALL processes (prompts x group_size).")
    micro_batch_size: int = _f(
        16,
        "Samples per model forward in rollout and update (memory knob; results do not "
        "depend on it).",
    )
    guidance_scale: float = _f(1.0, "Classifier-free guidance w in rollout AND training (1 = off).")
    sde: Literal["dance", "flow", "cps"] = _f(
        "dance",
        "Flow-backbone noise: dance g=eta (DanceGRPO), flow g=eta*sqrt(sigma/(1-sigma)) "
        "(Flow-GRPO), cps (coefficient-preserving). DDPM backbones always use DDIM-eta.",
    )
    eta: float = _f(
        0.3, "Noise level: DanceGRPO eta (FLUX 0.3), Flow-GRPO a (0.7/0.9), DDIM eta (1.0)."
    )
    schedule: Literal["linear", "shift", "resolution"] = _f(
        "shift",
        "Flow sigma schedule: linear, shift (sigma'=s*sigma/(1+(s-1)*sigma)), or "
        "diffusers' resolution-dependent exponential shift.",
    )
    shift: float = _f(3.0, "Shift s of the `shift` schedule (DanceGRPO uses 3).")
    logprob_reduction: Literal["mean", "sum"] = _f(
        "mean",
        "Reduce the Gaussian log-density over latent elements by mean (every reference; "
        "why clip ranges are ~1e-4) or sum.",
    )
    same_initial_noise: bool = _f(
        False, "Give all samples of a group the same initial noise (DanceGRPO init_same_noise)."
    )
    sde_window: int = _f(
        0,
        "MixGRPO sliding window: the SDE (eta) runs on W consecutive steps and only those are "
        "trained; every other step is the deterministic ODE step. 0 = SDE everywhere "
        "(train.timestep_selection decides what is trained).",
    )
    window_every: int = _f(
        25, "Sliding window: iterations between moves (MixGRPO iters_per_group: 25)."
    )
    window_stride: int = _f(
        1, "Sliding window: steps moved per move; past the last start it rolls back to step 0."
    )
    overlap_reward: bool = _f(
        False,
        "Score each finished micro-batch's groups in a background thread while the next "
        "micro-batch is sampled (hides reward latency, e.g. a remote judge). Same results.",
    )

    def __post_init__(self) -> None:
        _check(self.num_steps >= 1, "sample.num_steps", f"must be >= 1, got {self.num_steps}")
        _check(
            self.group_size >= 2,
            "sample.group_size",
            f"must be >= 2 (group statistics need two samples), got {self.group_size}",
        )
        _check(
            self.batch_size % self.group_size == 0,
            "sample.batch_size",
            f"{self.batch_size} is not divisible by sample.group_size={self.group_size}; "
            f"use a multiple such as {self._nearest_batch()}",
        )
        _check(self.micro_batch_size >= 1, "sample.micro_batch_size", "must be >= 1")
        _check(self.eta >= 0, "sample.eta", f"must be >= 0, got {self.eta}")
        _check(self.shift > 0, "sample.shift", f"must be > 0, got {self.shift}")
        _check(self.guidance_scale >= 0, "sample.guidance_scale", "must be >= 0")
        _check(
            0 <= self.sde_window < self.num_steps,
            "sample.sde_window",
            f"must be in [0, num_steps - 1] = [0, {self.num_steps - 1}] (the last step is never "
            f"trained), got {self.sde_window}",
        )
        _check(self.window_every >= 1 and self.window_stride >= 1, "sample.window_every",
               "sample.window_every and sample.window_stride must be >= 1")


    def _nearest_batch(self) -> int:
        return self.group_size * max(1, round(self.batch_size / self.group_size))


@dataclass
class RewardConfig:
    names: list[str] = _f(["world_pref"], "Reward functions; `slas ls` lists them.")
    weights: list[float] = _f(
        [1.0], "One weight per reward (SLAS: HPS:CLIP 1:1 SD1.4, 0.7:1.4 FLUX)."
    )
    aggregate: Literal["rewards", "advantages"] = _f(
        "rewards",
        "rewards: advantages of sum_k w_k r_k; advantages: sum_k w_k A(r_k), each "
        "normalised alone (DanceGRPO lineage).",
    )
    hps_checkpoint: str | None = _f(None, "Path to HPS_v2.1_compressed.pt (reward `hps_v21`).")
    hps_arch: str = _f("ViT-H-14", "open_clip architecture of hps_checkpoint.")
    clip_checkpoint: str | None = _f(
        None, "open_clip checkpoint file or folder with open_clip_config.json (`clip_score`)."
    )
    clip_arch: str | None = _f(
        None, "open_clip model name overriding the checkpoint's own open_clip_config.json."
    )
    pickscore_path: str | None = _f(None, "PickScore model folder (reward `pickscore`).")
    pickscore_processor_path: str | None = _f(
        None, "CLIPProcessor folder for PickScore; None = pickscore_path."
    )
    pickscore_scaled: bool = _f(
        False, "PickScore as logit_scale.exp()*cos (official, ~18-24) instead of the raw cosine."
    )
    dtype: Literal["fp32", "fp16", "bf16"] = _f(
        "fp32", "Autocast dtype of real reward-model forwards on GPU (the HPS reference: fp16)."
    )
    batch_size: int = _f(32, "Images per reward-model forward.")
    judge_url: str | None = _f(
        None, "OpenAI-compatible base URL of the pairwise judge (reward `pairwise_judge`, which "
        "returns each image's win rate within its group, Pref-GRPO)."
    )
    judge_model: str | None = _f(None, "Served model name sent to the judge (None: omitted).")
    judge_timeout: float = _f(120.0, "Seconds per judge request.")
    judge_retries: int = _f(3, "Extra attempts after a failed judge request.")
    judge_backoff: float = _f(1.0, "First wait between judge retries, seconds; doubles each time.")
    judge_max_tokens: int = _f(4096, "Completion budget of one judgement.")
    judge_concurrency: int = _f(8, "Judge requests in flight at once.")
    judge_api_key_env: str = _f(
        "OPENAI_API_KEY", "Environment variable holding the judge's API key (never stored)."
    )

    def __post_init__(self) -> None:
        _check(len(self.names) >= 1, "reward.names", "needs at least one reward name")
        _check(
            len(self.weights) == len(self.names),
            "reward.weights",
            f"has {len(self.weights)} entries but reward.names has {len(self.names)}; give one "
            "weight per reward",
        )
        _check(len(set(self.names)) == len(self.names), "reward.names", "contains duplicates")
        _check(self.batch_size >= 1, "reward.batch_size", "must be >= 1")
        _check(self.judge_concurrency >= 1, "reward.judge_concurrency", "must be >= 1")


@dataclass
class AdvantageConfig:
    estimator: str = _f("slas", "Advantage estimator; `slas ls` lists them.")
    gamma: float = _f(
        0.5,
        "SLAS shaping exponent: A = sign(z)|z|^(1+gamma). The paper does not state its "
        "value; 0.5 is this library's default (see docs).",
    )
    normalize: Literal["pre", "post"] = _f(
        "pre", "SLAS: pre = shape z = dr/std_batch(r); post = shape dr, then divide by std_batch."
    )
    std: Literal["unbiased", "biased"] = _f(
        "unbiased",
        "Std estimator: unbiased (N-1, DanceGRPO torch.std) or biased (N, Flow-GRPO np.std).",
    )
    eps: float = _f(1e-8, "Added to every std denominator (DanceGRPO 1e-8, Flow-GRPO 1e-4).")
    clamp: float | None = _f(
        5.0,
        "Clamp final advantages to +-clamp (every reference uses 5; it truncates the "
        "tails super-linear shaping creates). None = off.",
    )

    def __post_init__(self) -> None:
        _check(
            self.gamma >= 0, "advantage.gamma", f"must be >= 0 (0 = no shaping), got {self.gamma}"
        )
        _check(self.eps >= 0, "advantage.eps", f"must be >= 0, got {self.eps}")
        _check(self.clamp is None or self.clamp > 0, "advantage.clamp", "must be > 0 or null")


@dataclass
class TrainConfig:
    steps: int = _f(100, "Training iterations (rollout -> score -> advantages -> update).")
    lr: float = _f(1e-5, "AdamW learning rate (DanceGRPO 1e-5 full fine-tune, 3e-4 LoRA).")
    betas: list[float] = _f([0.9, 0.999], "AdamW betas.")
    weight_decay: float = _f(1e-4, "AdamW weight decay.")
    adam_eps: float = _f(1e-8, "AdamW epsilon.")
    lr_schedule: Literal["constant", "constant_with_warmup", "cosine"] = _f(
        "constant", "LR schedule."
    )
    warmup_steps: int = _f(0, "Warm-up optimiser steps.")
    max_grad_norm: float | None = _f(1.0, "Gradient-norm clip (None = off).")
    clip_range: float = _f(1e-4, "PPO clip epsilon on the per-step ratio (every reference: 1e-4).")
    optimizer_steps_per_iteration: int = _f(
        1, "Optimiser steps per iteration; samples are split evenly (DanceGRPO SD: 2)."
    )
    timestep_selection: Literal["dance", "flow"] = _f(
        "dance",
        "dance: floor((T-1)*frac) random steps per sample after dropping the last (DanceGRPO); "
        "flow: the first floor(T*frac) in order (Flow-GRPO).",
    )
    timestep_fraction: float = _f(1.0, "frac above (SD 1.0, FLUX 0.6).")
    loss_agg: Literal["mean", "sample_mean"] = _f(
        "mean",
        "mean over all trained (sample, step) pairs, or over steps within a sample then "
        "over samples.",
    )
    kl_beta: float = _f(0.0, "Weight of the exact Gaussian KL to the reference policy (0 = off).")
    ema_decay: float | None = _f(None, "EMA decay of trainable weights (None = off).")
    max_nonfinite_in_row: int = _f(5, "Abort (with a checkpoint) after this many skipped updates.")

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "train.steps", "must be >= 0")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "train.betas",
            f"must be two numbers in [0, 1), got {self.betas}",
        )
        _check(self.clip_range > 0, "train.clip_range", "must be > 0")
        _check(0 < self.timestep_fraction <= 1, "train.timestep_fraction", "must be in (0, 1]")
        _check(self.kl_beta >= 0, "train.kl_beta", "must be >= 0")
        _check(
            self.optimizer_steps_per_iteration >= 1,
            "train.optimizer_steps_per_iteration",
            "must be >= 1",
        )
        _check(
            self.ema_decay is None or 0 < self.ema_decay < 1,
            "train.ema_decay",
            "must be in (0, 1) or null",
        )


@dataclass
class TrustConfig:
    every: int = _f(
        0,
        "Measure the gamma trust region (DESIGN §3.4: Fisher lambda_max, G^2, the KL of the update "
        "and the moment bound on gamma) every N steps; 0 = off. Costs a few forward/backward "
        "passes over trust.samples transitions.",
    )
    samples: int = _f(8, "Trained transitions (sample, step) the measurements use.")
    fisher_iters: int = _f(20, "Power iterations for lambda_max (stops early at 1e-3 relative).")
    kl_target: float = _f(
        2e-3,
        "KL budget delta per iteration, in the units of gaussian_kl with the configured "
        "log-prob reduction (per-element mean by default). Sets gamma/bound and the adaptive "
        "target.",
    )
    step_size: Literal["lr", "effective"] = _f(
        "lr",
        "eta in the budget B = 2 delta / (lambda_max eta^2 G^2): lr = train.lr x "
        "optimizer_steps_per_iteration (the SGD step of Appendix E); effective = |dtheta| / |g| "
        "of the last update (Adam's actual step length; far more conservative).",
    )
    adaptive: bool = _f(
        False,
        "Adapt advantage.gamma (estimator slas only) toward trust.kl_target after every step, "
        "never above the last measured bound (AdaptiveGamma).",
    )
    rate: float = _f(0.1, "Adaptive gamma: change per step at full relative KL error.")
    gamma_max: float = _f(4.0, "Upper end of the bound search and of adaptive gamma.")

    def __post_init__(self) -> None:
        _check(self.every >= 0, "trust.every", "must be >= 0 (0 = off)")
        _check(self.samples >= 2, "trust.samples", "must be >= 2")
        _check(self.fisher_iters >= 1, "trust.fisher_iters", "must be >= 1")
        _check(self.kl_target > 0, "trust.kl_target", f"must be > 0, got {self.kl_target}")
        _check(self.rate > 0 and self.gamma_max > 0, "trust.rate",
               "trust.rate and trust.gamma_max must be > 0")
        _check(not self.adaptive or self.every >= 1, "trust.adaptive",
               "needs the bound: set trust.every >= 1 (e.g. 5)")


@dataclass
class EvalConfig:
    prompts: Literal["world", "none"] = _f(
        "world", "Evaluation: `world` (world-GenEval of the built-in out-of-domain prompts, "
        "fidelity, proxy rewards) or `none`.")
    samples_per_prompt: int = _f(4, "Images per prompt (GenEval uses 4).")
    num_steps: int = _f(20, "Deterministic (ODE) sampling steps for evaluation.")
    guidance_scale: float = _f(3.0, "CFG scale for evaluation.")
    every: int = _f(0, "Evaluate every N training steps (0 = only at the end).")
    at_start: bool = _f(True, "Also evaluate the untrained policy (step 0).")
    grid_prompts: int = _f(8, "Evaluation prompts shown in the saved sample grids.")

    def __post_init__(self) -> None:
        _check(self.samples_per_prompt >= 1, "eval.samples_per_prompt", "must be >= 1")
        _check(self.num_steps >= 1, "eval.num_steps", "must be >= 1")


@dataclass
class RunConfig:
    output_dir: str = _f("runs/default", "Run directory (config, metrics, checkpoints, report).")
    seed: int = _f(0, "Seeds everything; rollout noise derives from (seed, step, sample index).")
    prompts: str = _f(
        "world", "Training prompts: `world` (built-in RL set), a text file (one per line), an "
        "HPD-v2 .json or a .jsonl of records with `prompt`."
    )
    checkpoint_every: int = _f(25, "Save a checkpoint every N steps (0 = only at the end).")
    keep_last: int = _f(2, "Checkpoints kept on disk.")
    log_every: int = _f(1, "Write metrics every N steps.")
    tensorboard: bool = _f(True, "Also log to TensorBoard when it is installed.")
    wandb: bool = _f(False, "Also log to Weights & Biases (must be installed).")
    profile: bool = _f(
        False, "Trace steps 1-3 with torch.profiler to <run>/profile/ (Chrome trace JSON)."
    )

    def __post_init__(self) -> None:
        _check(self.keep_last >= 1, "run.keep_last", "must be >= 1")
        _check(self.log_every >= 1, "run.log_every", "must be >= 1")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check(
            not self.trust.adaptive or self.advantage.estimator == "slas",
            "trust.adaptive",
            f"adapts the SLAS exponent; set advantage.estimator=slas (got "
            f"{self.advantage.estimator!r}) or trust.adaptive=false",
        )
        _check(
            not self.trust.adaptive or self.trust.gamma_max >= self.advantage.gamma,
            "trust.gamma_max",
            f"must be >= advantage.gamma = {self.advantage.gamma} (the starting value)",
        )
        _check(
            self.model.shard == "none" or self.trust.every == 0,
            "trust.every",
            f"is {self.trust.every}, but the trust-region measurements need unsharded "
            "parameters and model.shard=fsdp shards them; set trust.every=0 (or model.shard=none)",
        )

    def validate_for(self, num_processes: int) -> None:
        """Checks that need the process count (known only at launch)."""
        unit = self.sample.group_size * num_processes
        _check(
            self.sample.batch_size % unit == 0,
            "sample.batch_size",
            f"{self.sample.batch_size} is not divisible by group_size x processes = "
            f"{self.sample.group_size} x {num_processes} = {unit}; use a multiple of {unit}",
        )
        local = self.sample.batch_size // num_processes
        _check(
            local % self.sample.micro_batch_size == 0,
            "sample.micro_batch_size",
            f"{self.sample.micro_batch_size} does not divide the {local} samples per process "
            "(rollout and update must use equal micro-batches so the first PPO ratio is exactly 1)",
        )
