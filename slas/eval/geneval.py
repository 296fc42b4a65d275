"""GenEval rule engine: per-class filtering, include/exclude checks, colour and position rules.

Implements the scoring logic of GenEval (Ghosh et al., 2023; djghosh13/geneval,
``evaluation/evaluate_images.py``): detections above a confidence threshold are sorted, cut to
the top 16 per class, optionally de-duplicated by IoU, then every ``include`` requirement of the
prompt's metadata is checked in order (count, colour, position against an earlier group) and
every ``exclude`` requirement fails the image when enough instances are present.

Everything here is pure: the detector and the colour classifier are injected through the
``Detector`` / ``ColorClassifier`` protocols, and the class vocabulary comes from the metadata,
so the same engine scores real images (COCO detector) and synthetic ones (programmatic detector).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from slas.errors import SlasError

GENEVAL_TAGS: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr",
)
"""The six GenEval tasks, in the order the paper reports them."""

GENEVAL_COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)
"""The official colour vocabulary, in the classifier's label order."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""Spatial relations of the position rule, in the order they are tested and reported."""


class Detection(NamedTuple):
    """One detected instance.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels; y grows downwards.
        score: detector confidence.
        mask: ``[H, W]`` bool instance mask of the full image, or None.
    """

    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None


Detections = Mapping[str, Sequence[Detection]]
"""Class name -> detections of that class, in any order."""


class Detector(Protocol):
    """Image -> detections per class name."""

    def __call__(self, image: np.ndarray) -> Detections:
        """Detect objects in ``image`` (``[H, W, 3]`` uint8)."""
        ...


class ColorClassifier(Protocol):
    """Assigns one colour word to each detection of one class."""

    def __call__(
        self, image: np.ndarray, detections: Sequence[Detection], class_name: str
    ) -> list[str]:
        """Return one colour per detection, same order (``image`` is ``[H, W, 3]`` uint8)."""
        ...


@dataclass(frozen=True)
class GenEvalThresholds:
    """Post-processing and rule constants; defaults are the official ``evaluate_images.py`` ones.

    Attributes:
        score: keep a detection only if its score is strictly greater (official ``threshold``).
        counting_score: the same threshold for prompts tagged ``counting``
            (official ``counting_threshold``).
        max_per_class: at most this many detections per class, highest scores first
            (official ``max_objects``).
        max_overlap: greedy NMS within a class: drop a detection whose IoU (inclusive "+1" pixel
            formula, see ``box_iou``) with an already kept one is >= this value. None turns NMS
            off, which is the official default (``max_overlap=1.0`` in the script's options).
        position_threshold: fraction of the summed box sizes removed from the centre offset
            before the relation test (official ``position_threshold``).
        relation_cut: a relation holds when the normalised shrunk offset is beyond +/- this
            value (0.5 in the official code).
    """

    score: float = 0.3
    counting_score: float = 0.9
    max_per_class: int = 16
    max_overlap: float | None = None
    position_threshold: float = 0.1
    relation_cut: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.max_per_class, bool) or not isinstance(self.max_per_class, int) or (
            self.max_per_class < 1
        ):
            raise SlasError(
                f"GenEvalThresholds.max_per_class must be an int >= 1, got {self.max_per_class!r}"
            )
        if self.max_overlap is not None and not 0.0 < self.max_overlap < 1.0:
            raise SlasError(
                f"GenEvalThresholds.max_overlap must be in (0, 1) or None, got "
                f"{self.max_overlap!r}; use None to turn NMS off (the official max_overlap=1.0)"
            )
        if self.position_threshold < 0:
            raise SlasError(
                "GenEvalThresholds.position_threshold must be >= 0, got "
                f"{self.position_threshold!r}"
            )
        if not 0.0 <= self.relation_cut < 1.0:
            raise SlasError(
                f"GenEvalThresholds.relation_cut must be in [0, 1), got {self.relation_cut!r}"
            )


class ImageResult(NamedTuple):
    """Outcome for one image.

    Attributes:
        correct: True when no requirement failed.
        reason: the failure messages joined by newlines ("" when correct), worded as upstream.
        kept: the detections that survived ``filter_detections``, per class.
    """

    correct: bool
    reason: str
    kept: dict[str, list[Detection]]


def validate_metadata(
    record: object, where: str = "metadata", colors: Sequence[str] | None = None
) -> None:
    """Check one GenEval metadata record; raise ``SlasError`` naming ``where`` on the first defect.

    Required: ``tag`` (one of ``GENEVAL_TAGS``) and a non-empty ``include`` list of
    ``{class, count >= 1}`` with optional ``color`` (a word, from ``colors`` unless None) and
    ``position = [relation, group_index]`` where ``group_index`` names an earlier entry.
    Optional ``exclude`` is a list of ``{class, count >= 1}``. Other top-level keys are allowed.

    Args:
        record: the parsed JSON object.
        where: prefix for error messages, e.g. ``"evaluation_metadata.jsonl line 7"``.
        colors: allowed colour words, or None to accept any non-empty string.
    """
    if not isinstance(record, Mapping):
        raise SlasError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "tag" not in record:
        raise SlasError(f"{where}: field 'tag' is missing; add one of {list(GENEVAL_TAGS)}")
    if record["tag"] not in GENEVAL_TAGS:
        raise SlasError(
            f"{where}: field 'tag' is {record['tag']!r}; use one of {list(GENEVAL_TAGS)}"
        )
    include = record.get("include")
    if not isinstance(include, list) or not include:
        raise SlasError(
            f"{where}: field 'include' must be a non-empty list of "
            "{'class', 'count'} objects, got " + repr(include)
        )
    for i, req in enumerate(include):
        _check_requirement(req, f"{where}: include[{i}]", i, colors, allow_extra=True)
    exclude = record.get("exclude", [])
    if not isinstance(exclude, list):
        raise SlasError(f"{where}: field 'exclude' must be a list, got {exclude!r}")
    for i, req in enumerate(exclude):
        _check_requirement(req, f"{where}: exclude[{i}]", i, colors, allow_extra=False)


def _check_requirement(
    req: object, where: str, index: int, colors: Sequence[str] | None, allow_extra: bool
) -> None:
    allowed = {"class", "count", "color", "position"} if allow_extra else {"class", "count"}
    if not isinstance(req, Mapping):
        raise SlasError(f"{where}: expected an object with 'class' and 'count', got {req!r}")
    unknown = sorted(set(req) - allowed)
    if unknown:
        raise SlasError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")
    if not isinstance(req.get("class"), str) or not req["class"]:
        raise SlasError(f"{where}: 'class' must be a non-empty string, got {req.get('class')!r}")
    count = req.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SlasError(f"{where}: 'count' must be an integer >= 1, got {count!r}")
    if "color" in req:
        color = req["color"]
        bad = not isinstance(color, str) or not color
        if bad or (colors is not None and color not in colors):
            allowed_colors = list(colors) if colors is not None else "a non-empty string"
            raise SlasError(f"{where}: 'color' is {color!r}; use one of {allowed_colors}")
    if "position" in req:
        pos = req["position"]
        ok = isinstance(pos, (list, tuple)) and len(pos) == 2 and pos[0] in RELATIONS
        target = pos[1] if ok else None
        if not ok or isinstance(target, bool) or not isinstance(target, int):
            raise SlasError(
                f"{where}: 'position' must be [relation, group_index] with relation in "
                f"{list(RELATIONS)}, got {pos!r}"
            )
        if not 0 <= target < index:
            raise SlasError(
                f"{where}: 'position' points at include[{target}], which is not an earlier "
                f"entry; use an index in 0..{index - 1}"
            )


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU with the inclusive "+1" pixel convention of upstream ``compute_iou``.

    Area of ``(x1, y1, x2, y2)`` is ``max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)``; the union is
    ``area_a + area_b - intersection`` and an empty union gives 0.
    """

    def area(x1: float, y1: float, x2: float, y2: float) -> float:
        return max(x2 - x1 + 1, 0.0) * max(y2 - y1 + 1, 0.0)

    inter = area(
        max(box_a[0], box_b[0]), max(box_a[1], box_b[1]),
        min(box_a[2], box_b[2]), min(box_a[3], box_b[3]),
    )
    union = area(*box_a[:4]) + area(*box_b[:4]) - inter
    return inter / union if union else 0.0


def filter_detections(
    dets: Detections, tag: str, th: GenEvalThresholds = GenEvalThresholds()
) -> dict[str, list[Detection]]:
    """Per-class post-processing of upstream ``evaluate_image`` (GenEval step 2).

    For each class: keep scores strictly above ``th.score`` (``th.counting_score`` when
    ``tag == "counting"``), sort by score descending (stable, so ties keep input order), keep the
    first ``th.max_per_class``, then, if ``th.max_overlap`` is set, greedy NMS over those.
    Classes left empty are dropped.

    Args:
        dets: class name -> detections, any order.
        tag: the prompt's GenEval tag.
        th: thresholds.

    Returns:
        Class name -> kept detections, highest score first.
    """
    cut = th.counting_score if tag == "counting" else th.score
    kept: dict[str, list[Detection]] = {}
    for name, items in dets.items():
        ranked = sorted((d for d in items if d.score > cut), key=lambda d: -d.score)
        ranked = ranked[: th.max_per_class]
        chosen: list[Detection] = []
        for det in ranked:
            if th.max_overlap is None or all(
                box_iou(det.box, c.box) < th.max_overlap for c in chosen
            ):
                chosen.append(det)
        if chosen:
            kept[name] = chosen
    return kept


def relative_position(
    a: Detection, b: Detection, th: GenEvalThresholds = GenEvalThresholds()
) -> set[str]:
    """Relations of A with respect to B (upstream ``relative_position``, GenEval section 3.3).

    With box centres c, box sizes d = (w, h) and offset o = c_A - c_B (y downwards):
    o' = sign(o) * max(|o| - t (d_A + d_B), 0) with t = ``th.position_threshold``. If both
    |o'| components are below 1e-3 there is no relation. Otherwise (dx, dy) = o' / ||o||, and
    dx < -cut -> "left of", dx > cut -> "right of", dy < -cut -> "above", dy > cut -> "below",
    cut = ``th.relation_cut``. Several relations can hold at once.
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in a.box[:4])
    bx1, by1, bx2, by2 = (float(v) for v in b.box[:4])
    off = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2, (ay1 + ay2) / 2 - (by1 + by2) / 2)
    size_sum = (abs(ax2 - ax1) + abs(bx2 - bx1), abs(ay2 - ay1) + abs(by2 - by1))
    shrunk = [
        math.copysign(max(abs(o) - th.position_threshold * s, 0.0), o) if o else 0.0
        for o, s in zip(off, size_sum, strict=True)
    ]
    if all(abs(v) < 1e-3 for v in shrunk):
        return set()
    norm = math.hypot(*off)
    dx, dy = shrunk[0] / norm, shrunk[1] / norm
    rels = set()
    if dx < -th.relation_cut:
        rels.add("left of")
    if dx > th.relation_cut:
        rels.add("right of")
    if dy < -th.relation_cut:
        rels.add("above")
    if dy > th.relation_cut:
        rels.add("below")
    return rels


def _color_reason(req: Mapping, colors: list[str]) -> str | None:
    want, n = req["color"], req["count"]
    hits = colors.count(want)
    if hits >= n:
        return None
    order = list(GENEVAL_COLORS) + [c for c in dict.fromkeys(colors) if c not in GENEVAL_COLORS]
    tally = ", ".join(f"{colors.count(c)} {c}" for c in order if c in colors)
    return f"expected {want} {req['class']}>={n}, found {hits} {want}; and {tally}"


def _position_reason(
    req: Mapping, found: list[Detection], groups: list[list[Detection] | None],
    th: GenEvalThresholds,
) -> str | None:
    rel, target = req["position"]
    if groups[target] is None:
        return f"no target for {req['class']} to be {rel}"
    for obj in found:
        for ref in groups[target]:
            rels = relative_position(obj, ref, th)
            if rel not in rels:
                seen = " and ".join(r for r in RELATIONS if r in rels)
                return f"expected {req['class']} {rel} target, found {seen} target"
    return None


def evaluate_image(
    image: np.ndarray | None,
    metadata: Mapping,
    detections: Detections,
    color_classifier: ColorClassifier | None,
    th: GenEvalThresholds = GenEvalThresholds(),
) -> ImageResult:
    """Score one image against its GenEval metadata (upstream ``evaluate``, steps 2-5).

    Each ``include`` requirement, in order, takes the top-``count`` kept detections of its class
    (fewer -> fail); with ``color``, passes when at least ``count`` of them are classified as that
    colour; with ``position`` (checked only if still passing), every chosen detection must hold
    the relation to every detection of the referenced earlier group, and a failed referenced
    group fails it. A passing requirement records its detections as a group, a failing one
    records none. Each ``exclude`` requirement fails the image when its class has at least
    ``count`` kept detections ("exactly N" for counting prompts).

    Args:
        image: ``[H, W, 3]`` uint8, passed only to ``color_classifier`` (may be None without one).
        metadata: one GenEval record (``tag``, ``include``, optional ``exclude``).
        detections: class name -> raw detections for this image.
        color_classifier: required when any requirement has a ``color``.
        th: thresholds.

    Returns:
        ``ImageResult(correct, reason, kept)``.
    """
    validate_metadata(metadata)
    include = metadata["include"]
    if color_classifier is None and any("color" in req for req in include):
        raise SlasError(
            "metadata: an 'include' requirement has a 'color' but no color_classifier was "
            "given; pass one (e.g. the CLIP colour classifier or the world's)"
        )
    kept = filter_detections(detections, metadata["tag"], th)
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in include:
        name, n = req["class"], req["count"]
        found = kept.get(name, [])[:n]
        reason = None
        if len(found) < n:
            reason = f"expected {name}>={n}, found {len(found)}"
        if reason is None and "color" in req:
            colors = list(color_classifier(image, found, name))
            if len(colors) != len(found):
                raise SlasError(
                    f"color_classifier returned {len(colors)} colours for {len(found)} "
                    f"'{name}' detections; it must return one colour per detection"
                )
            reason = _color_reason(req, colors)
        if reason is None and "position" in req:
            reason = _position_reason(req, found, groups, th)
        groups.append(found if reason is None else None)
        if reason is not None:
            reasons.append(reason)
    for req in metadata.get("exclude", []):
        have = len(kept.get(req["class"], []))
        if have >= req["count"]:
            reasons.append(f"expected {req['class']}<{req['count']}, found {have}")
    return ImageResult(not reasons, "\n".join(reasons), kept)
