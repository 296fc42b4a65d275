"""`slas train PRESET --dry-run` on tiny local model folders (no weights are read)."""

import pytest

from slas.cli import main
from slas.config_io import load_config
from slas.dry_run import dry_run
from slas.errors import SlasError
from tests.backbones.tiny_models import build_tiny_flux, build_tiny_sd


@pytest.fixture
def files(tmp_path):
    for name in ("hps.pt", "clip.pt", "train.json"):
        (tmp_path / name).write_text("x")
    return [f"reward.hps_checkpoint={tmp_path / 'hps.pt'}",
            f"reward.clip_checkpoint={tmp_path / 'clip.pt'}",
            f"run.prompts={tmp_path / 'train.json'}"]


def test_sd_counts_and_memory(tmp_path, files):
    path = build_tiny_sd(tmp_path / "sd")
    report = dry_run(load_config("sd14_slas", [f"model.path={path}", *files]), num_processes=8)
    by_name = {c.name: c for c in report.components}
    assert set(by_name) == {"unet", "vae", "text_encoder"}
    assert by_name["unet"].trainable == by_name["unet"].params > 0
    assert by_name["vae"].trainable == 0 == by_name["text_encoder"].trainable
    # full fine-tune: gradient + 2 AdamW moments, fp32, of every UNet parameter
    assert report.optimizer_gb == pytest.approx(12 * by_name["unet"].params / 2**30)
    assert report.activations_gb and report.activations_gb > 0


def test_flux_lora_fraction(tmp_path, files):
    path = build_tiny_flux(tmp_path / "flux")
    cfg = load_config("flux_slas", [f"model.path={path}", "model.finetune=lora",
                                    "model.lora_rank=2", "model.resolution=64", *files])
    report = dry_run(cfg, num_processes=16)
    transformer = next(c for c in report.components if c.name == "transformer")
    assert 0 < transformer.trainable < transformer.params
    assert report.activations_gb and report.activations_gb > 0


def test_cli_prints_report_and_missing_paths_fail(tmp_path, files, capsys):
    path = build_tiny_sd(tmp_path / "sd")
    assert main(["train", "sd14_slas", "--dry-run", f"model.path={path}", *files,
                 "--processes", "8"]) == 0
    out = capsys.readouterr().out
    assert "trainable fraction" in out and "per-GPU memory" in out
    assert main(["train", "sd14_slas", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model.path is not set" in err and "reward.hps_checkpoint = None" in err
    with pytest.raises(SlasError, match="not divisible by group_size x processes"):
        dry_run(load_config("sd14_slas", [f"model.path={path}", *files]), num_processes=3)
