"""Benchmark image generation: official layouts, manifest, resume, shared noise, DDIM path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from slas.backbones.base import Conditioning
from slas.config import SampleConfig
from slas.errors import SlasError
from slas.eval.generate import (
    GenerationSettings,
    generate_geneval,
    generate_unigenbench,
    sample_latents,
)
from slas.eval.geneval_io import load_generation_folder
from slas.sampling.rollout import make_times
from slas.sampling.schedules import ddpm_alphas_cumprod
from tests.conftest import tiny_world_backbone

FAST = GenerationSettings(samples_per_prompt=2, num_steps=2, batch_size=4, seed=5)
META = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}],
     "prompt": "a photo of a circle"},
    {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}],
     "prompt": "a photo of a red square"},
]


class Counting:
    """Counts the ``predict`` calls of a backbone and the samples they saw."""

    def __init__(self, backbone, monkeypatch):
        self.calls, self.samples, inner = 0, 0, backbone.predict

        def predict(x_t, t, cond, guidance_scale):
            self.calls += 1
            self.samples += x_t.shape[0]
            return inner(x_t, t, cond, guidance_scale)

        monkeypatch.setattr(backbone, "predict", predict)


@pytest.fixture(scope="module")
def backbone():
    return tiny_world_backbone()


def test_geneval_layout_and_manifest(backbone, tmp_path):
    res = generate_geneval(backbone, META, tmp_path, FAST, model_name="tiny")
    assert (res.written, res.skipped) == (4, 0)
    assert json.loads((tmp_path / "00001" / "metadata.jsonl").read_text()) == META[1]
    assert sorted(p.name for p in (tmp_path / "00000" / "samples").iterdir()) == [
        "00000.png", "00001.png"]
    refs = load_generation_folder(tmp_path, colors=None)  # the evaluator's own reader
    assert [(r.prompt_index, r.image_index) for r in refs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    with Image.open(refs[0].path) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    m = json.loads(res.manifest.read_text())
    assert m["image_seeds"] == [5, 6] and m["sampler"] == "flow Euler ODE"
    # shift schedule with shift 1 over 2 steps: sigmas 1, 0.5, 0
    assert m["times"] == [1.0, 0.5, 0.0] and m["num_steps"] == 2 and m["guidance_scale"] == 3.0
    assert (m["layout"], m["model"], m["num_prompts"]) == ("geneval", "tiny", 2)
    assert "batch_size" not in m  # does not change the images


def test_four_digit_names(backbone, tmp_path):
    generate_geneval(backbone, META[:1], tmp_path, FAST, image_digits=4)
    assert sorted(p.name for p in (tmp_path / "00000" / "samples").iterdir()) == [
        "0000.png", "0001.png"]


def test_resume_generates_only_missing_images(backbone, tmp_path, monkeypatch):
    generate_geneval(backbone, META, tmp_path, FAST)
    files = sorted(tmp_path.glob("*/samples/*.png"))
    before = {p: p.stat().st_mtime_ns for p in files}
    old = np.asarray(Image.open(files[1]))
    files[1].unlink()
    counting = Counting(backbone, monkeypatch)
    res = generate_geneval(backbone, META, tmp_path, FAST)
    # one missing image: 2 steps x 1 sample
    assert (res.written, res.skipped, counting.calls, counting.samples) == (1, 3, 2, 2)
    assert all(p.stat().st_mtime_ns == before[p] for p in files if p != files[1])
    # same image as in the first batch of 4 (noise depends on j only), up to float rounding
    assert np.abs(np.asarray(Image.open(files[1])).astype(int) - old).max() <= 1
    counting.calls = 0
    assert generate_geneval(backbone, META, tmp_path, FAST).written == 0 and counting.calls == 0


def test_other_settings_are_refused_in_the_same_folder(backbone, tmp_path):
    generate_unigenbench(backbone, [(0, "a photo of a circle")], tmp_path, FAST)
    other = GenerationSettings(samples_per_prompt=2, num_steps=3, batch_size=4, seed=5)
    with pytest.raises(SlasError, match=r"other settings \(differ: \['num_steps', 'times'\]\)"):
        generate_unigenbench(backbone, [(0, "a photo of a circle")], tmp_path, other)
    with pytest.raises(SlasError, match="prompts_sha256"):
        generate_unigenbench(backbone, [(0, "a photo of a square")], tmp_path, FAST)


def test_unigenbench_names_and_shared_noise_per_image_number(backbone, tmp_path):
    res = generate_unigenbench(backbone, [(0, "a photo of a circle"), (7, "a photo of a circle")],
                               tmp_path, FAST)
    assert res.written == 4
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "0_0.png", "0_1.png", "7_0.png", "7_1.png"]
    px = {p.stem: np.asarray(Image.open(p)).astype(int) for p in tmp_path.glob("*.png")}
    # same prompt + same image number -> same noise -> same image; j = 0 vs 1 differ
    assert np.abs(px["0_1"] - px["7_1"]).max() <= 1
    assert np.abs(px["0_0"] - px["0_1"]).max() > 10


class ZeroEpsilon:
    """A DDPM-type backbone predicting eps = 0: DDIM (eta 0) then only rescales x."""

    prediction_type = "epsilon"
    latent_shape = (3, 4, 4)
    alphas_cumprod = ddpm_alphas_cumprod()

    def encode_prompts(self, prompts):
        return Conditioning({"h": torch.zeros(len(prompts), 1)})

    def predict(self, x_t, t, cond, guidance_scale):
        return torch.zeros_like(x_t)

    def decode(self, latents):
        return (latents.clamp(-1, 1) + 1) / 2


def test_ddpm_backbones_use_ddim_eta0_closed_form():
    bb = ZeroEpsilon()
    times = make_times(bb, SampleConfig(num_steps=4))  # timesteps 751, 501, 251, 1, then -1
    assert times.tolist() == [751, 501, 251, 1, -1]
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sample_latents(bb, bb.encode_prompts(["a", "b"]), noise, times, 1.0)
    # eps = 0: each step maps x -> sqrt(a_prev / a_t) x, which telescopes to
    # sqrt(a_final / a_751) x with a_final = alphas_cumprod[0] (set_alpha_to_one=False)
    a = bb.alphas_cumprod
    assert torch.allclose(out, noise * torch.sqrt(a[0] / a[751]), rtol=1e-5)


def test_ddpm_generation_records_its_sampler(tmp_path):
    res = generate_unigenbench(ZeroEpsilon(), [(3, "x")], tmp_path,
                               GenerationSettings(samples_per_prompt=1, num_steps=4))
    m = json.loads(res.manifest.read_text())
    assert m["sampler"] == "DDIM eta=0" and m["times"][-1] == -1.0
    assert (tmp_path / "3_0.png").is_file()


def test_bad_inputs():
    with pytest.raises(SlasError, match="samples_per_prompt"):
        GenerationSettings(samples_per_prompt=0)
    with pytest.raises(SlasError, match="unique indices"):
        generate_unigenbench(ZeroEpsilon(), [(1, "a"), (1, "b")], "unused", FAST)
    with pytest.raises(SlasError, match="'prompt'"):
        generate_geneval(ZeroEpsilon(), [{"tag": "colors"}], "unused", FAST)
