"""Tests for slas.world.captions: grammar, metadata, scenes that satisfy it, prompt split."""

import random
from collections import Counter

import pytest

from slas.errors import SlasError
from slas.world.captions import (
    EVAL_ROWS,
    HELD_OUT_COLOR_SHAPES,
    HELD_OUT_COUNTS,
    HELD_OUT_SHAPE_PAIRS,
    TAGS,
    enumerate_prompts,
    eval_prompts,
    is_held_out,
    parse_prompt,
    relation_components,
    sample_pairs,
    sample_spec,
    scene_for,
    train_prompts,
    validate_metadata,
)
from slas.world.render import COLORS, SHAPES


def test_grammar_examples_match_geneval_format():
    assert parse_prompt("a photo of an orange circle") == {
        "tag": "colors", "include": [{"class": "circle", "count": 1, "color": "orange"}],
        "prompt": "a photo of an orange circle"}
    assert parse_prompt("a photo of three triangles") == {
        "tag": "counting", "include": [{"class": "triangle", "count": 3}],
        "exclude": [{"class": "triangle", "count": 4}], "prompt": "a photo of three triangles"}
    # Position: include[0] is the reference (square), include[1] the positioned circle.
    assert parse_prompt("a photo of a circle left of a square")["include"] == [
        {"class": "square", "count": 1},
        {"class": "circle", "count": 1, "position": ["left of", 0]}]
    assert parse_prompt("a photo of a red circle and a blue square")["include"] == [
        {"class": "circle", "count": 1, "color": "red"},
        {"class": "square", "count": 1, "color": "blue"}]
    assert parse_prompt("a photo of a cross and a square")["tag"] == "two_object"
    assert parse_prompt("  a photo of a   cross ")["prompt"] == "a photo of a cross"


def test_every_prompt_round_trips():
    sizes = {t: len(enumerate_prompts(t)) for t in TAGS}
    # 4 shapes, 6 colours, 12 ordered shape pairs, 4 relations, 6 * 5 ordered colour pairs.
    assert sizes == {"single_object": 4, "two_object": 12, "counting": 12, "colors": 24,
                     "position": 48, "color_attr": 360}
    for tag in TAGS:
        for meta in enumerate_prompts(tag):
            assert parse_prompt(meta["prompt"]) == meta


def test_articles():
    assert parse_prompt("a photo of an orange square and a red circle")["tag"] == "color_attr"
    with pytest.raises(SlasError, match="'an' before 'orange'"):
        parse_prompt("a photo of a orange circle")
    with pytest.raises(SlasError, match="'a' before 'circle'"):
        parse_prompt("a photo of an circle")


@pytest.mark.parametrize(
    ("prompt", "word"),
    [("a photo of a pink circle", "pink"), ("a photo of a red hexagon", "hexagon"),
     ("a photo of five circles", "five"), ("a photo of two circle", "circle")],
)
def test_unknown_words_are_named(prompt, word):
    with pytest.raises(SlasError) as err:
        parse_prompt(prompt)
    msg = str(err.value)
    assert repr(word) in msg and "red, orange, yellow, green, blue, purple" in msg
    assert "circle, square, triangle, cross" in msg


def test_grammar_violations():
    for bad in ("a picture of a circle", "a photo of a circle and a circle",
                "a photo of a red circle and a square", "a photo of a red circle above a square",
                "a photo of three red circles"):
        with pytest.raises(SlasError):
            parse_prompt(bad)


def test_sample_spec_valid_for_every_tag():
    rng = random.Random(0)
    for tag in TAGS:
        for _ in range(50):
            meta = sample_spec(tag, rng)
            validate_metadata(meta)
            assert meta["tag"] == tag and parse_prompt(meta["prompt"]) == meta
    with pytest.raises(SlasError, match="unknown tag"):
        sample_spec("spatial", rng)


def test_relation_components_hand_case():
    # a = [0,10]x[0,10], b = [20,30]x[0,10]: offset (-20, 0), shrink 0.1 * (10 + 10) = 2 ->
    # (-18, 0) / 20 = (-0.9, 0): "left of" only.
    assert relation_components((0, 0, 10, 10), (20, 0, 30, 10)) == pytest.approx((-0.9, 0.0))
    # offset (3, 4), norm 5, shrink 2 per axis -> (1, 2) / 5 = (0.2, 0.4): no relation.
    assert relation_components((3, 4, 13, 14), (0, 0, 10, 10)) == pytest.approx((0.2, 0.4))


def _boxes_ok(scene, gap=2.0, margin=1.0):
    objs = scene.objects
    for o in objs:
        x1, y1, x2, y2 = o.box
        assert x1 >= margin - 1e-9 and y1 >= margin - 1e-9 and x2 <= 32 - margin + 1e-9
        assert y2 <= 32 - margin + 1e-9
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            reach = (a.size + b.size) / 2 + gap
            assert abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def test_scene_for_satisfies_metadata():
    rng = random.Random(1)
    for tag in TAGS:
        for meta in enumerate_prompts(tag)[:24]:
            scene = scene_for(meta, rng)
            _boxes_ok(scene)
            want = Counter()
            for e in meta["include"]:
                want[e["class"]] += e["count"]
            assert Counter(o.shape for o in scene.objects) == want  # nothing extra
            for e in meta["include"]:
                if "color" in e:
                    assert [o.color for o in scene.objects if o.shape == e["class"]] == [e["color"]]
            if tag == "position":
                ref, pos = scene.objects
                dx, dy = relation_components(pos.box, ref.box)
                rel = meta["include"][1]["position"][0]
                main, other = (dx, dy) if rel in ("left of", "right of") else (dy, dx)
                sign = -1 if rel in ("left of", "above") else 1
                assert sign * main >= 0.7 and abs(other) <= 0.3  # unambiguous: margin 0.2


def test_scene_for_is_deterministic_and_rejects_bad_records():
    meta = parse_prompt("a photo of four crosses")
    assert scene_for(meta, random.Random(5)) == scene_for(meta, random.Random(5))
    with pytest.raises(SlasError, match="'dog'"):
        scene_for({"tag": "single_object", "include": [{"class": "dog", "count": 1}]},
                  random.Random(0))
    with pytest.raises(SlasError, match="no layout"):
        scene_for(meta, random.Random(0), size_range=(14.0, 14.0), max_tries=50)


def test_sample_pairs_deterministic_and_covers_tags():
    s1, m1 = sample_pairs(300, seed=7)
    s2, m2 = sample_pairs(300, seed=7)
    assert s1 == s2 and m1 == m2
    assert set(Counter(m["tag"] for m in m1)) == set(TAGS)
    only, metas = sample_pairs(20, seed=0, tags=["counting"])
    assert {m["tag"] for m in metas} == {"counting"} and len(only) == 20
    with pytest.raises(SlasError, match="spatial"):
        sample_pairs(2, seed=0, tags=["spatial"])


def test_train_and_eval_sets():
    train, ev = train_prompts(), eval_prompts()
    # Train: 12-4 two_object, 12-4 counting, 24-8 colors, 48-16 position, 110 color_attr
    # (per ordered non-held-out shape pair 4 x 4 allowed colours minus shared ones) = 174.
    assert len(train) == 174 and len({m["prompt"] for m in train}) == 174
    assert Counter(m["tag"] for m in ev) == EVAL_ROWS and len(ev) == 160
    assert len({m["prompt"] for m in ev}) == 4 + 4 + 4 + 8 + 16 + 32
    assert not {m["prompt"] for m in train} & {m["prompt"] for m in ev}
    assert all(is_held_out(m) for m in ev) and not any(is_held_out(m) for m in train)
    assert train == train_prompts() and ev == eval_prompts()  # deterministic
    for m in train:
        inc = m["include"]
        assert not any((e.get("color"), e["class"]) in HELD_OUT_COLOR_SHAPES for e in inc)
        assert frozenset(e["class"] for e in inc) not in HELD_OUT_SHAPE_PAIRS
        assert (inc[0]["count"], inc[0]["class"]) not in HELD_OUT_COUNTS
    # Every held-out composition is evaluated somewhere.
    seen_cs = {(e.get("color"), e["class"]) for m in ev for e in m["include"]}
    assert HELD_OUT_COLOR_SHAPES <= seen_cs
    assert {(m["include"][0]["count"], m["include"][0]["class"]) for m in ev
            if m["tag"] == "counting"} == HELD_OUT_COUNTS
    assert all(set(COLORS) >= {c for c, _ in HELD_OUT_COLOR_SHAPES} for _ in SHAPES)
    ev[0]["include"][0]["class"] = "mutated"  # rows are independent copies
    assert ev[24 // 6]["include"][0]["class"] != "mutated"
