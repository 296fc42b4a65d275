"""HPS-v2.1 reward: tensor preprocessing, checkpoint format, raw-cosine scores, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from slas.config import RewardConfig
from slas.errors import SlasError
from slas.rewards import get_reward
from slas.rewards.clip_score import OPENAI_MEAN, OPENAI_STD
from slas.rewards.hps import hps_preprocess, load_hps

open_clip = pytest.importorskip("open_clip")
TF = pytest.importorskip("torchvision.transforms.functional")

ARCH = "slas-test-tiny-hps"
# The ViT-H-14 layout at toy widths: 224 px input (as HPS), 7x7 patches, one layer per tower.
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16,
                   "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}
PROMPTS = ["a cat", "a red car", "a cat", "two dogs"]


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip_cfg") / f"{ARCH}.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)
    return ARCH


@pytest.fixture(scope="module")
def tiny_model(tiny_arch):
    torch.manual_seed(0)
    return open_clip.create_model(tiny_arch, pretrained=None).eval()


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    """The real HPS_v2.1_compressed.pt layout: {"state_dict": ...} with DDP `module.` keys."""
    path = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_model.state_dict().items()}},
               path)
    return path


def _norm(x):
    m = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------- preprocessing


def test_non_square_is_resized_on_the_long_side_and_zero_padded():
    # 3x30x17: scale = 224/30; new size = (round(30*224/30), round(17*224/30)) = (224, 127)
    # (17*7.4667 = 126.93); pad_w = 224-127 = 97 -> 48 columns left, 49 right; no row padding.
    # A constant image stays constant under (antialiased) bicubic resizing.
    colour = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    out = hps_preprocess(colour.expand(1, 3, 30, 17))
    assert out.shape == (1, 3, 224, 224)
    black, inside = _norm(torch.zeros(1, 3, 1, 1)), _norm(colour)
    torch.testing.assert_close(out[..., :48], black.expand(1, 3, 224, 48))
    torch.testing.assert_close(out[..., 48 + 127 :], black.expand(1, 3, 224, 49))
    torch.testing.assert_close(out[..., 48 : 48 + 127], inside.expand(1, 3, 224, 127),
                               atol=1e-5, rtol=0)


def test_preprocess_matches_the_torchvision_reference_pipeline():
    # Reference: ToTensor -> ResizeMaxSize(224) (F.resize bicubic + F.pad fill 0) -> Normalize.
    torch.manual_seed(1)
    img = torch.rand(2, 3, 40, 20)  # -> (224, 112), pad 56 + 56
    ref = []
    for im in img:
        r = TF.resize(im, [224, 112], interpolation=TF.InterpolationMode.BICUBIC,
                      antialias=True)
        r = TF.pad(r, [56, 0, 56, 0], fill=0)
        ref.append(TF.normalize(r, OPENAI_MEAN, OPENAI_STD))
    torch.testing.assert_close(hps_preprocess(img), torch.stack(ref), atol=1e-5, rtol=1e-5)


def test_square_inputs_resize_plainly_and_224_is_left_alone():
    torch.manual_seed(2)
    img = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(hps_preprocess(img), _norm(img))  # no resize, no pad
    big = torch.rand(1, 3, 64, 64)
    ref = TF.resize(big, [224, 224], interpolation=TF.InterpolationMode.BICUBIC,
                    antialias=True)
    torch.testing.assert_close(hps_preprocess(big), _norm(ref), atol=1e-5, rtol=1e-5)


def test_batched_preprocess_equals_per_image():
    torch.manual_seed(3)
    img = torch.rand(3, 3, 50, 31)
    per_image = torch.cat([hps_preprocess(im[None]) for im in img])
    torch.testing.assert_close(hps_preprocess(img), per_image)


# ----------------------------------------------------------------------------- scoring


def test_scores_are_raw_cosines_of_the_loaded_model(tiny_model, tiny_arch, checkpoint):
    reward = load_hps(checkpoint, arch=tiny_arch)
    torch.manual_seed(4)
    images = torch.rand(4, 3, 48, 64)
    scores = reward(images, PROMPTS, [{}] * 4)
    tokens = open_clip.get_tokenizer(tiny_arch)(PROMPTS)
    with torch.no_grad():
        img = F.normalize(tiny_model.encode_image(hps_preprocess(images)), dim=-1)
        txt = F.normalize(tiny_model.encode_text(tokens), dim=-1)
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    torch.testing.assert_close(scores, (img * txt).sum(-1), atol=1e-5, rtol=1e-5)
    assert bool(((scores >= -1) & (scores <= 1)).all())


def test_identical_inputs_are_deterministic_and_batch_independent(tiny_arch, checkpoint):
    reward = load_hps(checkpoint, arch=tiny_arch, batch_size=1)
    torch.manual_seed(5)
    image = torch.rand(1, 3, 40, 40)
    images = torch.cat([image, torch.rand(1, 3, 40, 40), image])
    scores = reward(images, ["a cat", "a dog", "a cat"], None)
    torch.testing.assert_close(scores[0], scores[2])
    torch.testing.assert_close(reward(images, ["a cat", "a dog", "a cat"], None), scores)
    whole = load_hps(checkpoint, arch=tiny_arch, batch_size=32)(images, ["a cat", "a dog",
                                                                         "a cat"], None)
    torch.testing.assert_close(whole, scores, atol=1e-6, rtol=1e-5)


def test_text_features_are_computed_once_per_prompt(tiny_arch, checkpoint):
    reward = load_hps(checkpoint, arch=tiny_arch)
    calls = []
    tokenizer = reward.tokenizer
    reward.tokenizer = lambda texts: calls.append(list(texts)) or tokenizer(texts)
    images = torch.rand(4, 3, 32, 32)
    reward(images, PROMPTS, None)
    reward(images, PROMPTS, None)
    assert calls == [["a cat", "a red car", "two dogs"]]  # distinct prompts, first call only


def test_unprefixed_state_dict_loads_the_same(tiny_model, tiny_arch, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(tiny_model.state_dict(), path)
    images = torch.rand(2, 3, 32, 32)
    a = load_hps(path, arch=tiny_arch)(images, ["x", "y"], None)
    torch.save({"state_dict": tiny_model.state_dict()}, path)
    b = load_hps(path, arch=tiny_arch)(images, ["x", "y"], None)
    torch.testing.assert_close(a, b)


def test_factory_through_the_table(tiny_arch, checkpoint):
    config = RewardConfig(names=["hps_v21"], weights=[1.0], hps_checkpoint=str(checkpoint))
    config.hps_arch = tiny_arch  # not yet a RewardConfig field; the factory reads it if present
    reward = get_reward("hps_v21", config)
    assert reward(torch.rand(2, 3, 32, 32), ["a", "b"], [{}, {}]).shape == (2,)


# ----------------------------------------------------------------------------- errors


def test_missing_checkpoint_names_field_and_file(tmp_path):
    missing = tmp_path / "nope" / "HPS_v2.1_compressed.pt"
    with pytest.raises(SlasError, match=r"reward\.hps_checkpoint.*nope.*not found"):
        load_hps(missing)
    config = RewardConfig(names=["hps_v21"], weights=[1.0])
    with pytest.raises(SlasError, match=r"reward\.hps_checkpoint: not set"):
        get_reward("hps_v21", config)


def test_wrong_architecture_names_field_and_file(tiny_arch, tmp_path):
    other = dict(TINY, embed_dim=8)  # projections 32 -> 8 instead of 32 -> 16
    model = open_clip.CLIP(**other)
    path = tmp_path / "other.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.raises(SlasError, match=r"reward\.hps_checkpoint: .*other\.pt does not match "
                                        r"architecture slas-test-tiny-hps.*shape mismatch"):
        load_hps(path, arch=tiny_arch)


def test_not_a_checkpoint_and_unknown_arch(tiny_arch, checkpoint, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(SlasError, match=r"reward\.hps_checkpoint: cannot read .*junk\.pt"):
        load_hps(junk, arch=tiny_arch)
    with pytest.raises(SlasError, match=r"reward\.hps_arch: unknown open_clip architecture"):
        load_hps(checkpoint, arch="No-Such-ViT")


def test_bad_batch_shapes(tiny_arch, checkpoint):
    reward = load_hps(checkpoint, arch=tiny_arch)
    with pytest.raises(SlasError, match="got 2 images but 1 prompts"):
        reward(torch.rand(2, 3, 32, 32), ["only one"], None)
    with pytest.raises(SlasError, match=r"images must be \[N, 3, H, W\]"):
        reward(torch.rand(2, 32, 32), ["a", "b"], None)
