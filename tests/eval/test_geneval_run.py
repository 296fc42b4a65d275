"""Scoring a GenEval folder (resume, scorer check, summary) and `slas eval geneval` end to end."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from PIL import Image

from slas.cli import main
from slas.errors import SlasError
from slas.eval.geneval import Detection, GenEvalThresholds
from slas.eval.geneval_io import read_results, summarize
from slas.eval.geneval_run import RESULTS, image_key, score_folder, write_summary
from slas.world.captions import TAGS, eval_prompts, scene_for
from slas.world.detect import WorldColorClassifier, WorldDetector
from slas.world.render import Scene, render, to_uint8
from tests.conftest import tiny_world_backbone

CAT = {"tag": "single_object", "include": [{"class": "cat", "count": 1}],
       "prompt": "a photo of a cat"}
TWO = {"tag": "counting", "include": [{"class": "cat", "count": 2}],
       "exclude": [{"class": "cat", "count": 3}], "prompt": "a photo of two cats"}
RED = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}],
       "prompt": "a photo of a red cat"}
# per image: (cats, score x 100, red?) -> pixel (0, 0) of a 2x2 PNG
PLAN = {
    CAT["prompt"]: [(1, 90, 0), (0, 0, 0), (0, 0, 0), (1, 20, 0)],  # 1 of 4 (0.2 <= 0.3)
    TWO["prompt"]: [(3, 95, 0), (2, 80, 0)],  # 3 cats hit exclude; 0.8 <= counting 0.9
    RED["prompt"]: [(1, 50, 1), (1, 50, 1)],  # 2 of 2
}


class PixelDetector:
    """Reads the plan back from pixel (0, 0): that many cats at that score; counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        n, score = int(image[0, 0, 0]), image[0, 0, 1] / 100
        return {"cat": [Detection((4.0 * i, 0.0, 4.0 * i + 2, 2.0), score, None)
                        for i in range(n)]}


def pixel_colors(image, detections, class_name):
    return ["red" if image[0, 0, 2] else "blue" for _ in detections]


def write_folder(root, records, plan):
    for i, meta in enumerate(records):
        folder = root / f"{i:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        for j, pixel in enumerate(plan[meta["prompt"]]):
            Image.new("RGB", (2, 2), pixel).save(folder / "samples" / f"{j:05d}.png")
    (root / "00000" / "samples" / "grid.png").write_bytes(b"ignored")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "gen"
    write_folder(root, [CAT, TWO, RED], PLAN)
    return root


def test_rows_and_summary_by_hand(folder):
    det = PixelDetector()
    res = score_folder(folder, det, pixel_colors, scorer={"detector": "pixel"})
    assert (res.scored, res.skipped, det.calls) == (8, 0, 8)
    assert [r.correct for r in res.rows] == [True, False, False, False, False, False, True, True]
    assert res.rows[1].reason == "expected cat>=1, found 0"
    assert res.rows[4].reason == "expected cat<3, found 3"
    assert res.rows[5].reason == "expected cat>=2, found 0"  # 0.8 is below the 0.9 cut
    assert image_key(res.rows[5].filename) == "00001/00001.png"
    s = summarize(res.rows)
    # per task 1/4, 0/2, 2/2; Overall = (0.25 + 0 + 1) / 3 = 0.41667 (images: 3/8 = 37.5%)
    assert s.per_tag == {"single_object": 0.25, "counting": 0.0, "colors": 1.0}
    assert s.overall == pytest.approx(1.25 / 3)
    assert (s.pct_correct_images, s.pct_correct_prompts) == (37.5, pytest.approx(200 / 3))
    assert read_results(folder / RESULTS) == res.rows
    js, md = write_summary(folder, s, {"detector": "pixel"})
    saved = json.loads(js.read_text())
    assert saved["overall"] == pytest.approx(1.25 / 3) and saved["scorer"]["detector"] == "pixel"
    assert "| **overall** | **0.4167** |" in md.read_text()


def test_resume_skips_scored_images_and_redoes_a_torn_line(folder):
    first = score_folder(folder, PixelDetector(), pixel_colors).rows
    lines = (folder / RESULTS).read_text().splitlines(keepends=True)
    # keep rows 0, 1, 2, 6 (out of order) and half of row 3, as a crash would leave it
    (folder / RESULTS).write_text("".join(lines[i] for i in (6, 0, 1, 2)) + lines[3][:40])
    det = PixelDetector()
    res = score_folder(folder, det, pixel_colors)
    assert (res.scored, res.skipped, det.calls) == (4, 4, 4)
    assert res.rows == first and read_results(folder / RESULTS) == first  # folder order again
    moved = folder.parent / "moved"
    shutil.move(folder, moved)  # rows are matched by <prompt folder>/<image>, not the root
    det = PixelDetector()
    assert score_folder(moved, det, pixel_colors).skipped == 8 and det.calls == 0


def test_limit_and_scorer_mismatch(folder):
    res = score_folder(folder, PixelDetector(), pixel_colors, max_prompts=1,
                       scorer={"detector": "pixel"})
    assert len(res.rows) == 4 and {r.tag for r in res.rows} == {"single_object"}
    with pytest.raises(SlasError, match="another scorer \\(differ: \\['detector'\\]\\)"):
        score_folder(folder, PixelDetector(), pixel_colors, scorer={"detector": "other"})
    with pytest.raises(SlasError, match="differ: \\['thresholds'\\]"):
        score_folder(folder, PixelDetector(), pixel_colors, scorer={"detector": "pixel"},
                     thresholds=GenEvalThresholds(score=0.5))
    with pytest.raises(SlasError, match="no images among the first 0 prompts"):
        score_folder(folder, PixelDetector(), pixel_colors, max_prompts=0)


def _one_per_tag():
    rows = eval_prompts()
    return [next(r for r in rows if r["tag"] == tag) for tag in TAGS]


def test_clean_world_renders_score_one_with_the_world_backend(tmp_path):
    records = _one_per_tag()
    scenes = [scene_for(m, random.Random(k)) for k in range(2) for m in records]
    images = to_uint8(render(scenes, seed=3))
    for i, meta in enumerate(records):
        (tmp_path / f"{i:05d}" / "samples").mkdir(parents=True)
        (tmp_path / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(meta))
        for k in range(2):
            path = tmp_path / f"{i:05d}" / "samples" / f"{k:04d}.png"
            Image.fromarray(images[k * len(records) + i]).save(path)
    blank = to_uint8(render([Scene(())], seed=3))[0]  # an empty canvas fails every prompt
    Image.fromarray(blank).save(tmp_path / "00000" / "samples" / "0002.png")
    res = score_folder(tmp_path, WorldDetector(), WorldColorClassifier())
    s = summarize(res.rows)
    # single_object: 2 of 3 images; the 5 other tags: 2 of 2 -> (2/3 + 5) / 6 = 0.94444
    assert s.per_tag == {t: (2 / 3 if t == "single_object" else 1.0) for t in TAGS}
    assert s.overall == pytest.approx((2 / 3 + 5) / 6)
    assert res.rows[2].reason == "expected circle>=1, found 0"


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def world_run(tmp_path):
    policy = tiny_world_backbone().save_pretrained(tmp_path / "policy")
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(m) + "\n" for m in _one_per_tag()))
    return ["eval", "geneval", "--backbone", "world", "--policy", str(policy),
            "--metadata", str(meta), "--out", str(tmp_path / "out"), "--samples", "2",
            "--steps", "2", "--detector", "world"], tmp_path / "out"


def test_cli_generates_scores_and_resumes(world_run, capsys):
    argv, out = world_run
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "images: 12 written, 0 already there" in text
    assert "images: 12 scored, 0 already scored" in text
    assert all(f"| {tag} |" in text for tag in TAGS) and "| **overall** |" in text
    rows = read_results(out / RESULTS)
    assert len(rows) == 12 and sorted({r.tag for r in rows}) == sorted(TAGS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"] == pytest.approx(summarize(rows).overall)
    assert summary["n_images"] == 12 and summary["scorer"]["detector"] == "world"
    assert json.loads((out / "manifest.json").read_text())["num_steps"] == 2
    assert main(argv) == 0  # nothing left to do
    text = capsys.readouterr().out
    assert "0 written, 12 already there" in text and "0 scored, 12 already scored" in text
    assert main(["eval", "geneval", "--score-only", "--limit", "2", "--detector", "world",
                 "--out", str(out)]) == 0
    assert "12 already scored" not in (text := capsys.readouterr().out)
    assert "4 already scored" in text and "| counting |" not in text


def test_cli_errors_name_the_missing_flag(tmp_path, capsys):
    assert main(["eval", "geneval", "--out", str(tmp_path)]) == 2
    assert "--metadata is needed" in capsys.readouterr().err
    write_folder(tmp_path, [CAT], PLAN)
    assert main(["eval", "geneval", "--score-only", "--out", str(tmp_path)]) == 2
    assert "--detector-config is needed with --detector mmdet2" in capsys.readouterr().err
    argv = ["eval", "geneval", "--score-only", "--out", str(tmp_path), "--detector",
            "transformers", "--detector-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "--clip-checkpoint is needed with --detector transformers" in capsys.readouterr().err
