"""GenEval backends: mmdet output conversion, transformers models, grey-masked CLIP colour crops."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from slas.errors import SlasError
from slas.eval.detectors import (
    COLOR_TEMPLATES,
    GENEVAL_OBJECTS,
    ClipColorClassifier,
    Mmdet2Detector,
    TransformersDetector,
    _is_jit_archive,
    boxes_to_detections,
    color_crop,
    mask_box,
    mmdet_result_to_detections,
    segments_to_detections,
)
from slas.eval.geneval import GENEVAL_COLORS, Detection, GenEvalThresholds, filter_detections

# ----------------------------------------------------------------------------- mmdet 2.x


def _fake_mmdet_output(h=4, w=5):
    """80 classes; person: 3 boxes (two tied scores), cat: 1 box, the rest empty."""
    bbox = [np.zeros((0, 5), np.float32) for _ in GENEVAL_OBJECTS]
    segm = [[] for _ in GENEVAL_OBJECTS]
    bbox[0] = np.array([[0, 0, 2, 2, 0.5], [1, 1, 3, 3, 0.9], [2, 0, 4, 1, 0.5]], np.float32)
    masks = [np.zeros((h, w), np.uint8) for _ in range(3)]
    for i, m in enumerate(masks):
        m[i, i] = 1
    segm[0] = masks
    cat = GENEVAL_OBJECTS.index("cat")
    bbox[cat] = np.array([[0.5, 1.5, 2.5, 3.5, 0.31]], np.float32)
    segm[cat] = [np.ones((h, w), bool)]
    return bbox, segm


def test_mmdet_conversion_keeps_every_box_in_upstream_order():
    bbox, segm = _fake_mmdet_output()
    dets = mmdet_result_to_detections((bbox, segm))
    assert set(dets) == {"person", "cat"}  # empty classes are dropped
    order = np.argsort(bbox[0][:, 4])[::-1]  # upstream evaluate_image's ordering
    assert [d.score for d in dets["person"]] == [float(bbox[0][i, 4]) for i in order]
    for det, i in zip(dets["person"], order, strict=True):
        assert det.box == tuple(float(v) for v in bbox[0][i, :4])
        assert det.mask.dtype == bool and det.mask[i, i] and det.mask.sum() == 1
    (cat,) = dets["cat"]
    assert cat.box == (0.5, 1.5, 2.5, 3.5) and cat.score == pytest.approx(0.31)
    # the engine's stable sort keeps that order: the kept list equals upstream's for ties
    kept = filter_detections(dets, "two_object", GenEvalThresholds())["person"]
    assert [d.box for d in kept] == [tuple(float(v) for v in bbox[0][i, :4]) for i in order]


def test_mmdet_conversion_without_masks_and_bad_class_count():
    bbox, _ = _fake_mmdet_output()
    dets = mmdet_result_to_detections(bbox)  # a bare list: box-only detector
    assert all(d.mask is None for d in dets["person"]) and len(dets["person"]) == 3
    with pytest.raises(SlasError, match="80 box classes.*3 class names"):
        mmdet_result_to_detections(bbox, class_names=("a", "b", "c"))


def test_mmdet2_detector_without_mmdet_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mmdet", None)  # import mmdet -> ImportError
    with pytest.raises(SlasError, match="mmdet.*mmcv-full"):
        Mmdet2Detector(tmp_path / "cfg.py", tmp_path / "w.pth")


def _fake_mmdet(monkeypatch, version, seen):
    mmdet, apis = types.ModuleType("mmdet"), types.ModuleType("mmdet.apis")
    mmdet.__version__ = version
    apis.init_detector = lambda config, checkpoint, device: ("model", config, device)
    apis.inference_detector = lambda model, img: seen.append(img) or _fake_mmdet_output()
    mmdet.apis = apis
    monkeypatch.setitem(sys.modules, "mmdet", mmdet)
    monkeypatch.setitem(sys.modules, "mmdet.apis", apis)


def test_mmdet2_detector_passes_bgr_and_converts(monkeypatch, tmp_path):
    seen = []
    _fake_mmdet(monkeypatch, "2.28.2", seen)
    (tmp_path / "cfg.py").write_text("")
    (tmp_path / "w.pth").write_bytes(b"")
    det = Mmdet2Detector(tmp_path / "cfg.py", tmp_path / "w.pth", device="cpu")
    image = np.zeros((4, 5, 3), np.uint8)
    image[..., 0] = 200  # red in RGB -> channel 2 in BGR
    out = det(image)
    assert seen[0][..., 2].min() == 200 and seen[0][..., 0].max() == 0
    assert len(out["person"]) == 3 and len(out["cat"]) == 1
    with pytest.raises(SlasError, match="--detector-checkpoint: file .*nope.pth not found"):
        Mmdet2Detector(tmp_path / "cfg.py", tmp_path / "nope.pth")


def test_mmdet2_detector_refuses_mmdet3(monkeypatch, tmp_path):
    _fake_mmdet(monkeypatch, "3.3.0", [])
    with pytest.raises(SlasError, match="needs mmdetection 2.x, found 3.3.0"):
        Mmdet2Detector(tmp_path / "cfg.py", tmp_path / "w.pth")


# ----------------------------------------------------------------------------- transformers


def test_mask_box_is_mmdets_mask2bbox():
    mask = np.zeros((5, 6), bool)
    mask[1, 2] = mask[3, 4] = True
    # columns 2..4, rows 1..3 -> (x_min, y_min, x_max + 1, y_max + 1) = (2, 1, 5, 4)
    assert mask_box(mask) == (2.0, 1.0, 5.0, 4.0)
    assert mask_box(np.zeros((5, 6), bool)) == (0.0, 0.0, 0.0, 0.0)


def test_segments_from_an_id_map_and_from_binary_maps():
    id2label = {0: "cat", 1: "mouse"}
    seg = np.array([[0, 1, 1], [0, 1, 2], [0, 0, 2]])
    info = [{"id": 1, "label_id": 1, "score": 0.8}, {"id": 2, "label_id": 0, "score": 0.4}]
    dets = segments_to_detections(torch.tensor(seg), info, id2label)
    (mouse,) = dets["computer mouse"]  # "mouse" is COCO's label for GenEval's computer mouse
    assert mouse.score == 0.8 and mouse.box == (1.0, 0.0, 3.0, 2.0)
    np.testing.assert_array_equal(mouse.mask, seg == 1)
    assert dets["cat"][0].box == (2.0, 1.0, 3.0, 3.0)
    binary = np.stack([seg == 1, seg == 2]).astype(np.float32)  # return_binary_maps layout
    again = segments_to_detections(binary, info, id2label, aliases={})
    assert set(again) == {"mouse", "cat"}
    np.testing.assert_array_equal(again["cat"][0].mask, seg == 2)
    assert segments_to_detections(None, [], id2label) == {}


def test_boxes_to_detections():
    dets = boxes_to_detections(torch.tensor([0.9, 0.2]), torch.tensor([2, 2]),
                               torch.tensor([[1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1]]),
                               {2: "remote"})
    assert [d.score for d in dets["tv remote"]] == pytest.approx([0.9, 0.2])
    assert dets["tv remote"][0] == Detection((1.0, 2.0, 3.0, 4.0), pytest.approx(0.9), None)


LABELS = {0: "cat", 1: "dog", 2: "mouse"}
# class logits (0, 0, 2, no-object 0): softmax of "mouse" = e^2 / (3 + e^2) = 7.389 / 10.389
MOUSE_P = math.exp(2) / (3 + math.exp(2))


def _force_head(linear: torch.nn.Linear, bias: list[float]) -> None:
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor(bias))


@pytest.fixture(scope="module")
def yolos_dir(tmp_path_factory):
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(0)
    cfg = YolosConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, image_size=[32, 32], patch_size=8,
                      num_detection_tokens=3, id2label=LABELS,
                      label2id={v: k for k, v in LABELS.items()})
    model = YolosForObjectDetection(cfg).eval()
    _force_head(model.class_labels_classifier.layers[-1], [0, 0, 2, 0])
    # box (cx, cy, w, h) = sigmoid(0, 0, 0, logit 0.25) = (0.5, 0.5, 0.5, 0.25)
    _force_head(model.bbox_predictor.layers[-1], [0, 0, 0, math.log(0.25 / 0.75)])
    root = tmp_path_factory.mktemp("yolos")
    model.save_pretrained(root)
    YolosImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(root)
    return root


def test_transformers_object_detection_model(yolos_dir):
    det = TransformersDetector(yolos_dir)
    out = det(np.full((40, 50, 3), 128, np.uint8))
    assert set(out) == {"computer mouse"} and len(out["computer mouse"]) == 3
    for d in out["computer mouse"]:
        # (0.5 -+ 0.25) * 50 = 12.5 / 37.5 and (0.5 -+ 0.125) * 40 = 15 / 25
        assert d.box == pytest.approx((12.5, 15.0, 37.5, 25.0), abs=1e-4)
        assert d.score == pytest.approx(MOUSE_P, abs=1e-5) and d.mask is None
    assert TransformersDetector(yolos_dir, score_floor=0.8)(np.zeros((8, 8, 3), np.uint8)) == {}


@pytest.fixture(scope="module")
def detr_seg_dir(tmp_path_factory):
    from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessor, ResNetConfig

    torch.manual_seed(0)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=backbone,
                     use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                     decoder_layers=1, encoder_attention_heads=8, decoder_attention_heads=8,
                     encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=4, num_labels=3,
                     id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = DetrForSegmentation(cfg).eval()
    _force_head(model.detr.class_labels_classifier, [0, 0, 2, 0])
    with torch.no_grad():  # every query's mask logit is 5 everywhere
        model.mask_head.output_conv.weight.zero_()
        model.mask_head.output_conv.bias.fill_(5.0)
    root = tmp_path_factory.mktemp("detr_seg")
    model.save_pretrained(root)
    DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(root)
    return root


def test_transformers_instance_segmentation_model(detr_seg_dir):
    out = TransformersDetector(detr_seg_dir)(np.full((20, 30, 3), 90, np.uint8))
    # all 4 queries tie (score MOUSE_P, mask prob sigmoid(5)); pixels go to the first query,
    # whose mask is then the whole image; the others keep no pixels and are dropped
    (d,) = out["computer mouse"]
    assert d.score == pytest.approx(MOUSE_P, abs=1e-5)
    assert d.mask.shape == (20, 30) and d.mask.all() and d.box == (0.0, 0.0, 30.0, 20.0)


def test_transformers_detector_bad_folder(tmp_path):
    with pytest.raises(SlasError, match="--detector-dir: folder .* not found"):
        TransformersDetector(tmp_path / "missing")


# ----------------------------------------------------------------------------- colour crops

G = 153  # the grey #999


def test_color_crop_pastes_through_the_mask_then_crops_with_pil_rounding():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    mask = np.zeros((4, 6), bool)
    mask[0, 1] = mask[1, 2] = True
    # box (0.5, 0.5, 3.5, 2.5) -> round half to even -> (0, 0, 4, 2): rows 0-1, columns 0-3
    out = np.asarray(color_crop(image, (0.5, 0.5, 3.5, 2.5), mask))
    want = np.full((2, 4, 3), G, np.uint8)
    want[0, 1], want[1, 2] = image[0, 1], image[1, 2]
    np.testing.assert_array_equal(out, want)
    # bgcolor=original: nothing changes; crop=0: the full masked image
    np.testing.assert_array_equal(np.asarray(color_crop(image, (0, 0, 6, 4), mask, None)), image)
    full = np.asarray(color_crop(image, (0.5, 0.5, 3.5, 2.5), mask, (0, 0, 255), crop=False))
    assert full.shape == (4, 6, 3) and tuple(full[3, 5]) == (0, 0, 255)
    assert tuple(full[0, 1]) == tuple(image[0, 1])
    # no mask: plain crop; a box rounding to nothing becomes one pixel
    np.testing.assert_array_equal(np.asarray(color_crop(image, (1, 2, 3, 4), None)),
                                  image[2:4, 1:3])
    assert color_crop(image, (2.4, 1.0, 2.6, 1.2), None).size == (1, 1)
    with pytest.raises(SlasError, match="mask of shape \\[3, 3\\]"):
        color_crop(image, (0, 0, 1, 1), np.ones((3, 3), bool))


TINY_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                   "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    root = tmp_path_factory.mktemp("tiny_clip")
    (root / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(root / "open_clip_model.safetensors"))
    return root


def test_zero_shot_head_is_clip_benchmarks_and_cached(clip_dir):
    clf = ClipColorClassifier(clip_dir, arch="ignored-because-the-config-wins")
    calls = []
    tokenize = clf.tokenizer
    clf.tokenizer = lambda texts: calls.append(list(texts)) or tokenize(texts)
    head = clf.head("cat")
    assert head.shape == (16, 10) and len(calls) == 10
    assert calls[0] == ["a photo of a red cat", "a photo of a red-colored cat",
                        "a photo of a red object"]
    with torch.no_grad():
        emb = F.normalize(clf.model.encode_text(tokenize(calls[7])), dim=-1).mean(0)
    torch.testing.assert_close(head[:, 7], emb / emb.norm())  # brown: normalise, mean, renorm
    torch.testing.assert_close(head.norm(dim=0), torch.ones(10))
    clf.head("cat")
    assert len(calls) == 10  # cached per class


def test_colour_is_the_argmax_over_the_head(clip_dir):
    clf = ClipColorClassifier(clip_dir, batch_size=1)  # two forwards of one crop each
    image = np.zeros((32, 32, 3), np.uint8)
    image[4:12, 4:12] = (220, 30, 30)
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:12] = True
    dets = [Detection((4, 4, 12, 12), 0.9, mask), Detection((0, 0, 32, 32), 0.9, None)]
    crops = torch.stack([clf.transform(color_crop(image, d.box, d.mask)) for d in dets])
    with torch.no_grad():
        feats = F.normalize(clf.model.encode_image(crops), dim=-1)  # [2, 16]
    # hand-made head: blue (4) matches crop 0 exactly, green (3) matches crop 1, others oppose
    head = -(feats[0] + feats[1])[:, None].repeat(1, 10)
    head[:, 4], head[:, 3] = feats[0], feats[1]
    clf.heads["cup"] = head
    assert clf(image, dets, "cup") == ["blue", "green"]
    assert clf(image, [], "cup") == []
    assert COLOR_TEMPLATES[1].format(c="red", object="cup") == "a photo of a red-colored cup"
    assert clf.colors == GENEVAL_COLORS


def test_openai_archive_loads_like_pretrained_openai(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    cfg = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "width": 64},
           "text_cfg": {**TINY_CLIP["text_cfg"], "width": 64, "heads": 1}}
    cfg["vision_cfg"].pop("head_width")  # OpenAI layout: 64-wide heads
    model = open_clip.CLIP(**cfg).eval()

    class Archive(torch.nn.Module):  # a TorchScript file with the OpenAI parameter names
        def __init__(self):
            super().__init__()
            for name, child in model.named_children():
                setattr(self, name, child)
            for name, p in model.named_parameters(recurse=False):
                self.register_parameter(name, p)

        def forward(self, x):
            return x * self.logit_scale

    torch.jit.trace(Archive(), torch.ones(1)).save(str(tmp_path / "ViT-tiny.pt"))
    torch.save(model.state_dict(), tmp_path / "state.pt")
    assert _is_jit_archive(tmp_path / "ViT-tiny.pt") and not _is_jit_archive(tmp_path / "state.pt")
    clf = ClipColorClassifier(tmp_path / "ViT-tiny.pt", arch="ViT-L-14")
    got, rounded = clf.model.state_dict(), []
    for key, value in model.state_dict().items():  # OpenAI builds cast some weights to fp16
        assert torch.equal(got[key], value) or torch.equal(got[key], value.half().float()), key
        rounded += [key] if not torch.equal(got[key], value) else []
    assert "visual.conv1.weight" in rounded and "text_projection" in rounded


def test_clip_classifier_errors(tmp_path, monkeypatch):
    with pytest.raises(SlasError, match="--clip-checkpoint: .*nope.pt not found"):
        ClipColorClassifier(tmp_path / "nope.pt")
    (tmp_path / "w.pt").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(SlasError, match=r"classifier .* needs the package .open_clip.*\[rewards\]"):
        ClipColorClassifier(tmp_path / "w.pt")
