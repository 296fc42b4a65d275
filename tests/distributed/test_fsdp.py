"""Sharded training (``model.shard=fsdp``, FSDP2 on CPU with gloo) against unsharded training.

The same two steps of the tiny world policy (global batch 8, KL to the reference and EMA on) run
unsharded in one process and sharded in one process (a 1-process group, fast suite) or two
(torchrun, slow suite); parameters, EMA weights, rewards, checkpoints and the saved policy must
agree. Checkpoints hold full tensors, so one written sharded resumes unsharded.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

from slas.backbones.flux import FluxBackbone
from slas.backbones.sd import StableDiffusionBackbone
from slas.backbones.world import WorldBackbone
from slas.checkpoint import load_checkpoint
from slas.config_io import load_config
from slas.distributed import full_weights, shard_backbone, wants_sharding
from slas.dry_run import dry_run
from slas.errors import SlasError
from tests.backbones.tiny_models import build_tiny_flux, build_tiny_sd
from tests.distributed.fsdp_steps import make_trainer, run

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5  # float32 sums in another order (FSDP reduce-scatter, DTensor grad norm)


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def run_in_process(run_dir: Path, *overrides: str, resume: bool = False, steps: int = 2):
    trainer = make_trainer(run_dir, *overrides, resume=resume)
    try:
        return run(trainer, steps), trainer.params
    finally:
        trainer.close()


def policy_params(run_dir: Path) -> list[torch.Tensor]:
    return [p.detach() for p in WorldBackbone.from_pretrained(run_dir / "policy").unet.parameters()]


def test_config_rejects_trust_region_with_sharding():
    with pytest.raises(SlasError, match="trust.every=0"):
        load_config(None, ["model.shard=fsdp", "trust.every=5"])
    with pytest.raises(SlasError, match="model.shard"):
        load_config(None, ["model.shard=zero3"])
    plain = load_config(None, [])
    assert plain.model.shard == "none" and not wants_sharding(plain, DistributedType.NO)
    # an accelerate FSDP launch config shards too, and hits the same trust-region check
    assert wants_sharding(plain, DistributedType.FSDP)
    measured = load_config(None, ["trust.every=5"])
    with pytest.raises(SlasError, match="set trust.every=0"):
        wants_sharding(measured, DistributedType.FSDP)


def test_one_process_fsdp_matches_unsharded(tmp_path):
    plain, _ = run_in_process(tmp_path / "plain")
    sharded, params = run_in_process(tmp_path / "fsdp", "model.shard=fsdp")
    assert sharded["sharded"] and not plain["sharded"]
    assert all(isinstance(p, DTensor) for p in params)
    first, second = (m["reward/mean"] for m in sharded["metrics"])
    assert first == plain["metrics"][0]["reward/mean"]  # same initial weights: same rollout
    assert second == pytest.approx(plain["metrics"][1]["reward/mean"], abs=1e-6)
    # step 2's KL to the reference is > 0 and the same: the swap reaches the sharded weights
    kl = sharded["metrics"][1]["loss/kl"]
    assert kl > 0 and kl == pytest.approx(plain["metrics"][1]["loss/kl"], rel=1e-4)
    assert max_diff(sharded["params"], plain["params"]) < TOL
    assert max_diff(sharded["ema"], plain["ema"]) < TOL
    # the checkpoint holds full plain tensors; it resumes unsharded to the same weights
    state = load_checkpoint(tmp_path / "fsdp" / "checkpoints" / "step_000002.pt")
    assert [list(t.shape) for t in state["params"]] == state["signature"]
    assert max_diff(state["params"], sharded["params"]) == 0.0
    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    assert type(exp_avg) is torch.Tensor and list(exp_avg.shape) == state["signature"][0]
    trainer = make_trainer(tmp_path / "fsdp", resume=True)
    assert trainer.step_index == 2
    assert max_diff([p.detach() for p in trainer.params], sharded["params"]) == 0.0
    trainer.close()
    # save_policy gathered the full EMA weights into a loadable policy folder
    assert max_diff(policy_params(tmp_path / "fsdp"), sharded["ema"]) == 0.0


ADAPTERS = {"sd": (build_tiny_sd, StableDiffusionBackbone, "unet"),
            "flux": (build_tiny_flux, FluxBackbone, "transformer")}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_sd_and_flux_shard_to_the_same_model(tmp_path, name):
    build, cls, attr = ADAPTERS[name]
    backbone = cls.from_pretrained(build(tmp_path / "pipe"))
    network = getattr(backbone, attr)
    *blocks, root = backbone.shard_modules()
    assert root is network and len(blocks) >= 2
    assert all(any(b is m for m in network.modules()) for b in blocks)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    x = torch.randn(2, *backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5, 0.25]) if name == "flux" else torch.tensor([500, 250])
    cond = backbone.encode_prompts(["a red cat", "a car"])
    with torch.no_grad():
        expected = backbone.predict(x, t, cond, 1.0)
    try:
        shard_backbone(backbone, torch.device("cpu"))
        assert all(isinstance(p, DTensor) for p in network.parameters())
        with torch.no_grad():
            assert torch.allclose(backbone.predict(x, t, cond, 1.0), expected, atol=1e-6)
        with full_weights(network, keep=True):
            full = network.state_dict()
            assert full.keys() == before.keys()
            assert all(torch.equal(full[k], before[k]) for k in before)
            backbone.save_pretrained(tmp_path / "policy")
        assert all(isinstance(p, DTensor) for p in network.parameters())  # shards restored
    finally:
        torch.distributed.destroy_process_group()
    saved = type(network).from_pretrained(tmp_path / "policy" / attr)
    assert all(torch.equal(v, before[k]) for k, v in saved.state_dict().items())


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_fsdp_matches_one_process(tmp_path):
    out = tmp_path / "two"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.distributed.fsdp_steps", str(out), "model.shard=fsdp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # A rank has been seen to abort at interpreter exit after finishing; judge by its files.
    missing = [r for r in range(2) if not (out / f"rank{r}.pt").is_file()]
    assert not missing, f"ranks {missing} wrote nothing:\n{proc.stderr[-4000:]}"
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    assert all(r["world"] == 2 and r["sharded"] for r in ranks)
    assert max_diff(ranks[0]["params"], ranks[1]["params"]) == 0.0  # one model, two shards

    one, _ = run_in_process(tmp_path / "one")
    # step 1 starts from the same weights: bit-identical rollouts and rewards
    assert ranks[0]["metrics"][0]["reward/mean"] == one["metrics"][0]["reward/mean"]
    assert ranks[0]["metrics"][1]["reward/mean"] == pytest.approx(
        one["metrics"][1]["reward/mean"], abs=1e-6)
    # each rank's KL is over its half of the samples; their mean is the 1-process KL
    kl = sum(r["metrics"][1]["loss/kl"] for r in ranks) / 2
    assert kl > 0 and kl == pytest.approx(one["metrics"][1]["loss/kl"], rel=1e-4)
    assert ranks[0]["metrics"][1]["train/grad_norm"] == pytest.approx(
        one["metrics"][1]["train/grad_norm"], rel=1e-5)
    assert max_diff(ranks[0]["params"], one["params"]) < TOL
    assert max_diff(ranks[0]["ema"], one["ema"]) < TOL
    assert max_diff(policy_params(out / "run"), ranks[0]["ema"]) == 0.0

    # the 2-process step-1 checkpoint (AdamW moments included) resumes in 1 unsharded process
    resume = tmp_path / "resume" / "run"
    (resume / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "run" / "checkpoints" / "step_000001.pt", resume / "checkpoints")
    again, _ = run_in_process(resume, resume=True, steps=1)
    assert again["metrics"][0]["reward/mean"] == ranks[0]["metrics"][1]["reward/mean"]
    assert max_diff(again["params"], ranks[0]["params"]) < TOL


def test_dry_run_divides_sharded_memory_by_processes(tmp_path):
    path = build_tiny_flux(tmp_path / "flux")
    for name in ("hps.pt", "clip.pt", "train.json"):
        (tmp_path / name).write_text("x")
    base = [f"model.path={path}", "model.resolution=64",
            f"reward.hps_checkpoint={tmp_path / 'hps.pt'}",
            f"reward.clip_checkpoint={tmp_path / 'clip.pt'}",
            f"run.prompts={tmp_path / 'train.json'}"]
    full = dry_run(load_config("flux_slas", base), num_processes=16)
    sharded = dry_run(load_config("flux_slas", [*base, "model.shard=fsdp"]), num_processes=16)
    transformer = next(c for c in full.components if c.name == "transformer")
    assert sharded.optimizer_gb == pytest.approx(full.optimizer_gb / 16)
    # fp32 transformer weights: 15/16 of them leave each GPU; the bf16 encoders and VAE stay
    saved = 4 * transformer.params * 15 / 16 / 2**30
    assert full.weights_gb - sharded.weights_gb == pytest.approx(saved)
    assert any("divided by 16 processes" in line for line in sharded.lines)
