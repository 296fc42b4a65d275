"""Tests of slas.report on hand-made run directories: exact table numbers, bold best scores,
self-contained HTML, skipped plots and file:line errors."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from slas.errors import SlasError
from slas.report import ReportPaths, comparison_table, load_run, write_report

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _eval_row(step: int, tags: tuple[float, ...], artifact: float, hps: float) -> dict:
    row = {"step": step, "eval/geneval/overall": sum(tags) / 6,
           "eval/fidelity/artifact_fraction": artifact, "eval/reward/hps": hps, "time/eval": 1.0}
    row.update({f"eval/geneval/{t}": v for t, v in zip(TAGS, tags, strict=True)})
    return row


def _train_row(step: int, kl: float | None, rollout: float, update: float) -> dict:
    return {"step": step, "reward/mean": 0.1 * step, "reward/group_std": 0.01,
            "reward/batch_std": 0.05, "policy/approx_kl": kl, "policy/clipfrac": None
            if kl is None else 0.1, "time/rollout": rollout, "time/update": update}


def _make_run(root: Path, name: str, estimator: str | None, rows: list[dict],
              advantages: bool = True, samples: tuple[int, ...] = (0, 1, 2)) -> Path:
    run = root / name
    (run / "samples").mkdir(parents=True)
    if estimator:
        (run / "config.yaml").write_text(f"advantage:\n  estimator: {estimator}\nrun:\n  seed: 0\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if advantages:
        lines = [{"step": s, "advantages": [-1.0, -0.25, 0.25, 1.0 + s]} for s in (1, 2)]
        (run / "advantages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    for step in samples:
        Image.new("RGB", (8, 8), (40 * step, 0, 0)).save(run / "samples" / f"step_{step:06d}.png")
    return run


# run_a final tags sum to 1+0.75+0.5+0.5+0.25+0.375 = 3.375 -> overall 3.375/6 = 0.5625
A_FINAL = (1.0, 0.75, 0.5, 0.5, 0.25, 0.375)
# run_b final tags sum to 0.875+0.5+0.375+0.5+0.125+0.25 = 2.625 -> overall 2.625/6 = 0.4375
B_FINAL = (0.875, 0.5, 0.375, 0.5, 0.125, 0.25)
START = (0.5,) * 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    # Step 2's eval row is a separate line: read back merged with the training row of step 2.
    a = _make_run(root, "run_a", "slas", [
        _eval_row(0, START, 0.25, 0.25), _train_row(1, 1e-5, 2.0, 3.0),
        _train_row(2, 2e-5, 2.5, 3.5), _eval_row(2, A_FINAL, 0.125, 0.3)])
    b = _make_run(root, "run_b", "grpo", [
        _eval_row(0, START, 0.25, 0.25), _train_row(1, None, 1.0, 1.0),
        _train_row(2, None, 1.0, 1.0), _eval_row(2, B_FINAL, 0.0625, 0.5)])
    return a, b


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> ReportPaths:
    return write_report(list(runs), tmp_path_factory.mktemp("report"), title="t")


def _table_row(markdown: str, label: str) -> list[str]:
    line = next(ln for ln in markdown.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_both_files_exist(report):
    assert report.markdown.name == "report.md" and report.markdown.is_file()
    assert report.html.name == "report.html" and report.html.is_file()


def test_table_holds_the_exact_numbers_and_bolds_the_best(report):
    md = report.markdown.read_text()
    header = _table_row(md, "run")
    assert header == ["run", "proxy hps", "GenEval overall", *TAGS, "artifact fraction",
                      "approx KL (last)", "steps", "wall time (s)"]
    # run_a wall time: 1.0 (eval@0) + 2.0 + 3.0 + 2.5 + 3.5 + 1.0 (eval@2) = 13.0 s.
    # GenEval: higher is better (a wins all but colours, a tie: both bold); artifact: lower.
    assert _table_row(md, "run_a (slas)") == [
        "run_a (slas)", "0.3000", "**0.5625**", "**1.0000**", "**0.7500**", "**0.5000**",
        "**0.5000**", "**0.2500**", "**0.3750**", "0.1250", "2e-05", "2", "13.0"]
    # run_b logged approx_kl as null only -> "–"; wall 1 + 1+1 + 1+1 + 1 = 6.0 s.
    assert _table_row(md, "run_b (grpo)") == [
        "run_b (grpo)", "0.5000", "0.4375", "0.8750", "0.5000", "0.3750", "**0.5000**",
        "0.1250", "0.2500", "**0.0625**", "–", "2", "6.0"]


def test_baseline_row_competes_for_bold(runs):
    base = {"eval/geneval/overall": 0.75, "eval/reward/clip": 0.125}
    table = comparison_table([load_run(r) for r in runs], base)
    rows = {row[0][0]: dict(zip(table.headers, row, strict=True)) for row in table.rows}
    assert [row[0][0] for row in table.rows] == ["base", "run_a (slas)", "run_b (grpo)"]
    # base 0.75 > run_a 0.5625 > run_b 0.4375: only the base is bold now
    assert rows["base"]["GenEval overall"] == ("0.7500", True)
    assert rows["run_a (slas)"]["GenEval overall"] == ("0.5625", False)
    assert rows["base"]["proxy clip"] == ("0.1250", False)  # a proxy reward is never bold
    assert rows["base"]["proxy hps"] == rows["base"]["steps"] == ("–", False)
    assert rows["run_a (slas)"]["proxy clip"] == ("–", False)


def test_markdown_links_exist_and_samples_are_first_and_last(report):
    out = report.markdown.parent
    md = report.markdown.read_text()
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert len(links) == 8 + 4 and all((out / unquote(link)).is_file() for link in links)
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "run_a_step_000000.png", "run_a_step_000002.png",
        "run_b_step_000000.png", "run_b_step_000002.png"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        f"{s}.png" for s in ("reward_mean", "eval_proxy_rewards", "geneval_overall",
                             "geneval_tags", "artifact_fraction", "policy", "reward_std",
                             "advantage_hist"))
    assert "How to read this" in md and "reward hacking" in md


def test_html_is_self_contained(report):
    page = report.html.read_text()
    md_images = len(re.findall(r"!\[", report.markdown.read_text()))
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == md_images == 8 + 4  # 8 plots + 2 grids per run
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "<link" not in page
    png = base64.b64decode(sources[-1].removeprefix("data:image/png;base64,"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<b>0.5625</b>" in page and "<td>0.4375</td>" in page


def test_absent_metrics_make_no_plot_and_stale_plots_go(tmp_path):
    (tmp_path / "plots").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "plots" / "geneval_overall.png")  # an old report's
    bare = _make_run(tmp_path / "r", "bare", None, [_train_row(1, 1e-5, 1.0, 1.0)],
                     advantages=False, samples=())
    paths = write_report([bare], tmp_path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "policy.png", "reward_mean.png", "reward_std.png"]
    md = paths.markdown.read_text()
    assert "plots/geneval" not in md and "plots/reward_mean.png" in md
    row = dict(zip(_table_row(md, "run"), _table_row(md, "bare"), strict=True))
    assert row["GenEval overall"] == "–" and "proxy hps" not in row  # never logged


def test_missing_metrics_file_names_it(tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(SlasError, match=re.escape(str(tmp_path / "empty_run" / "metrics.jsonl"))):
        write_report([tmp_path / "empty_run"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the input was checked


@pytest.mark.parametrize("bad, what", [("{not json", "unreadable JSON"),
                                       ('{"loss/policy": 1.0}', "integer \"step\""),
                                       ('{"step": 2, "reward/mean": "high"}', "'reward/mean'")])
def test_unreadable_line_names_file_and_line(tmp_path, bad, what):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0}\n\n' + bad + "\n")
    with pytest.raises(SlasError, match=re.escape("metrics.jsonl:3: ") + ".*" + re.escape(what)):
        load_run(run)


def test_same_named_runs_get_distinct_names(tmp_path):
    rows = [_train_row(1, 1e-5, 1.0, 1.0)]
    one = _make_run(tmp_path / "x", "run", "slas", rows, advantages=False, samples=(0,))
    two = _make_run(tmp_path / "y", "run", "grpo", rows, advantages=False, samples=(0,))
    from slas.report import _unique_names

    assert _unique_names([one, two]) == ["run", "run-2"]
    assert _unique_names([one, two / ".." / ".." / "x" / "run-2", two]) == ["run", "run-2", "run-3"]
    assert load_run(two, name="run-2").label == "run-2 (grpo)"


def test_bad_baseline_value_is_rejected(runs, tmp_path):
    with pytest.raises(SlasError, match=r"baseline\['eval/geneval/overall'\]"):
        write_report(list(runs), tmp_path, baseline={"eval/geneval/overall": "0.5"})


@pytest.mark.slow
def test_html_renders_in_headless_chromium(report):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed; HTML rendering check skipped")
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--dump-dom", report.html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Comparison" in done.stdout and "data:image/png;base64," in done.stdout
