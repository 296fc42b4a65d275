"""The world's captions: GenEval's six categories, metadata format and prompt grammar.

Metadata records follow GenEval's ``prompts/evaluation_metadata.jsonl`` (djghosh13/geneval):
``{"tag", "include": [{"class", "count", optional "color", optional "position": [rel, 0]}],
optional "exclude" (counting only: ``[{"class", "count": N + 1}]``), "prompt"}``. For position,
``include[0]`` is the reference object B and ``include[1]`` the positioned object A, and the prompt
reads "a photo of a A rel B", as in GenEval. Prompts (GenEval's grammar):

=============  ===============================================
tag            prompt
=============  ===============================================
single_object  a photo of a circle
two_object     a photo of a circle and a square
counting       a photo of three triangles          (2 to 4)
colors         a photo of an orange circle
position       a photo of a circle left of a square
color_attr     a photo of a red circle and a blue square
=============  ===============================================

``scene_for`` builds a scene that satisfies a record (and contains no other objects);
``train_prompts`` / ``eval_prompts`` are the RL-training and evaluation prompt sets.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence

from slas.errors import SlasError
from slas.world.render import COLORS, IMAGE_SIZE, SHAPES, Scene, WorldObject

TAGS: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                           "cross": "crosses"}
_PREFIX = "a photo of "


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(entry: Mapping) -> str:
    """Noun phrase of one include entry: 'a circle', 'an orange circle', 'three circles'."""
    cls, count, color = entry["class"], entry["count"], entry.get("color")
    if count > 1:
        head = PLURALS[cls] if color is None else f"{color} {PLURALS[cls]}"
        return f"{NUMBER_WORDS[count]} {head}"
    head = cls if color is None else f"{color} {cls}"
    return f"{_article(head)} {head}"


def format_prompt(metadata: Mapping) -> str:
    """The GenEval-grammar prompt of a metadata record (its ``prompt`` field is ignored)."""
    inc = metadata["include"]
    if metadata["tag"] == "position":
        return f"{_PREFIX}{_np(inc[1])} {inc[1]['position'][0]} {_np(inc[0])}"
    return _PREFIX + " and ".join(_np(e) for e in inc)


def make_metadata(tag: str, include: list[dict]) -> dict:
    """A validated record (``exclude`` added for counting, ``prompt`` from the grammar)."""
    meta: dict = {"tag": tag, "include": include}
    if tag == "counting":
        meta["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
    validate_metadata(meta)
    meta["prompt"] = format_prompt(meta)
    return meta


def validate_metadata(metadata: Mapping) -> None:
    """Raise ``SlasError`` unless ``metadata`` is a world record the grammar can express."""
    tag, inc = metadata.get("tag"), metadata.get("include")
    where = f"metadata {metadata.get('prompt', dict(metadata))!r}"
    if tag not in TAGS:
        raise SlasError(f"{where}: field 'tag' is {tag!r}; use one of {', '.join(TAGS)}")
    n_inc = {"two_object": 2, "position": 2, "color_attr": 2}.get(tag, 1)
    if not isinstance(inc, list) or len(inc) != n_inc:
        raise SlasError(f"{where}: field 'include' must be a list of {n_inc} entries for {tag}")
    for e in inc:
        if e.get("class") not in SHAPES:
            raise SlasError(f"{where}: include class {e.get('class')!r} is not a world shape; "
                            f"use one of {', '.join(SHAPES)}")
        if "color" in e and e["color"] not in COLORS:
            raise SlasError(f"{where}: include color {e['color']!r} is not a world colour; use one"
                            f" of {', '.join(COLORS)}")
    want_count = {2, 3, 4} if tag == "counting" else {1}
    if any(e.get("count") not in want_count for e in inc):
        raise SlasError(f"{where}: include count must be in {sorted(want_count)} for {tag}")
    want_color = tag in ("colors", "color_attr")
    if any(("color" in e) != want_color for e in inc):
        raise SlasError(f"{where}: {tag} entries must {'' if want_color else 'not '}have 'color'")
    if n_inc == 2 and inc[0]["class"] == inc[1]["class"]:
        raise SlasError(f"{where}: the two include classes must differ (both are "
                        f"{inc[0]['class']!r}); pick two different shapes")
    pos = inc[1].get("position") if tag == "position" else None
    if tag == "position" and (not isinstance(pos, (list, tuple)) or len(pos) != 2
                              or pos[0] not in RELATIONS or pos[1] != 0):
        raise SlasError(f"{where}: include[1].position must be [relation, 0] with relation in "
                        f"{', '.join(RELATIONS)}")
    if any("position" in e for e in inc) and tag != "position":
        raise SlasError(f"{where}: only position records may have 'position'")


def sample_spec(tag: str, rng: random.Random) -> dict:
    """Draw a random metadata record of ``tag`` from the full grammar (every composition).

    Args:
        tag: one of ``TAGS``.
        rng: the random source (``random.Random``; draws are deterministic in its state).
    """
    if tag not in TAGS:
        raise SlasError(f"sample_spec: unknown tag {tag!r}; use one of {', '.join(TAGS)}")
    if tag == "single_object":
        return make_metadata(tag, [{"class": rng.choice(SHAPES), "count": 1}])
    if tag == "counting":
        return make_metadata(tag, [{"class": rng.choice(SHAPES), "count": rng.choice((2, 3, 4))}])
    if tag == "colors":
        return make_metadata(tag, [{"class": rng.choice(SHAPES), "count": 1,
                                    "color": rng.choice(COLORS)}])
    a, b = rng.sample(SHAPES, 2)
    if tag == "two_object":
        return make_metadata(tag, [{"class": a, "count": 1}, {"class": b, "count": 1}])
    if tag == "position":  # include[0] is the reference B, include[1] the positioned A
        rel = rng.choice(RELATIONS)
        return make_metadata(tag, [{"class": b, "count": 1},
                                   {"class": a, "count": 1, "position": [rel, 0]}])
    ca, cb = rng.sample(COLORS, 2)
    return make_metadata(tag, [{"class": a, "count": 1, "color": ca},
                               {"class": b, "count": 1, "color": cb}])


def relation_components(a: tuple[float, float, float, float],
                        b: tuple[float, float, float, float],
                        position_threshold: float = 0.1) -> tuple[float, float]:
    """GenEval's normalised, shrunk offset ``(dx, dy)`` of box ``a`` relative to box ``b``.

    GenEval (djghosh13/geneval) ``evaluate_images.py`` ``relative_position``: offset of the box
    centres, shrunk per axis by ``position_threshold * (size_a + size_b)``, divided by the norm of
    the unshrunk offset. "left of" holds when dx < -0.5, "right of" dx > 0.5, "above" dy < -0.5,
    "below" dy > 0.5. Returns (0, 0) for coincident centres.
    """
    o = ((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    d = (a[2] - a[0] + b[2] - b[0], a[3] - a[1] + b[3] - b[1])
    norm = (o[0] ** 2 + o[1] ** 2) ** 0.5
    if norm == 0:
        return 0.0, 0.0
    shrunk = [max(abs(o[i]) - position_threshold * d[i], 0.0) * (1 if o[i] > 0 else -1)
              for i in range(2)]
    return shrunk[0] / norm, shrunk[1] / norm


def _relation_clear(a: tuple, b: tuple, rel: str, margin: float) -> bool:
    """True if ``a rel b`` holds with ``margin`` under GenEval's rule and no other relation does;
    ``a``, ``b`` are ``(cx, cy, size)``."""
    box_a = (a[0] - a[2] / 2, a[1] - a[2] / 2, a[0] + a[2] / 2, a[1] + a[2] / 2)
    box_b = (b[0] - b[2] / 2, b[1] - b[2] / 2, b[0] + b[2] / 2, b[1] + b[2] / 2)
    dx, dy = relation_components(box_a, box_b)
    horizontal = rel in ("left of", "right of")
    main, other = (dx, dy) if horizontal else (dy, dx)
    sign = -1 if rel in ("left of", "above") else 1
    return sign * main >= 0.5 + margin and abs(other) <= 0.5 - margin


def _separated(a: tuple, b: tuple, gap: float) -> bool:
    """Bounding boxes of ``(cx, cy, size)`` at least ``gap`` pixels apart along x or y."""
    reach = (a[2] + b[2]) / 2 + gap
    return abs(a[0] - b[0]) >= reach or abs(a[1] - b[1]) >= reach


def scene_for(
    metadata: Mapping,
    rng: random.Random,
    *,
    size_range: tuple[float, float] = (8.0, 11.0),
    gap: float = 2.0,
    edge_margin: float = 1.0,
    relation_margin: float = 0.2,
    max_tries: int = 10_000,
) -> Scene:
    """A random scene that satisfies a metadata record and contains only the objects it names.

    Unspecified colours are uniform over ``COLORS``; sizes are uniform in ``size_range``; centres
    are uniform with the whole object ``edge_margin`` pixels inside the image; placement is
    reject-and-resample so that bounding boxes are at least ``gap`` pixels apart. For position,
    the layout is also rejected unless the relation is unambiguous under GenEval's rule:
    ``sign * d_axis >= 0.5 + relation_margin`` and ``|d_other| <= 0.5 - relation_margin``.

    Args:
        metadata: a world record (see module docstring); validated.
        rng: the random source (``random.Random``).
        size_range: (min, max) object size in pixels.
        gap: minimum distance between bounding boxes, pixels.
        edge_margin: minimum distance from a bounding box to the image border, pixels.
        relation_margin: slack on GenEval's 0.5 cut for position records.
        max_tries: layouts tried before giving up with ``SlasError``.
    """
    validate_metadata(metadata)
    inc = metadata["include"]
    wanted = [(e["class"], e.get("color")) for e in inc for _ in range(e["count"])]
    rel = inc[1]["position"][0] if metadata["tag"] == "position" else None
    colors = [c if c is not None else rng.choice(COLORS) for _, c in wanted]
    for _ in range(max_tries):
        placed: list[tuple[float, float, float]] = []  # (cx, cy, size)
        for _ in wanted:
            size = rng.uniform(*size_range)
            lo, hi = size / 2 + edge_margin, IMAGE_SIZE - size / 2 - edge_margin
            box = (rng.uniform(lo, hi), rng.uniform(lo, hi), size)
            if not all(_separated(box, p, gap) for p in placed):
                break
            placed.append(box)
        if len(placed) < len(wanted):
            continue
        if rel is None or _relation_clear(placed[1], placed[0], rel, relation_margin):
            return Scene(tuple(WorldObject(shape, color, *box) for (shape, _), color, box
                               in zip(wanted, colors, placed, strict=True)))
    raise SlasError(f"scene_for: no layout found for {metadata.get('prompt')!r} in {max_tries} "
                    f"tries; use smaller size_range or gap")


def sample_pairs(
    n: int, seed: int, tags: Sequence[str] | None = None
) -> tuple[list[Scene], list[dict]]:
    """``n`` (scene, metadata) pairs for pretraining: tag uniform over ``tags`` (default all six),
    then ``sample_spec`` and ``scene_for``; deterministic in ``(n, seed, tags)``."""
    tags = tuple(TAGS if tags is None else tags)
    bad = [t for t in tags if t not in TAGS]
    if bad or not tags:
        raise SlasError(f"sample_pairs: unknown tags {bad}; use a non-empty subset of "
                        f"{', '.join(TAGS)}")
    rng = random.Random(seed)
    scenes, metas = [], []
    for _ in range(n):
        meta = sample_spec(rng.choice(tags), rng)
        scenes.append(scene_for(meta, rng))
        metas.append(meta)
    return scenes, metas


def _phrase(words: list[str], prompt: str) -> dict:
    """Parse 'a [colour] shape' / 'NUMBER shapes' into an include entry."""
    def bad(word: str, why: str = "unknown word") -> SlasError:
        return SlasError(f"prompt {prompt!r}: {why} {word!r}; valid colours: {', '.join(COLORS)};"
                         f" valid shapes: {', '.join(SHAPES)}; numbers: two, three, four")
    if len(words) not in (2, 3):
        raise bad(" ".join(words), "cannot read the phrase")
    head, rest = words[0], words[1:]
    color = rest[0] if len(rest) == 2 else None
    if color is not None and color not in COLORS:
        raise bad(color)
    counts = {w: c for c, w in NUMBER_WORDS.items()}
    if head in counts:
        singular = {p: s for s, p in PLURALS.items()}
        if rest[-1] not in singular:
            raise bad(rest[-1], "expected a plural shape, got")
        entry = {"class": singular[rest[-1]], "count": counts[head]}
    else:
        if head not in ("a", "an"):
            raise bad(head)
        if rest[-1] not in SHAPES:
            raise bad(rest[-1])
        if head != _article(rest[0]):
            raise bad(head, f"use {_article(rest[0])!r} before {rest[0]!r}, not")
        entry = {"class": rest[-1], "count": 1}
    if color is not None:
        entry["color"] = color
    return entry


def parse_prompt(prompt: str) -> dict:
    """Inverse of the grammar: a GenEval-style prompt -> its metadata record (``SlasError`` if the
    prompt is outside the grammar, naming the offending word)."""
    text = " ".join(prompt.strip().split())
    if not text.startswith(_PREFIX):
        raise SlasError(f"prompt {prompt!r}: must start with {_PREFIX.strip()!r}, e.g. "
                        f"'a photo of a red circle'")
    words = text[len(_PREFIX):].split(" ")
    for rel in RELATIONS:
        r = rel.split(" ")
        for i in range(1, len(words) - len(r) + 1):
            if words[i:i + len(r)] == r:
                a, b = _phrase(words[:i], prompt), _phrase(words[i + len(r):], prompt)
                if "color" in a or "color" in b or a["count"] != 1 or b["count"] != 1:
                    raise SlasError(f"prompt {prompt!r}: position prompts name two single "
                                    f"uncoloured shapes, e.g. 'a photo of a circle left of a "
                                    f"square'")
                return make_metadata("position", [b, {**a, "position": [rel, 0]}])
    if "and" in words:
        i = words.index("and")
        a, b = _phrase(words[:i], prompt), _phrase(words[i + 1:], prompt)
        if ("color" in a) != ("color" in b) or a["count"] != 1 or b["count"] != 1:
            raise SlasError(f"prompt {prompt!r}: 'and' joins two single shapes, both coloured or "
                            f"both not, e.g. 'a photo of a red circle and a blue square'")
        return make_metadata("color_attr" if "color" in a else "two_object", [a, b])
    entry = _phrase(words, prompt)
    if entry["count"] > 1:
        if "color" in entry:
            raise SlasError(f"prompt {prompt!r}: counting prompts take no colour, e.g. "
                            f"'a photo of three circles'")
        return make_metadata("counting", [entry])
    return make_metadata("colors" if "color" in entry else "single_object", [entry])


# --- Prompt sets: RL training (the HPD-v2 analogue) and evaluation (the GenEval analogue) -------
# Compositions that never occur in a training prompt (see docs/world.md for the reasons).
HELD_OUT_COLOR_SHAPES: frozenset[tuple[str, str]] = frozenset({
    ("orange", "circle"), ("blue", "circle"), ("red", "square"), ("green", "square"),
    ("yellow", "triangle"), ("purple", "triangle"), ("red", "cross"), ("yellow", "cross"),
})
HELD_OUT_SHAPE_PAIRS: frozenset[frozenset[str]] = frozenset({
    frozenset({"circle", "triangle"}), frozenset({"square", "cross"}),
})
HELD_OUT_COUNTS: frozenset[tuple[int, str]] = frozenset({
    (2, "triangle"), (3, "circle"), (3, "cross"), (4, "square"),
})
# Evaluation rows per tag; tags with fewer held-out prompts repeat them (each row is one prompt
# slot, like Flow-GRPO's GenEval test_metadata.jsonl, which lists every prompt four times).
EVAL_ROWS: dict[str, int] = {"single_object": 24, "two_object": 24, "counting": 24, "colors": 24,
                             "position": 32, "color_attr": 32}


def enumerate_prompts(tag: str) -> list[dict]:
    """Every record of ``tag`` the grammar can express, in a fixed order (shapes, then colours,
    then relations in their tuple order)."""
    if tag not in TAGS:
        raise SlasError(f"enumerate_prompts: unknown tag {tag!r}; use one of {', '.join(TAGS)}")
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    if tag == "single_object":
        return [make_metadata(tag, [{"class": s, "count": 1}]) for s in SHAPES]
    if tag == "counting":
        return [make_metadata(tag, [{"class": s, "count": n}]) for s in SHAPES for n in (2, 3, 4)]
    if tag == "colors":
        return [make_metadata(tag, [{"class": s, "count": 1, "color": c}])
                for s in SHAPES for c in COLORS]
    if tag == "two_object":
        return [make_metadata(tag, [{"class": a, "count": 1}, {"class": b, "count": 1}])
                for a, b in pairs]
    if tag == "position":
        return [make_metadata(tag, [{"class": b, "count": 1},
                                    {"class": a, "count": 1, "position": [r, 0]}])
                for a, b in pairs for r in RELATIONS]
    return [make_metadata(tag, [{"class": a, "count": 1, "color": ca},
                                {"class": b, "count": 1, "color": cb}])
            for a, b in pairs for ca in COLORS for cb in COLORS if ca != cb]


def is_held_out(metadata: Mapping) -> bool:
    """True if a record is reserved for evaluation: every single-object prompt (only four
    exist), a held-out count-shape pair, colour-shape pair, or pair of shapes named together."""
    inc = metadata["include"]
    if metadata["tag"] == "single_object":
        return True
    if metadata["tag"] == "counting" and (inc[0]["count"], inc[0]["class"]) in HELD_OUT_COUNTS:
        return True
    if any((e.get("color"), e["class"]) in HELD_OUT_COLOR_SHAPES for e in inc):
        return True
    return len(inc) == 2 and frozenset(e["class"] for e in inc) in HELD_OUT_SHAPE_PAIRS


def train_prompts() -> list[dict]:
    """The RL training prompts: every grammar record that is not held out (distinct prompts)."""
    return [m for tag in TAGS for m in enumerate_prompts(tag) if not is_held_out(m)]


def _stride(items: list[dict], k: int) -> list[dict]:
    """``k`` items spread evenly over ``items`` (centred stride; deterministic, no RNG)."""
    return [items[(2 * i + 1) * len(items) // (2 * k)] for i in range(k)]


def eval_prompts() -> list[dict]:
    """The evaluation rows (``EVAL_ROWS`` per tag, tags in ``TAGS`` order): held-out prompts only,
    so no evaluation prompt string occurs in ``train_prompts()``. color_attr takes 16 prompts whose
    shape pair is held out and 16 whose shapes may co-occur in training but a colour-shape pair
    is held out; smaller tags cycle through all their held-out prompts."""
    rows: list[dict] = []
    for tag in TAGS:
        held = [m for m in enumerate_prompts(tag) if is_held_out(m)]
        if tag == "color_attr":
            pair = [m for m in held
                    if frozenset(e["class"] for e in m["include"]) in HELD_OUT_SHAPE_PAIRS]
            colour_only = [m for m in held if m not in pair]
            half = EVAL_ROWS[tag] // 2
            held = _stride(pair, half) + _stride(colour_only, EVAL_ROWS[tag] - half)
        rows += [copy.deepcopy(held[i % len(held)]) for i in range(EVAL_ROWS[tag])]
    return rows
