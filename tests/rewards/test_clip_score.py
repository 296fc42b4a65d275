"""CLIPScore reward: open_clip eval transform on tensors, checkpoint layouts, scores, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from slas.config import RewardConfig
from slas.errors import SlasError
from slas.rewards import get_reward
from slas.rewards.clip_score import ClipPreprocess, clip_preprocess, load_clip_score

open_clip = pytest.importorskip("open_clip")

# A DFN5B-like layout at toy widths: quick-GELU, its own input size (64 px), 4x4 patches.
TINY = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16,
                   "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}
# Deliberately not OpenAI's statistics, so a test notices if they are ignored.
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
PREPROCESS = {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
              "resize_mode": "squash"}
PROMPTS = ["a photo of a cat", "a blue bird", "a photo of a cat"]


def _norm(x, mean=MEAN, std=STD):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return open_clip.CLIP(**TINY).eval()


@pytest.fixture(scope="module")
def hf_folder(tiny_model, tmp_path_factory):
    """The Hugging Face open_clip layout: open_clip_config.json + open_clip_model.safetensors."""
    root = tmp_path_factory.mktemp("dfn_tiny")
    (root / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY, "preprocess_cfg": PREPROCESS}))
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()},
              str(root / "open_clip_model.safetensors"))
    return root


# ----------------------------------------------------------------------------- preprocessing


def test_shortest_crops_the_centre_without_resizing_when_the_short_side_fits():
    # h = 4 = S: new size (4, int(4*9/4) = 9) = input, no resize; crop left = round(2.5) = 2
    # (round half to even, as torchvision's int(round(...))) -> columns 2..5.
    img = torch.arange(3 * 4 * 9, dtype=torch.float32).view(1, 3, 4, 9) / 108
    out = clip_preprocess(img, ClipPreprocess(size=4, mean=MEAN, std=STD))
    torch.testing.assert_close(out, _norm(img[..., 2:6]))


def test_longest_pads_the_centre_with_fill():
    # 3x3x6, S = 6: ratio 1, no resize; pad_h = 3 -> 1 row on top, 2 below, filled with 0.6.
    img = torch.full((1, 3, 3, 6), 0.2)
    out = clip_preprocess(img, ClipPreprocess(size=6, mean=MEAN, std=STD,
                                              resize_mode="longest", fill=0.6))
    fill, inside = _norm(torch.full((1, 3, 1, 1), 0.6)), _norm(torch.full((1, 3, 1, 1), 0.2))
    for row in (0, 4, 5):
        torch.testing.assert_close(out[..., row, :], fill[..., 0, :].expand(1, 3, 6))
    torch.testing.assert_close(out[..., 1:4, :], inside.expand(1, 3, 3, 6))


@pytest.mark.parametrize("mode", ["shortest", "squash"])
def test_matches_open_clips_own_eval_transform(mode):
    torch.manual_seed(1)
    img = torch.rand(2, 3, 40, 70)
    ref_tf = open_clip.image_transform(24, is_train=False, mean=MEAN, std=STD, resize_mode=mode)
    ref = torch.stack([ref_tf(im) for im in img])
    out = clip_preprocess(img, ClipPreprocess(size=24, mean=MEAN, std=STD, resize_mode=mode))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- loading, scores


def _reference_scores(model, images, prompts, cfg):
    tokens = open_clip.get_tokenizer("ViT-B-32")(prompts)  # the default SimpleTokenizer, L=77
    with torch.no_grad():
        img = F.normalize(model.encode_image(clip_preprocess(images, cfg)), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
    return (img * txt).sum(-1)


def test_folder_layout_uses_the_checkpoints_own_config(tiny_model, hf_folder):
    reward = load_clip_score(hf_folder)
    torch.manual_seed(2)
    images = torch.rand(3, 3, 48, 80)
    scores = reward(images, PROMPTS, [{}, {}, {}])
    cfg = ClipPreprocess(size=64, mean=MEAN, std=STD, resize_mode="squash")
    torch.testing.assert_close(scores, _reference_scores(tiny_model, images, PROMPTS, cfg),
                               atol=1e-5, rtol=1e-5)
    assert bool(((scores >= -1) & (scores <= 1)).all()) and scores.dtype == torch.float32
    # Same image, same prompt -> same score; repeated calls are deterministic.
    again = reward(torch.cat([images[:1], images[:1]]), [PROMPTS[0]] * 2, None)
    torch.testing.assert_close(again, scores[[0, 0]], atol=1e-6, rtol=1e-5)


def test_weights_file_with_config_beside_it(tmp_path, tiny_model, hf_folder):
    (tmp_path / "open_clip_config.json").write_text(
        (hf_folder / "open_clip_config.json").read_text())
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(tiny_model.state_dict(), weights)
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(load_clip_score(weights)(images, PROMPTS[:2], None),
                               load_clip_score(hf_folder)(images, PROMPTS[:2], None))


def test_explicit_arch_without_config(tmp_path, tiny_model):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "slas-test-tiny-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "cfg" / "slas-test-tiny-clip.json")
    weights = tmp_path / "w" / "model.pt"
    weights.parent.mkdir()
    torch.save({"state_dict": tiny_model.state_dict()}, weights)
    reward = load_clip_score(weights, arch="slas-test-tiny-clip")
    images = torch.rand(2, 3, 80, 64)
    # No preprocess_cfg: open_clip defaults (OpenAI mean/std, shortest side + centre crop).
    cfg = ClipPreprocess(size=64)
    torch.testing.assert_close(reward(images, PROMPTS[:2], None),
                               _reference_scores(tiny_model, images, PROMPTS[:2], cfg),
                               atol=1e-5, rtol=1e-5)


def test_factory_through_the_table(hf_folder):
    config = RewardConfig(names=["clip_score"], weights=[1.0], clip_checkpoint=str(hf_folder))
    assert get_reward("clip_score", config)(torch.rand(2, 3, 32, 32), ["a", "b"],
                                            [{}, {}]).shape == (2,)


# ----------------------------------------------------------------------------- errors


def test_missing_or_incomplete_checkpoints_name_field_and_file(tmp_path, tiny_model):
    with pytest.raises(SlasError, match=r"reward\.clip_checkpoint: .*absent.* not found"):
        load_clip_score(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlasError, match=r"reward\.clip_checkpoint: folder .*empty holds none"):
        load_clip_score(tmp_path / "empty")
    lone = tmp_path / "lone" / "open_clip_pytorch_model.bin"
    lone.parent.mkdir()
    torch.save(tiny_model.state_dict(), lone)
    with pytest.raises(SlasError, match=r"reward\.clip_checkpoint: no architecture for .*lone"):
        load_clip_score(lone)
    with pytest.raises(SlasError, match=r"reward\.clip_checkpoint: not set"):
        get_reward("clip_score", RewardConfig(names=["clip_score"], weights=[1.0]))


def test_other_image_size_is_refused_not_interpolated(tmp_path, tiny_model):
    # open_clip's own loader would resize the position embeddings silently; we refuse.
    bigger = json.loads(json.dumps(TINY))
    bigger["vision_cfg"]["image_size"] = 96  # 6x6 patches instead of 4x4
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": bigger}))
    torch.save(tiny_model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(SlasError, match=r"reward\.clip_checkpoint: .*does not match .*"
                                        r"visual\.positional_embedding \(17, 32\) vs \(37, 32\)"):
        load_clip_score(tmp_path)
