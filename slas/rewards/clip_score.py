"""CLIPScore reward (open_clip) and the open_clip scoring core shared with HPS-v2.1.

Score = **raw cosine** of the L2-normalised image and text features: no x100, no x2.5, no clamp
at 0 (unlike Hessel et al.'s CLIPScore), as DanceGRPO-lineage code uses DFN5B-CLIP ViT-H/14 as
an RL reward (DanceGRPO issue #19; MixGRPO, Pref-GRPO), about 0.3-0.43 for real models.

The architecture comes from the checkpoint's own ``open_clip_config.json`` (Hugging Face open_clip
layout ``{"model_cfg", "preprocess_cfg"}``) or an explicit open_clip model name. Weights load
**strictly**, never resized: open_clip's loader silently interpolates position embeddings (how
Pref-GRPO runs the 378 px DFN5B weights in a 224 px ViT-H-14), which makes a different model.
Preprocessing reproduces open_clip's evaluation transform (``image_transform(is_train=False)``)
on batched tensors for ``resize_mode`` shortest / longest / squash, then mean/std.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slas.errors import SlasError

if TYPE_CHECKING:
    from slas.config import RewardConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")  # open_clip order
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def import_open_clip(reward: str) -> Any:
    """Import open_clip or fail with the install command."""
    try:
        import open_clip
    except ImportError as err:
        raise SlasError(
            f"reward {reward} needs open_clip ({err}); install it with pip install 'slas[rewards]'"
        ) from None
    return open_clip


def autocast_dtype(name: str, field: str = "reward.dtype") -> torch.dtype | None:
    """``fp32`` (no autocast), ``fp16`` or ``bf16`` -> the autocast dtype."""
    if name not in DTYPES:
        raise SlasError(f"{field}: unknown value {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


@contextmanager
def quiet_random_init() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning: the weights are loaded right after."""
    root = logging.getLogger()

    def flt(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


# ----------------------------------------------------------------------------- preprocessing


def resize_images(images: Tensor, size: tuple[int, int], interpolation: str = "bicubic",
                  antialias: bool = True) -> Tensor:
    """Resize ``images [N, C, H, W]`` to ``size = (h, w)`` like torchvision's tensor ``resize``
    (``interpolation`` bicubic or bilinear).

    ``align_corners=False``; float outputs are not clamped (torchvision clamps uint8 only). An
    image already at ``size`` is returned unchanged, as torchvision does.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode=interpolation, align_corners=False,
                         antialias=antialias)


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel; ``images [N, 3, H, W]``."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


@dataclass(frozen=True)
class ClipPreprocess:
    """open_clip's evaluation transform (``PreprocessCfg`` fields), applied to tensors.

    Attributes:
        size: square model input size in pixels.
        mean: per-channel mean (default OpenAI CLIP).
        std: per-channel std (default OpenAI CLIP).
        resize_mode: ``shortest`` | ``longest`` | ``squash`` (open_clip default ``shortest``).
        interpolation: ``bicubic`` | ``bilinear``.
        fill: ``longest`` padding value in [0, 1] units (open_clip ``fill_color`` / 255).
        antialias: antialiased downsampling (torchvision >= 0.17 tensor default; PIL antialiases).
    """

    size: int
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    resize_mode: Literal["shortest", "longest", "squash"] = "shortest"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    fill: float = 0.0
    antialias: bool = True


def clip_preprocess(images: Tensor, cfg: ClipPreprocess) -> Tensor:
    """Model input ``[N, 3, S, S]`` from ``images [N, 3, H, W]`` in [0, 1].

    Sizes follow open_clip/torchvision exactly: ``shortest`` makes the short side S and the long
    side ``int(S * long / short)``, then crops at ``round((dim - S) / 2)``; ``longest`` divides
    both sides by ``max(H, W) / S`` and rounds, then pads ``(S - dim) // 2`` before and the rest
    after; ``squash`` resizes to ``S x S``.
    """
    s = cfg.size
    _, _, h, w = images.shape
    x = images.float()
    if cfg.resize_mode == "squash":
        x = resize_images(x, (s, s), cfg.interpolation, cfg.antialias)
    elif cfg.resize_mode == "shortest":
        short, long = min(h, w), max(h, w)
        new_long = int(s * long / short)
        new = (s, new_long) if h <= w else (new_long, s)
        x = resize_images(x, new, cfg.interpolation, cfg.antialias)
        top, left = int(round((new[0] - s) / 2.0)), int(round((new[1] - s) / 2.0))
        x = x[..., top : top + s, left : left + s]
    elif cfg.resize_mode == "longest":
        ratio = max(h, w) / s
        new = (round(h / ratio), round(w / ratio))
        x = resize_images(x, new, cfg.interpolation, cfg.antialias)
        pad_h, pad_w = s - new[0], s - new[1]
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=cfg.fill)
    else:
        raise SlasError(f"open_clip preprocess_cfg.resize_mode {cfg.resize_mode!r} is not one "
                        "of shortest, longest, squash")
    return normalize_images(x, cfg.mean, cfg.std)


# ----------------------------------------------------------------------------- loading


def load_open_clip_state_dict(path: Path, field: str) -> dict[str, Tensor]:
    """An open_clip state dict from ``.safetensors`` or a torch file (``weights_only``): bare or
    ``{"state_dict": ...}`` (the HPS format), ``module.`` key prefixes (DDP) stripped."""
    if not path.is_file():
        raise SlasError(f"{field}: weights file {path} not found; set {field} to an existing file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure means the same thing to the user
        raise SlasError(f"{field}: cannot read {path} as a state dict ({type(err).__name__}: "
                        f"{err}); point {field} at the checkpoint file itself") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise SlasError(f"{field}: {path} holds no state dict (a mapping of tensors, or "
                        "{'state_dict': ...}); point it at the open_clip checkpoint")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_strict(model: nn.Module, state: Mapping[str, Tensor], path: Path, field: str,
                arch: str) -> None:
    """``load_state_dict(strict=True)`` with one clear message on any key or shape mismatch."""
    own = model.state_dict()
    state = dict(state)
    for key in ("logit_scale", "logit_bias"):  # stored as 0-d or [1] depending on the exporter
        if key in state and key in own and state[key].numel() == own[key].numel():
            state[key] = state[key].reshape(own[key].shape)
    problems = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
        "shape mismatch": [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                           for k, v in own.items() if k in state and state[k].shape != v.shape],
    }
    parts = [f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for name, keys in problems.items() if keys]
    if parts:
        raise SlasError(f"{field}: {path} does not match architecture {arch} ({'; '.join(parts)})"
                        "; give the architecture the checkpoint was trained with")
    model.load_state_dict(state, strict=True)


def build_open_clip(model_cfg: Mapping[str, Any], source: Path, field: str) -> nn.Module:
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` from ``model_cfg``: random init, offline."""
    open_clip = import_open_clip(field)
    cfg = json.loads(json.dumps(dict(model_cfg)))  # deep copy; the dict is edited below
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    vision["timm_model_pretrained"] = text["hf_model_pretrained"] = False  # never download
    custom = cfg.pop("custom_text", False) or "hf_model_name" in text
    if "multimodal_cfg" in cfg:
        raise SlasError(f"{field}: {source} describes a CoCa model; CLIPScore needs a CLIP model")
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    try:
        return cls(**cfg)
    except Exception as err:
        raise SlasError(f"{field}: cannot build the open_clip model described by {source} "
                        f"({type(err).__name__}: {err})") from None


def find_clip_files(path: Path, field: str) -> tuple[Path, Path | None]:
    """(weights file, ``open_clip_config.json`` or None) for a checkpoint file or folder."""
    if path.is_dir():
        weights = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None:
            raise SlasError(f"{field}: folder {path} holds none of {', '.join(WEIGHT_NAMES)}; "
                            "point it at the open_clip checkpoint folder or file")
        config = path / CONFIG_NAME
    elif path.is_file():
        weights, config = path, path.parent / CONFIG_NAME
    else:
        raise SlasError(f"{field}: {path} not found; set {field} to an open_clip checkpoint "
                        f"file or a folder with {CONFIG_NAME} and the weights")
    return weights, (config if config.is_file() else None)


# ----------------------------------------------------------------------------- scoring


class FeatureCache:
    """Per-prompt feature rows ``[D]``, least recently used evicted beyond ``size`` prompts."""

    def __init__(self, size: int) -> None:
        self.size, self._rows = size, OrderedDict()

    def keys(self) -> list[str]:
        return list(self._rows)

    def get(self, prompts: Sequence[str], compute: Callable[[list[str]], Tensor]) -> Tensor:
        """``[P, D]`` rows for ``prompts``; ``compute`` sees each missing prompt once."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._rows))
        if new:
            self._rows.update(zip(new, compute(new), strict=True))
        for p in prompts:
            self._rows.move_to_end(p)
        out = torch.stack([self._rows[p] for p in prompts])
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
        return out


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for ``dtype=None``."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class OpenClipScorer:
    """A RewardFn: raw cosine of an open_clip model's normalised image and text features.

    ``(images [N, 3, H, W] in [0, 1], prompts [N], metadata [N]) -> scores [N]`` (float32, on
    the images' device). Text features are cached per prompt (:class:`FeatureCache`); images go
    through the model in chunks of ``batch_size``; everything runs without gradients.

    Args:
        model: an open_clip model (``encode_image`` / ``encode_text``).
        tokenizer: open_clip tokenizer, ``list[str] -> LongTensor [P, L]``.
        preprocess: ``[N, 3, H, W]`` in [0, 1] -> model input ``[N, 3, S, S]``.
        device: where the model runs.
        name: reward name for error messages.
        dtype: autocast dtype for the forwards (None = fp32; the HPS reference runs fp16).
        batch_size: images per forward.
        text_cache_size: prompts whose features are kept.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], Tensor],
                 preprocess: Callable[[Tensor], Tensor], device: torch.device, *, name: str,
                 dtype: torch.dtype | None = None, batch_size: int = 32,
                 text_cache_size: int = 4096) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer, self.preprocess, self.device = tokenizer, preprocess, torch.device(device)
        self.name, self.dtype, self.batch_size = name, dtype, batch_size
        self.text_cache = FeatureCache(text_cache_size)

    def _encode_text(self, prompts: list[str]) -> Tensor:
        with autocast(self.device, self.dtype):
            feats = self.model.encode_text(self.tokenizer(prompts).to(self.device))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm text features ``[P, D]`` float32 (cached per prompt string)."""
        return self.text_cache.get(prompts, self._encode_text)

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """Unit-norm image features ``[N, D]`` float32 of ``images [N, 3, H, W]`` in [0, 1]."""
        feats = []
        for chunk in images.split(self.batch_size):
            x = self.preprocess(chunk.to(self.device, torch.float32))
            with autocast(self.device, self.dtype):
                feats.append(self.model.encode_image(x).float())
        return F.normalize(torch.cat(feats), dim=-1)

    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[Mapping[str, Any]] | None = None) -> Tensor:
        """Raw cosines ``[N]`` float32 of each image with its prompt."""
        check_batch(self.name, images, prompts, metadata)
        text = self.text_features(list(prompts))
        img = self.image_features(images)
        return (img * text).sum(-1).float().to(images.device)


def check_batch(name: str, images: Tensor, prompts: Sequence[str],
                metadata: Sequence[Mapping[str, Any]] | None) -> None:
    """One clear message for a malformed ``(images [N, 3, H, W], prompts [N], metadata [N])``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise SlasError(f"reward {name}: images must be [N, 3, H, W] in [0, 1], got "
                        f"{list(images.shape)}")
    n = images.shape[0]
    if isinstance(prompts, str) or len(prompts) != n:
        got = 1 if isinstance(prompts, str) else len(prompts)
        raise SlasError(f"reward {name}: got {n} images but {got} prompts; pass one per image")
    if metadata is not None and len(metadata) != n:
        raise SlasError(f"reward {name}: got {n} images but {len(metadata)} metadata records; "
                        "pass one record per image")


# ----------------------------------------------------------------------------- factory


def load_clip_score(path: str | Path, device: torch.device | str = "cpu", *,
                    arch: str | None = None, field: str = "reward.clip_checkpoint",
                    dtype: torch.dtype | None = None, batch_size: int = 32) -> OpenClipScorer:
    """Build the CLIPScore RewardFn from a local open_clip checkpoint.

    Args:
        path: a weights file (``.safetensors``/``.bin``/``.pt``) with ``open_clip_config.json``
            beside it, or the folder holding both (Hugging Face open_clip layout).
        device: where the model runs.
        arch: an open_clip model name overriding the config's ``model_cfg`` (the config's
            ``preprocess_cfg`` still applies when present); needed when no config exists.
        field: config field named in error messages.
        dtype: autocast dtype (None = fp32).
        batch_size: images per forward.
    """
    open_clip = import_open_clip("clip_score")
    weights, config_path = find_clip_files(Path(path), field)
    file_cfg: dict[str, Any] = {}
    if config_path is not None:
        try:
            file_cfg = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SlasError(f"{field}: {config_path} is not valid JSON ({err})") from None
    if arch is not None:
        try:
            with quiet_random_init():
                model = open_clip.create_model(arch, pretrained=None)
        except RuntimeError as err:
            raise SlasError(f"reward.clip_arch: unknown open_clip architecture {arch!r} "
                            f"({err}); see open_clip.list_models()") from None
        tokenizer = open_clip.get_tokenizer(arch)
    elif "model_cfg" in file_cfg:
        model = build_open_clip(file_cfg["model_cfg"], config_path, field)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{config_path.parent}")
    else:
        where = config_path or weights.parent / CONFIG_NAME
        raise SlasError(f"{field}: no architecture for {weights}: {where} is missing or has no "
                        "model_cfg; add the checkpoint's open_clip_config.json or set "
                        "reward.clip_arch to its open_clip model name")
    load_strict(model, load_open_clip_state_dict(weights, field), weights, field,
                arch or str(config_path))
    cfg = _preprocess_from(model, file_cfg.get("preprocess_cfg", {}), field)
    return OpenClipScorer(model, tokenizer, lambda x: clip_preprocess(x, cfg),
                          torch.device(device), name="clip_score", dtype=dtype,
                          batch_size=batch_size)


def _preprocess_from(model: nn.Module, pp_cfg: Mapping[str, Any], field: str) -> ClipPreprocess:
    """:class:`ClipPreprocess` at the model's image size with the config's overrides."""
    size = square_size(model, field)
    pp = {k: tuple(v) if isinstance(v, list) else v for k, v in pp_cfg.items()
          if k in ("mean", "std", "resize_mode", "interpolation", "fill_color")}
    if pp.get("interpolation") == "random":  # open_clip evaluates "random" as bicubic
        pp["interpolation"] = "bicubic"
    if (pp.get("interpolation", "bicubic"), pp.get("resize_mode", "shortest")) not in [
            (i, m) for i in ("bicubic", "bilinear") for m in ("shortest", "longest", "squash")]:
        raise SlasError(f"{field}: unsupported preprocess_cfg {dict(pp_cfg)}; interpolation "
                        "must be bicubic|bilinear and resize_mode shortest|longest|squash")
    fill = pp.pop("fill_color", 0) / 255.0  # open_clip fills PIL images in 0-255 units
    return ClipPreprocess(size=size, fill=fill, **pp)


def square_size(model: nn.Module, field: str) -> int:
    """The open_clip model's (square) input size."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    sizes = set(size) if isinstance(size, (tuple, list)) else {size}
    if len(sizes) != 1 or not isinstance(next(iter(sizes)), int):
        raise SlasError(f"{field}: model input size {size} is not a square size in pixels")
    return next(iter(sizes))


def clip_score(config: RewardConfig, device: torch.device) -> OpenClipScorer:
    """CLIPScore (open_clip, raw cosine) from ``reward.clip_checkpoint``; DFN5B-CLIP ViT-H/14."""
    path = config.clip_checkpoint
    if not path:
        raise SlasError("reward.clip_checkpoint: not set; reward clip_score needs the open_clip "
                        "checkpoint (e.g. DFN5B-CLIP-ViT-H-14-378 folder with "
                        "open_clip_config.json)")
    return load_clip_score(
        path, device, arch=config.clip_arch,
        dtype=autocast_dtype(config.dtype),
        batch_size=config.batch_size,
    )
