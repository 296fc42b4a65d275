"""GenEval rule engine on synthetic detections; every number is worked out in the comments."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slas.errors import SlasError
from slas.eval.geneval import (
    Detection,
    GenEvalThresholds,
    box_iou,
    evaluate_image,
    filter_detections,
    relative_position,
    validate_metadata,
)

TH = GenEvalThresholds()


def det(x1: float, y1: float, x2: float, y2: float, score: float = 0.95) -> Detection:
    return Detection((x1, y1, x2, y2), score, None)


def scores(dets: list[Detection]) -> list[float]:
    return [d.score for d in dets]


def one(cls: str, count: int = 1, **extra) -> dict:
    return {"class": cls, "count": count, **extra}


class StubColors:
    """Colour by score: 0.95 -> red, 0.94 -> blue, else green; records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[float]]] = []

    def __call__(self, image, detections, class_name):
        self.calls.append((class_name, scores(list(detections))))
        table = {0.95: "red", 0.94: "blue"}
        return [table.get(d.score, "green") for d in detections]


# ---------------------------------------------------------------- per-class filtering


def test_score_threshold_is_strict():
    # 0.3 is not > 0.3 -> dropped; 0.31 > 0.3 -> kept; the all-dropped class disappears.
    kept = filter_detections(
        {"dog": [det(0, 0, 1, 1, 0.3), det(0, 0, 1, 1, 0.31)], "cat": [det(0, 0, 1, 1, 0.3)]},
        "single_object", TH,
    )
    assert list(kept) == ["dog"]
    assert scores(kept["dog"]) == [0.31]


def test_counting_uses_point_nine():
    dets = {"clock": [det(0, 0, 1, 1, s) for s in (0.5, 0.9, 0.91)]}
    # counting: only 0.91 > 0.9; any other tag: all three > 0.3.
    assert scores(filter_detections(dets, "counting", TH)["clock"]) == [0.91]
    assert scores(filter_detections(dets, "colors", TH)["clock"]) == [0.91, 0.9, 0.5]


def test_unsorted_input_is_sorted_descending_and_ties_keep_order():
    a, b = det(0, 0, 1, 1, 0.7), det(5, 5, 6, 6, 0.7)
    kept = filter_detections({"dog": [det(0, 0, 1, 1, 0.5), a, det(0, 0, 1, 1, 0.9), b]}, "x", TH)
    assert scores(kept["dog"]) == [0.9, 0.7, 0.7, 0.5]
    assert kept["dog"][1] is a and kept["dog"][2] is b


def test_top_16_cut_after_sorting():
    # 20 scores 0.40 .. 0.59 given in ascending order; the 16 best are 0.59 .. 0.44.
    dets = {"cup": [det(i, 0, i + 1, 1, 0.40 + i / 100) for i in range(20)]}
    kept = filter_detections(dets, "single_object", TH)["cup"]
    assert len(kept) == 16
    assert kept[0].score == pytest.approx(0.59) and kept[-1].score == pytest.approx(0.44)
    small = filter_detections(dets, "single_object", GenEvalThresholds(max_per_class=3))["cup"]
    assert [round(s, 2) for s in scores(small)] == [0.59, 0.58, 0.57]


def test_box_iou_plus_one_formula():
    # (0,0,9,9) and (5,0,14,9): areas (9-0+1)*(9-0+1) = 100 each; intersection (5,0,9,9) =
    # 5*10 = 50; union 150 -> 1/3. (Without the +1: 36 / (81+81-36) = 0.2857.)
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    # Disjoint: intersection width 10-20+1 < 0 -> 0.
    assert box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0


def test_nms_option_uses_plus_one_iou():
    dets = {"dog": [det(0, 0, 9, 9, 0.9), det(5, 0, 14, 9, 0.8), det(40, 40, 49, 49, 0.7)]}
    # Off by default: all three kept.
    assert scores(filter_detections(dets, "two_object", TH)["dog"]) == [0.9, 0.8, 0.7]
    # IoU 1/3 >= 0.3 -> the 0.8 box is suppressed (it would survive with the plain formula).
    on = filter_detections(dets, "two_object", GenEvalThresholds(max_overlap=0.3))
    assert scores(on["dog"]) == [0.9, 0.7]
    # 1/3 < 0.34 -> kept.
    loose = filter_detections(dets, "two_object", GenEvalThresholds(max_overlap=0.34))
    assert scores(loose["dog"]) == [0.9, 0.8, 0.7]
    # (0,0,9,9) vs (0,0,9,4): intersection = smaller area 10*5 = 50, union 100 -> IoU 0.5
    # exactly; upstream keeps a box only if IoU < max_overlap, so 0.5 is suppressed at 0.5.
    half = {"dog": [det(0, 0, 9, 9, 0.9), det(0, 0, 9, 4, 0.8)]}
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 4)) == 0.5
    assert scores(filter_detections(half, "x", GenEvalThresholds(max_overlap=0.5))["dog"]) == [0.9]


@pytest.mark.parametrize(
    "kwargs", [{"max_overlap": 1.0}, {"max_overlap": 0.0}, {"max_per_class": 0},
               {"position_threshold": -0.1}, {"relation_cut": 1.0}],
)
def test_threshold_validation(kwargs):
    with pytest.raises(SlasError, match="GenEvalThresholds"):
        GenEvalThresholds(**kwargs)


# ---------------------------------------------------------------- relative position

B = det(0, 0, 10, 10)  # centre (5, 5), size (10, 10)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        # offset (30, 0); shrink 0.1*(10+10) = 2 -> (28, 0); /30 -> dx = 0.933 > 0.5.
        ((30, 0, 40, 10), {"right of"}),
        ((-30, 0, -20, 10), {"left of"}),
        # y grows downwards: a box with smaller y is above.
        ((0, -30, 10, -20), {"above"}),
        ((0, 30, 10, 40), {"below"}),
        # offset (30, 30) -> shrunk (28, 28) / 42.43 = (0.66, 0.66): two relations at once.
        ((30, 30, 40, 40), {"right of", "below"}),
        ((-30, -30, -20, -20), {"left of", "above"}),
        # offset (30, 10) -> shrunk (28, 8) / 31.62 = (0.885, 0.253): only "right of".
        ((30, 10, 40, 20), {"right of"}),
    ],
)
def test_four_relations_and_combinations(box, expected):
    assert relative_position(det(*box), B, TH) == expected


def test_margin_shrinks_offset_to_zero():
    # offset (2, 0), shrink 0.1*(10+10) = 2 -> (0, 0): both below 1e-3 -> no relation at all.
    assert relative_position(det(2, 0, 12, 10), B, TH) == set()
    # offset (2, 1.5): x shrinks to 0, y: 1.5 - 2 < 0 -> 0; still nothing.
    assert relative_position(det(2, 1.5, 12, 11.5), B, TH) == set()
    # Without the margin the same pair is clearly "right of" (dx = 2/2 = 1).
    assert relative_position(det(2, 0, 12, 10), B, GenEvalThresholds(position_threshold=0)) == {
        "right of"
    }


def test_relation_cut_is_strict_at_half():
    # offset (4, 0): shrunk 4 - 2 = 2, /4 -> dx = 0.5 exactly, not > 0.5 -> no relation.
    assert relative_position(det(4, 0, 14, 10), B, TH) == set()
    assert relative_position(det(-4, 0, 6, 10), B, TH) == set()  # dx = -0.5 exactly
    # offset (5, 0): (5 - 2) / 5 = 0.6 -> right of; mirrored -> left of.
    assert relative_position(det(5, 0, 15, 10), B, TH) == {"right of"}
    assert relative_position(det(-5, 0, 5, 10), B, TH) == {"left of"}


_coord = st.integers(-50, 50)
_size = st.integers(0, 20)


@settings(max_examples=60, deadline=None)
@given(_coord, _coord, _size, _size, _coord, _coord, _size, _size, _coord, _coord)
def test_relations_mirror_and_translate(ax, ay, aw, ah, bx, by, bw, bh, tx, ty):
    a, b = det(ax, ay, ax + aw, ay + ah), det(bx, by, bx + bw, by + bh)
    swap = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    forward = relative_position(a, b, TH)
    assert relative_position(b, a, TH) == {swap[r] for r in forward}
    moved = det(ax + tx, ay + ty, ax + aw + tx, ay + ah + ty)
    moved_b = det(bx + tx, by + ty, bx + bw + tx, by + bh + ty)
    assert relative_position(moved, moved_b, TH) == forward


# ---------------------------------------------------------------- include / exclude


def test_include_count_pass_and_fail_with_any_vocabulary():
    meta = {"tag": "two_object", "include": [one("circle"), one("square")]}
    ok = evaluate_image(None, meta, {"circle": [det(0, 0, 1, 1)], "square": [det(0, 0, 1, 1)]},
                        None)
    assert ok == (True, "", ok.kept) and set(ok.kept) == {"circle", "square"}
    bad = evaluate_image(None, meta, {"circle": [det(0, 0, 1, 1)]}, None)
    assert bad.correct is False and bad.reason == "expected square>=1, found 0"
    two = {"tag": "counting", "include": [one("circle", 2)]}
    res = evaluate_image(None, two, {"circle": [det(0, 0, 1, 1, 0.95), det(0, 0, 1, 1, 0.5)]},
                         None)
    # counting threshold drops 0.5 -> one left.
    assert res.reason == "expected circle>=2, found 1"


def test_colour_count_pass_and_fail():
    meta = {"tag": "colors", "include": [one("car", 2, color="red")]}
    clf = StubColors()
    # Three cars (0.95 red, 0.94 blue, 0.93 green): only the top-2 are classified.
    res = evaluate_image(
        None, meta, {"car": [det(0, 0, 1, 1, s) for s in (0.93, 0.95, 0.94)]}, clf
    )
    assert clf.calls == [("car", [0.95, 0.94])]
    assert res.correct is False
    assert res.reason == "expected red car>=2, found 1 red; and 1 red, 1 blue"
    meta1 = {"tag": "colors", "include": [one("car", 1, color="red")]}
    assert evaluate_image(None, meta1, {"car": [det(0, 0, 1, 1, 0.95)]}, clf).correct is True


def test_colour_not_classified_when_count_already_failed():
    clf = StubColors()
    meta = {"tag": "colors", "include": [one("car", 2, color="red")]}
    res = evaluate_image(None, meta, {"car": [det(0, 0, 1, 1)]}, clf)
    assert clf.calls == [] and res.reason == "expected car>=2, found 1"


def test_colour_without_classifier_and_bad_classifier_raise():
    meta = {"tag": "colors", "include": [one("car", color="red")]}
    with pytest.raises(SlasError, match="color_classifier"):
        evaluate_image(None, meta, {"car": [det(0, 0, 1, 1)]}, None)
    with pytest.raises(SlasError, match="one colour per detection"):
        evaluate_image(None, meta, {"car": [det(0, 0, 1, 1)]}, lambda im, d, c: [])


POS = {"tag": "position",
       "include": [one("teddy bear"), one("dog", position=["right of", 0])]}


def test_position_pass_fail_and_reason():
    bear = det(0, 0, 10, 10)
    right = evaluate_image(None, POS, {"teddy bear": [bear], "dog": [det(30, 0, 40, 10)]}, None)
    assert right.correct is True
    left = evaluate_image(None, POS, {"teddy bear": [bear], "dog": [det(-30, -30, -20, -20)]},
                          None)
    assert left.reason == "expected dog right of target, found left of and above target"
    # dx exactly 0.5 -> empty relation set; upstream's message then has two spaces.
    none = evaluate_image(None, POS, {"teddy bear": [bear], "dog": [det(4, 0, 14, 10)]}, None)
    assert none.reason == "expected dog right of target, found  target"


def test_position_checks_every_pair_of_the_target_group():
    meta = {"tag": "position",
            "include": [one("cup", 2), one("dog", position=["right of", 0])]}
    # Dog at x-centre 35: right of the cup at 5 (dx 0.93) but not of the cup at 40.
    cups = [det(0, 0, 10, 10, 0.9), det(35, 0, 45, 10, 0.8)]
    res = evaluate_image(None, meta, {"cup": cups, "dog": [det(30, 0, 40, 10)]}, None)
    assert res.correct is False and res.reason.startswith("expected dog right of target")


def test_position_against_failed_group():
    res = evaluate_image(None, POS, {"dog": [det(30, 0, 40, 10)]}, None)
    assert res.reason == "expected teddy bear>=1, found 0\nno target for dog to be right of"
    # A group that failed on colour also counts as failed.
    meta = {"tag": "color_attr",
            "include": [one("cup", color="blue"), one("dog", position=["below", 0])]}
    res = evaluate_image(None, meta, {"cup": [det(0, 0, 10, 10, 0.95)],
                                      "dog": [det(0, 30, 10, 40)]}, StubColors())
    assert res.reason.splitlines() == [
        "expected blue cup>=1, found 0 blue; and 1 red", "no target for dog to be below"]


def test_position_skipped_after_colour_failure():
    meta = {"tag": "color_attr",
            "include": [one("cup"), one("dog", color="blue", position=["left of", 0])]}
    # Dog is red (0.95) and right of the cup: only the colour failure is reported.
    res = evaluate_image(None, meta, {"cup": [det(0, 0, 10, 10)],
                                      "dog": [det(30, 0, 40, 10, 0.95)]}, StubColors())
    assert res.reason == "expected blue dog>=1, found 0 blue; and 1 red"


@pytest.mark.parametrize(("n_found", "correct"), [(2, True), (3, False)])
def test_exclude_means_exactly_n(n_found, correct):
    meta = {"tag": "counting", "include": [one("clock", 2)], "exclude": [one("clock", 3)]}
    dets = {"clock": [det(i, 0, i + 1, 1, 0.95) for i in range(n_found)]
            + [det(9, 9, 10, 10, 0.85)]}  # 0.85 is under the counting threshold 0.9
    res = evaluate_image(None, meta, dets, None)
    assert res.correct is correct
    assert res.reason == ("" if correct else "expected clock<3, found 3")


def test_metadata_validation():
    with pytest.raises(SlasError, match="'tag' is missing"):
        evaluate_image(None, {"include": [one("dog")]}, {}, None)
    with pytest.raises(SlasError, match="'include'"):
        evaluate_image(None, {"tag": "single_object"}, {}, None)
    with pytest.raises(SlasError, match="earlier entry"):
        validate_metadata({"tag": "position", "include": [one("a", position=["above", 0])]})
    with pytest.raises(SlasError, match="'count'"):
        validate_metadata({"tag": "counting", "include": [one("a", 0)]})
    with pytest.raises(SlasError, match="'color' is 'teal'"):
        validate_metadata({"tag": "colors", "include": [one("a", color="teal")]}, colors=["red"])
