"""The world's proxy rewards: ``world_clip`` (CLIPScore analogue) and ``world_pref`` (HPS analogue).

Both are one small dual encoder, :class:`WorldScorerModel`, scoring an image against a prompt by
the **raw cosine** of the L2-normalised image and text embeddings (no logit scale, no clamp), as
CLIPScore (DFN5B CLIP) and HPS-v2.1 are used as RL rewards (DanceGRPO; see the HPS-v2.1 and
CLIPScore notes of the design's reference material). Values lie in [-1, 1].

- Image encoder: four 3x3/4x4 convolutions (two with stride 2, 32 -> 16 -> 8 pixels), GELU,
  global average pooling, a linear projection.
- Text encoder: a **bag of words**: the mean of the word embeddings of the prompt (special
  tokens excluded), then a two-layer MLP. Word order is invisible, on purpose: "a circle left of
  a square" and "a square left of a circle" get the same embedding, as do "a red circle and a
  blue square" and "a blue circle and a red square". The scorers are therefore blind to position
  and to colour binding, and only roughly sensitive to counts (one number word among six
  others); that is the imperfection the world needs, mirroring CLIP's known weakness on
  composition.

``world_clip`` is trained with a symmetric InfoNCE loss on rendered world pairs, with the
images jittered by :func:`vivid` so that it barely reacts to contrast and saturation;
``world_pref`` starts from it and is fine-tuned with a Bradley-Terry loss on synthetic
preference pairs whose labellers prefer correct renders and, between two correct renders, the
more vivid one (:func:`vivid`, larger ``k``). That second rule is the exploitable bias: on
correct renders world_pref rises with ``k`` well past the point where the verifier fails
(docs/world.md, "Proxy rewards"). Training: ``python -m slas.world.train_rewards``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from slas.errors import SlasError
from slas.world.render import IMAGE_SIZE
from slas.world.tokenizer import SPECIAL_TOKENS, WorldTokenizer

if TYPE_CHECKING:
    from slas.config import RewardConfig

WEIGHTS_ROOT = Path(__file__).resolve().parents[1] / "world" / "weights"
WORLD_CLIP_DIR = WEIGHTS_ROOT / "world_clip"
WORLD_PREF_DIR = WEIGHTS_ROOT / "world_pref"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RETRAIN_COMMAND = "python -m slas.world.train_rewards"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ScorerConfig:
    """Architecture of :class:`WorldScorerModel` (stored in ``config.json``).

    Attributes:
        words: vocabulary words (ids follow ``WorldTokenizer``: special tokens first).
        max_length: tokenizer sequence length (``<bos>`` + words + ``<eos>``).
        channels: image encoder widths at 16x16, 16x16 and 8x8.
        word_dim: word embedding width.
        text_hidden: hidden width of the text MLP.
        embed_dim: width of the joint embedding space.
        init_temperature: initial InfoNCE temperature (CLIP: 0.07); the learned logit scale only
            shapes training losses, never the reward.
    """

    words: tuple[str, ...]
    max_length: int
    channels: tuple[int, int, int] = (16, 32, 64)
    word_dim: int = 64
    text_hidden: int = 128
    embed_dim: int = 64
    init_temperature: float = 0.07

    @classmethod
    def default(cls) -> ScorerConfig:
        """The world grammar's vocabulary with the default widths."""
        tok = WorldTokenizer.default()
        return cls(words=tuple(tok.vocab[len(SPECIAL_TOKENS):]), max_length=tok.max_length)


class WorldScorerModel(nn.Module):
    """Dual encoder: CNN image tower and bag-of-words text tower into one cosine space.

    Args:
        config: the architecture.
    """

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.image_tower = nn.Sequential(
            nn.Conv2d(3, c1, 4, stride=2, padding=1), nn.GELU(),  # 32 -> 16
            nn.Conv2d(c1, c2, 3, padding=1), nn.GELU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.GELU(),  # 16 -> 8
            nn.Conv2d(c3, c3, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, config.embed_dim),
        )
        vocab = len(SPECIAL_TOKENS) + len(config.words)
        self.word_embedding = nn.Embedding(vocab, config.word_dim)
        self.text_mlp = nn.Sequential(
            nn.Linear(config.word_dim, config.text_hidden), nn.GELU(),
            nn.Linear(config.text_hidden, config.embed_dim),
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def encode_images(self, images: Tensor) -> Tensor:
        """Images ``[N, 3, 32, 32]`` in [0, 1] -> unit-norm embeddings ``[N, D]``."""
        return nn.functional.normalize(self.image_tower(images * 2 - 1), dim=-1)

    def encode_tokens(self, ids: Tensor) -> Tensor:
        """Token ids ``[P, L]`` (``WorldTokenizer.encode``) -> unit-norm embeddings ``[P, D]``.

        The mean runs over word tokens only (ids >= number of special tokens), so padding,
        ``<bos>`` and ``<eos>`` do not dilute it; an empty prompt embeds the MLP of zero.
        """
        words = (ids >= len(SPECIAL_TOKENS)).unsqueeze(-1).float()  # [P, L, 1]
        summed = (self.word_embedding(ids) * words).sum(1)
        bag = summed / words.sum(1).clamp(min=1.0)
        return nn.functional.normalize(self.text_mlp(bag), dim=-1)

    def temperature_scale(self) -> Tensor:
        """``exp(logit_scale)`` clamped to 100, CLIP's cap (training losses only)."""
        return self.logit_scale.exp().clamp(max=100.0)


def vivid(images: Tensor, k: float | Tensor) -> Tensor:
    """Push contrast and saturation together: ``clamp(mu + k (x - mu), 0, 1)``.

    ``mu`` is each image's mean over all pixels and channels (one grey level per image), so every
    pixel's distance from that grey, in lightness and in chroma, is multiplied by ``k``; ``k = 1``
    is the identity, ``k > 1`` is more vivid, ``k < 1`` duller. Clamping at 0 and 1 is what breaks
    the image at large ``k``: channels saturate, hues drift to the nearest corner of the RGB cube
    and the light background blows out to white. This is the labellers' preference axis of
    ``world_pref`` and the transform of its bias table.

    Args:
        images: ``[N, 3, H, W]`` in [0, 1].
        k: a float or ``[N]`` per-image factors (>= 0).

    Returns:
        ``[N, 3, H, W]`` in [0, 1].
    """
    k = torch.as_tensor(k, dtype=images.dtype, device=images.device)
    if k.ndim == 1:
        k = k.view(-1, 1, 1, 1)
    mu = images.mean(dim=(1, 2, 3), keepdim=True)
    return (mu + k * (images - mu)).clamp(0.0, 1.0)


def save_scorer(model: WorldScorerModel, directory: str | Path,
                notes: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (architecture + ``notes``) to ``directory``.

    Returns:
        The directory.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE))
    payload = {"format_version": FORMAT_VERSION, "architecture": asdict(model.config),
               "notes": dict(notes or {})}
    (out / CONFIG_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    return out


def load_scorer(directory: str | Path) -> WorldScorerModel:
    """Read a model written by :func:`save_scorer` (eval mode, CPU).

    Raises:
        SlasError: a missing or malformed file, naming it and the command that regenerates it.
    """
    root = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise SlasError(f"world reward weights: {root / name} not found; regenerate them with "
                            f"`{RETRAIN_COMMAND}` or pass the directory that holds them")
    try:
        arch = json.loads((root / CONFIG_FILE).read_text())["architecture"]
        config = ScorerConfig(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in arch.items()})
        model = WorldScorerModel(config)
        model.load_state_dict(load_file(str(root / WEIGHTS_FILE)))
    except (json.JSONDecodeError, KeyError, TypeError, RuntimeError) as err:
        raise SlasError(f"world reward weights in {root} are malformed ({err}); regenerate them "
                        f"with `{RETRAIN_COMMAND}`") from err
    return model.eval()


@dataclass
class WorldScorer:
    """A RewardFn: ``(images [N, 3, 32, 32] in [0, 1], prompts [N], metadata [N]) -> [N]``.

    Scores are raw cosines (float32, on the images' device). Text embeddings are computed once
    per distinct prompt and cached; everything runs under ``torch.inference_mode``. ``metadata``
    is accepted for the common signature and ignored (the scorer reads only the prompt).

    Attributes:
        model: the dual encoder (moved to ``device``).
        device: where the model runs.
        name: reward name used in error messages.
    """

    model: WorldScorerModel
    device: torch.device
    name: str = "world_clip"
    _cache: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()
        cfg = self.model.config
        self.tokenizer = WorldTokenizer(cfg.words, cfg.max_length)

    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm embeddings ``[P, D]`` of ``prompts`` (cached per prompt string).

        Raises:
            SlasError: a word outside the world's vocabulary (from ``WorldTokenizer``).
        """
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if new:
            ids = self.tokenizer.encode(new).to(self.device)
            for prompt, emb in zip(new, self.model.encode_tokens(ids), strict=True):
                self._cache[prompt] = emb
        return torch.stack([self._cache[p] for p in prompts])

    @torch.inference_mode()
    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[Mapping[str, Any]] | None = None) -> Tensor:
        """Raw cosines ``[N]`` float32 of each image with its prompt."""
        size = (3, IMAGE_SIZE, IMAGE_SIZE)
        if images.ndim != 4 or tuple(images.shape[1:]) != size:
            raise SlasError(f"reward {self.name}: images must be [N, 3, {IMAGE_SIZE}, "
                            f"{IMAGE_SIZE}] in [0, 1], got {list(images.shape)}; decode the "
                            f"world policy's samples before scoring")
        if isinstance(prompts, str) or len(prompts) != images.shape[0]:
            raise SlasError(f"reward {self.name}: got {images.shape[0]} images but "
                            f"{1 if isinstance(prompts, str) else len(prompts)} prompts; pass "
                            f"one prompt per image")
        if metadata is not None and len(metadata) != images.shape[0]:
            raise SlasError(f"reward {self.name}: got {images.shape[0]} images but "
                            f"{len(metadata)} metadata records; pass one record per image")
        text = self.text_embeddings(prompts)
        img = self.model.encode_images(images.to(self.device, torch.float32))
        return (img * text).sum(-1).float().to(images.device)


def _factory_dir(weights_dir: str | Path | None, default: Path) -> Path:
    return default if weights_dir is None else Path(weights_dir)


def world_clip(config: RewardConfig, device: torch.device,
               weights_dir: str | Path | None = None) -> WorldScorer:
    """The CLIPScore analogue: raw cosine of the contrastive world scorer.

    Args:
        config: the reward section (no field is read; the weights are the package's).
        device: where the model runs.
        weights_dir: directory with ``model.safetensors`` + ``config.json``; default
            ``slas/world/weights/world_clip``.
    """
    model = load_scorer(_factory_dir(weights_dir, WORLD_CLIP_DIR))
    return WorldScorer(model, torch.device(device), name="world_clip")


def world_pref(config: RewardConfig, device: torch.device,
               weights_dir: str | Path | None = None) -> WorldScorer:
    """The HPS-v2.1 analogue: raw cosine of the preference-tuned world scorer (biased towards
    vivid images, see :func:`vivid`).

    Args:
        config: the reward section (no field is read; the weights are the package's).
        device: where the model runs.
        weights_dir: directory with ``model.safetensors`` + ``config.json``; default
            ``slas/world/weights/world_pref``.
    """
    model = load_scorer(_factory_dir(weights_dir, WORLD_PREF_DIR))
    return WorldScorer(model, torch.device(device), name="world_pref")
