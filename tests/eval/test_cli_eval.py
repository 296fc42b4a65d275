"""`slas eval unigenbench` end to end against a local judge on 127.0.0.1."""

import ast
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from slas.cli import main


class Judge(BaseHTTPRequestHandler):
    """Answers every checkpoint with 1 except those of the Style dimension (0)."""

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = next(c["text"] for c in body["messages"][0]["content"] if c["type"] == "text")
        points = ast.literal_eval(re.search(r"<checkpoint>(.*?)</checkpoint>", text, re.S).group(1))
        scores = [0 if p == "Style" else 1 for p in points]
        answer = f"<analysis>{['fine'] * len(points)}</analysis><score>{scores}</score>"
        out = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_unigenbench_score_only_prints_the_table(shared_data, judge_url, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        for j in range(2):
            Image.new("RGB", (8, 8), (40 * index, 20 * j, 0)).save(images / f"{index}_{j}.png")
    argv = ["eval", "unigenbench", "--score-only", "--limit", "3", "--samples", "2",
            "--prompts", str(shared_data / "unigenbench" / "test_prompts_en.csv"),
            "--judge-prompts", str(shared_data / "unigenbench" / "judge_prompts.json"),
            "--judge-url", judge_url, "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6 judged, 0 already done, 0 dropped" in out
    header = next(line for line in out.splitlines() if "Style" in line and "Overall" in line)
    assert header.count("|") >= 12  # 10 primary columns + Overall
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_judged"] == 6
    # rerun: everything is already judged, nothing is asked again
    assert main(argv) == 0
    assert "0 judged, 6 already done" in capsys.readouterr().out


def test_eval_summary_side_by_side(tmp_path, capsys):
    tags = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    for name, score in (("base", 0.42), ("slas", 0.53)):
        (tmp_path / name).mkdir()
        per_tag = dict.fromkeys(tags, score)
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"per_tag": per_tag, "overall": score, "n_images": 4}))
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "summary.json").write_text(json.dumps(
        {"primary_dimensions": {"Style": {"correct": 3, "total": 4, "accuracy": 0.75}},
         "overall": 0.6064}))
    argv = ["eval", "summary", *(str(tmp_path / n) for n in ("base", "slas", "flux"))]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| base | 0.42 | 0.42 | 0.42 | 0.42 | 0.42 | 0.42 | 0.42 |" in out
    assert "| slas | 0.53 |" in out and "Color Attri." in out
    flux = next(line for line in out.splitlines() if line.startswith("| flux"))
    assert "| 75.00 |" in flux and flux.endswith("| 60.64 |") and flux.count("–") == 9
    assert main(["eval", "summary", str(tmp_path / "missing")]) == 2
    assert "cannot read an evaluation summary" in capsys.readouterr().err
