"""GenEval backends: detector and colour-classifier adapters for the rule engine.

- ``Mmdet2Detector``: GenEval's official detector (djghosh13/geneval
  ``evaluation/evaluate_images.py``), mmdetection 2.x Mask2Former Swin-S on COCO.
- ``TransformersDetector``: a local Hugging Face detection / instance-segmentation model; NOT
  comparable with published GenEval numbers (the thresholds were tuned for the mmdet checkpoint).
- ``ClipColorClassifier``: the official colour classifier, an OpenCLIP zero-shot head over the ten
  GenEval colours on grey-masked crops (upstream ``ImageCrops`` / ``color_classification`` with
  clip_benchmark's ``zero_shot_classifier``).

The world's backend is ``slas.world.detect.WorldDetector`` / ``WorldColorClassifier``. Optional
packages are imported when an adapter is built; a missing one raises ``SlasError``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import zipfile
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from slas.errors import SlasError
from slas.eval.geneval import GENEVAL_COLORS, Detection

GENEVAL_OBJECTS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse",
    "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
"""GenEval's ``object_names.txt``: the 80 COCO classes in the detector's label order."""

COCO_LABEL_ALIASES: dict[str, str] = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "tvmonitor": "tv", "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch",
    "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier",
}
"""COCO label spellings of Hugging Face configs -> the GenEval object names."""

COLOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {object}", "a photo of a {c}-colored {object}", "a photo of a {c} object",
)
"""The three zero-shot templates of ``evaluate_images.py`` (``{c}`` colour, ``{object}`` class)."""

GREY = (153, 153, 153)
"""Background ``#999`` that masked-out pixels take in the colour crops."""


def _import(module: str, what: str, install: str) -> Any:
    """Import an optional package or raise ``SlasError`` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SlasError(f"{what} needs the package {module.split('.')[0]!r} ({err}); {install}"
                        ) from None


def _require_path(path: str | Path, flag: str, kind: str = "file") -> Path:
    if not ((path := Path(path)).is_file() if kind == "file" else path.is_dir()):
        raise SlasError(f"{flag}: {kind} {path} not found; pass an existing {kind}")
    return path


# ----------------------------------------------------------------------------- mmdet 2.x


def mmdet_result_to_detections(
    result: Any, class_names: Sequence[str] = GENEVAL_OBJECTS
) -> dict[str, list[Detection]]:
    """Convert mmdet 2.x ``inference_detector`` output to ``Detections``.

    ``result`` is ``bbox_results`` or ``(bbox_results, segm_results)``: per class index an
    ``[n_k, 5]`` array of ``[x1, y1, x2, y2, score]`` and a list of ``n_k`` boolean ``[H, W]``
    masks. Detections are listed in the order ``np.argsort(score)[::-1]`` of upstream
    ``evaluate_image``, so the rule engine's stable sort keeps upstream's order for tied scores.
    Classes without detections are left out.

    Args:
        result: the detector output for one image.
        class_names: name of each class index (default: GenEval's COCO names).

    Returns:
        Class name -> detections (box, score, mask or None).
    """
    bbox = result[0] if isinstance(result, tuple) else result
    segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
    if len(bbox) != len(class_names) or (segm is not None and len(segm) != len(bbox)):
        raise SlasError(
            f"mmdet output has {len(bbox)} box classes and "
            f"{'no' if segm is None else len(segm)} mask classes, but {len(class_names)} class "
            "names; use a COCO-80 checkpoint or pass its class_names")
    out: dict[str, list[Detection]] = {}
    for k, name in enumerate(class_names):
        boxes = np.asarray(bbox[k]).reshape(-1, 5)
        if not len(boxes):
            continue
        out[name] = [
            Detection(tuple(float(v) for v in boxes[i, :4]), float(boxes[i, 4]),
                      None if segm is None else np.asarray(segm[k][i], dtype=bool))
            for i in np.argsort(boxes[:, 4])[::-1]
        ]
    return out


class Mmdet2Detector:
    """The official GenEval detector: mmdetection 2.x (mmcv-full 1.x) on one device.

    Args:
        config_path: the mmdet config, officially
            ``configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py``.
        checkpoint_path: its weights,
            ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth``.
        device: e.g. ``"cuda:0"`` (upstream asserts CUDA).
        class_names: names of the checkpoint's class indices (default: GenEval's COCO names).
    """

    def __init__(self, config_path: str | Path, checkpoint_path: str | Path,
                 device: str = "cuda", class_names: Sequence[str] = GENEVAL_OBJECTS) -> None:
        install = "install mmdetection 2.x and mmcv-full 1.7 (docs/evaluation.md, GenEval backends)"
        mmdet = _import("mmdet", "--detector mmdet2", install)
        if not str(getattr(mmdet, "__version__", "2")).startswith("2."):
            raise SlasError(f"--detector mmdet2 needs mmdetection 2.x, found {mmdet.__version__}; "
                            + install)
        apis = _import("mmdet.apis", "--detector mmdet2", install)
        config = _require_path(config_path, "--detector-config")
        checkpoint = _require_path(checkpoint_path, "--detector-checkpoint")
        self.model = apis.init_detector(str(config), str(checkpoint), device=device)
        self._infer = apis.inference_detector
        self.class_names = tuple(class_names)

    def __call__(self, image: np.ndarray) -> dict[str, list[Detection]]:
        """Detect in ``image`` (``[H, W, 3]`` uint8 RGB); mmdet takes arrays as BGR."""
        bgr = np.ascontiguousarray(np.asarray(image)[..., ::-1])
        return mmdet_result_to_detections(self._infer(self.model, bgr), self.class_names)


# ----------------------------------------------------------------------------- transformers


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Box ``(x_min, y_min, x_max + 1, y_max + 1)`` of a ``[H, W]`` bool mask (mmdet
    ``mask2bbox``, how Mask2Former's boxes are made); an empty mask gives ``(0, 0, 0, 0)``."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not len(cols):
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _name(label_id: int, id2label: Mapping[int, str], aliases: Mapping[str, str]) -> str:
    label = id2label.get(int(label_id), str(int(label_id)))
    return aliases.get(label, label)


def segments_to_detections(
    segmentation: Any, segments_info: Sequence[Mapping], id2label: Mapping[int, str],
    aliases: Mapping[str, str] = COCO_LABEL_ALIASES,
) -> dict[str, list[Detection]]:
    """``post_process_instance_segmentation`` output of one image -> ``Detections``.

    Args:
        segmentation: ``[H, W]`` map of segment ids (DETR-style; ``info["id"]`` marks a segment's
            pixels) or ``[S, H, W]`` binary maps, one per entry of ``segments_info``
            (``return_binary_maps=True``), or None.
        segments_info: per segment ``{"id", "label_id", "score"}``.
        id2label: the model config's label names.
        aliases: label -> GenEval name (labels not in it are kept as they are).

    Returns:
        Class name -> detections with the mask's box (``mask_box``) and the mask.
    """
    if segmentation is None or not segments_info:
        return {}
    seg = segmentation.cpu().numpy() if hasattr(segmentation, "cpu") else np.asarray(segmentation)
    if seg.ndim == 3 and seg.shape[0] != len(segments_info):
        raise SlasError(f"instance segmentation: {seg.shape[0]} binary maps for "
                        f"{len(segments_info)} segments; the processor output is inconsistent")
    out: dict[str, list[Detection]] = {}
    for i, info in enumerate(segments_info):
        mask = seg[i] > 0.5 if seg.ndim == 3 else seg == info["id"]
        det = Detection(mask_box(mask), float(info["score"]), mask)
        out.setdefault(_name(info["label_id"], id2label, aliases), []).append(det)
    return out


def boxes_to_detections(
    scores: Any, labels: Any, boxes: Any, id2label: Mapping[int, str],
    aliases: Mapping[str, str] = COCO_LABEL_ALIASES,
) -> dict[str, list[Detection]]:
    """``post_process_object_detection`` output of one image -> ``Detections`` (no masks).

    Args:
        scores: ``[M]`` confidences.
        labels: ``[M]`` label ids.
        boxes: ``[M, 4]`` ``(x1, y1, x2, y2)`` in pixels.
        id2label: the model config's label names.
        aliases: label -> GenEval name.
    """
    boxes = torch.as_tensor(boxes).reshape(-1, 4).tolist()
    out: dict[str, list[Detection]] = {}
    for s, k, b in zip(torch.as_tensor(scores).tolist(), torch.as_tensor(labels).tolist(), boxes,
                       strict=True):
        out.setdefault(_name(k, id2label, aliases), []).append(Detection(tuple(b), float(s), None))
    return out


class TransformersDetector:
    """A ``transformers`` detection / instance-segmentation model from a local folder.

    The folder holds ``config.json`` (its ``architectures[0]`` names the model class), the
    weights and ``preprocessor_config.json``. Models whose output carries masks go through the
    processor's ``post_process_instance_segmentation``, the others through
    ``post_process_object_detection``; labels are named by ``config.id2label``. NOT comparable
    with published GenEval numbers: the thresholds were tuned for the mmdet checkpoint.

    Args:
        model_dir: the model folder.
        device: where the model runs.
        score_floor: post-processing threshold; GenEval's own (0.3 / 0.9) apply afterwards. The
            default equals GenEval's lowest, so nothing the rules could keep is dropped while
            low-confidence queries do not compete for mask pixels.
        mask_threshold: passed to ``post_process_instance_segmentation``.
        overlap_mask_area_threshold: passed to ``post_process_instance_segmentation``.
        label_aliases: label -> GenEval name (default ``COCO_LABEL_ALIASES``).
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", *, score_floor: float = 0.3,
                 mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
                 label_aliases: Mapping[str, str] | None = None) -> None:
        transformers = _import("transformers", "--detector transformers",
                               "install it with pip install transformers")
        model_dir = _require_path(model_dir, "--detector-dir", "folder")
        config = transformers.AutoConfig.from_pretrained(model_dir)
        arch = (getattr(config, "architectures", None) or [""])[0]
        cls = getattr(transformers, arch, None) if arch else None
        if cls is None:
            raise SlasError(f"--detector-dir: {model_dir / 'config.json'} names no known model "
                            f"class in 'architectures' (got {arch!r}); save the model with "
                            "save_pretrained")
        self.model = cls.from_pretrained(model_dir).to(device).eval()
        self.processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
        self.id2label = {int(k): v for k, v in config.id2label.items()}
        self.aliases = dict(COCO_LABEL_ALIASES if label_aliases is None else label_aliases)
        self.device = torch.device(device)
        self.score_floor, self.mask_threshold = score_floor, mask_threshold
        self.overlap_mask_area_threshold = overlap_mask_area_threshold

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> dict[str, list[Detection]]:
        """Detect in ``image`` (``[H, W, 3]`` uint8 RGB)."""
        inputs = self.processor(images=[np.asarray(image)], return_tensors="pt").to(self.device)
        out = self.model(**inputs)
        size = [tuple(image.shape[:2])]
        if any(getattr(out, k, None) is not None for k in ("masks_queries_logits", "pred_masks")):
            post = self.processor.post_process_instance_segmentation
            extra = ({"return_binary_maps": True}
                     if "return_binary_maps" in inspect.signature(post).parameters else {})
            res = post(out, threshold=self.score_floor, mask_threshold=self.mask_threshold,
                       overlap_mask_area_threshold=self.overlap_mask_area_threshold,
                       target_sizes=size, **extra)[0]
            return segments_to_detections(res["segmentation"], res["segments_info"],
                                          self.id2label, self.aliases)
        res = self.processor.post_process_object_detection(out, threshold=self.score_floor,
                                                           target_sizes=size)[0]
        return boxes_to_detections(res["scores"], res["labels"], res["boxes"], self.id2label,
                                   self.aliases)


# ----------------------------------------------------------------------------- CLIP colours


def color_crop(image: np.ndarray, box: Sequence[float], mask: np.ndarray | None,
               background: tuple[int, int, int] | None = GREY, crop: bool = True) -> Image.Image:
    """The colour classifier's input for one detection (upstream ``ImageCrops``).

    The image is pasted through the instance mask onto a flat ``background`` (None = the image
    itself, upstream option ``bgcolor=original``), then cropped to the box with PIL's
    ``Image.crop`` (which rounds the box to whole pixels, half to even). Without a mask the image
    is not masked. A box that rounds to an empty crop is widened to one pixel (upstream fails).

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        box: ``(x1, y1, x2, y2)`` in pixels.
        mask: ``[H, W]`` bool instance mask, or None.
        background: RGB of the masked-out pixels (default ``#999``).
        crop: crop to the box (upstream option ``crop``, on by default).
    """
    img = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2]:
            raise SlasError(f"colour crop: mask of shape {list(mask.shape)} for an image of "
                            f"size {list(image.shape[:2])}; the detector must return full-image "
                            "masks")
        blank = img.copy() if background is None else Image.new("RGB", img.size, background)
        img = Image.composite(img, blank, Image.fromarray(mask))
    if not crop:
        return img
    x1, y1, x2, y2 = (round(float(v)) for v in box[:4])
    return img.crop((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)))


def _is_jit_archive(path: Path) -> bool:
    """True for a TorchScript archive (OpenAI's ``ViT-L-14.pt``), false for a state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def _load_open_clip(checkpoint: Path, arch: str, device: torch.device):
    """(model, tokenizer, preprocess_cfg dict) from an OpenAI archive or an open_clip checkpoint."""
    from slas.rewards.clip_score import CONFIG_NAME, load_clip_score

    open_clip = _import("open_clip", "the CLIP colour classifier (--clip-checkpoint)",
                        "install it with pip install 'slas[rewards]'")
    if checkpoint.is_file() and _is_jit_archive(checkpoint):
        # What open_clip runs for pretrained="openai" (fp32 weights, as upstream).
        model = open_clip.load_openai_model(str(checkpoint), precision="fp32", device="cpu")
        return model.to(device).eval(), open_clip.get_tokenizer(arch), {}
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    file_cfg: dict = {}
    if (folder / CONFIG_NAME).is_file():
        file_cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    # the checkpoint's own model_cfg (e.g. quick_gelu for OpenAI weights) wins over arch
    scorer = load_clip_score(checkpoint, device, arch=None if "model_cfg" in file_cfg else arch,
                             field="--clip-checkpoint")
    return scorer.model, scorer.tokenizer, file_cfg.get("preprocess_cfg", {})


class ClipColorClassifier:
    """GenEval's colour classifier: OpenCLIP zero-shot over colour words on masked crops.

    Per object class, a head ``[D, K]`` is built as clip_benchmark's ``zero_shot_classifier``:
    for each colour, the templates' text embeddings are L2-normalised, averaged and normalised
    again; heads are cached per class. Each detection's ``color_crop`` goes through open_clip's
    evaluation transform (resize + centre crop on the PIL image) and is assigned
    ``argmax(100 * normalise(f_image) @ head)``.

    Args:
        checkpoint: OpenAI's ``ViT-L-14.pt`` (what upstream loads with ``pretrained="openai"``),
            or an open_clip checkpoint file / folder with ``open_clip_config.json`` beside it.
        arch: open_clip architecture: the tokenizer for OpenAI archives, the model for a bare
            state dict without ``open_clip_config.json`` (use ``ViT-L-14-quickgelu`` for OpenAI
            weights saved that way); a config's ``model_cfg`` takes precedence.
        device: where the model runs.
        colors: the label set, in order (default: the ten GenEval colours).
        templates: prompt templates with ``{c}`` and ``{object}``.
        background: crop background (default ``#999``; None = upstream ``bgcolor=original``).
        crop: crop to the box (upstream ``crop=1``).
        batch_size: crops per forward (upstream: 16).
        amp: on CUDA, run under fp16 autocast as clip_benchmark does (ignored on CPU).
    """

    def __init__(self, checkpoint: str | Path, arch: str = "ViT-L-14", device: str = "cpu", *,
                 colors: Sequence[str] = GENEVAL_COLORS,
                 templates: Sequence[str] = COLOR_TEMPLATES,
                 background: tuple[int, int, int] | None = GREY, crop: bool = True,
                 batch_size: int = 16, amp: bool = True) -> None:
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise SlasError(f"--clip-checkpoint: {checkpoint} not found; pass OpenAI's "
                            "ViT-L-14.pt or an open_clip checkpoint file or folder")
        self.device = torch.device(device)
        self.model, self.tokenizer, pp = _load_open_clip(checkpoint, arch, self.device)
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        import open_clip

        size = self.model.visual.image_size
        self.transform = open_clip.image_transform(
            size if isinstance(size, int) else tuple(size), is_train=False,
            mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
            resize_mode=pp.get("resize_mode", "shortest"),
            interpolation=pp.get("interpolation", "bicubic"), fill_color=pp.get("fill_color", 0))
        self.colors, self.templates = tuple(colors), tuple(templates)
        self.background, self.crop, self.batch_size = background, crop, batch_size
        self.amp = amp and self.device.type == "cuda"
        self.heads: dict[str, torch.Tensor] = {}

    def _autocast(self):  # clip_benchmark's torch.cuda.amp.autocast
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    @torch.no_grad()
    def head(self, class_name: str) -> torch.Tensor:
        """Zero-shot weights ``[D, K]`` (unit columns, K = len(colors)) for one object class."""
        if class_name not in self.heads:
            cols = []
            for c in self.colors:
                texts = [t.format(c=c, object=class_name) for t in self.templates]
                with self._autocast():
                    emb = self.model.encode_text(self.tokenizer(texts).to(self.device))
                mean = F.normalize(emb.float(), dim=-1).mean(dim=0)
                cols.append(mean / mean.norm())
            self.heads[class_name] = torch.stack(cols, dim=1)
        return self.heads[class_name]

    @torch.no_grad()
    def __call__(self, image: np.ndarray, detections: Sequence[Detection],
                 class_name: str) -> list[str]:
        """One colour per detection of ``class_name`` in ``image`` (``[H, W, 3]`` uint8)."""
        if not detections:
            return []
        head = self.head(class_name)
        crops = [self.transform(color_crop(image, d.box, d.mask, self.background, self.crop))
                 for d in detections]
        preds = []
        for lo in range(0, len(crops), self.batch_size):
            x = torch.stack(crops[lo:lo + self.batch_size]).to(self.device)
            with self._autocast():
                feats = F.normalize(self.model.encode_image(x), dim=-1)
                logits = 100.0 * feats @ head.to(feats.dtype)
            preds += logits.float().argmax(dim=1).tolist()
        return [self.colors[i] for i in preds]
