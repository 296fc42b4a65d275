"""Judge client against a local OpenAI-compatible server: answers, retries, timeouts, a dead
server, resume from the progress file, concurrency limit."""

from __future__ import annotations

import base64
import csv
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from slas.errors import SlasError
from slas.eval.judge import (
    JudgeSettings,
    JudgeTask,
    OpenAIJudge,
    build_messages,
    encode_image,
    load_progress,
    make_tasks,
    read_results,
    run_judgements,
)
from slas.eval.unigenbench import UniGenBenchPrompts, UniGenBenchRecord
from tests.eval.test_unigenbench import MINI

GOOD = "<analysis>['ok', 'no']</analysis>\n<score>[1, 0]</score>"
BAD = "<analysis>['ok']</analysis><score>[1]</score>"  # one entry for two testpoints


class FakeServer:
    """``/v1/chat/completions`` on 127.0.0.1; ``reply(n)`` -> (status, answer, delay_s) for the
    n-th request (1-based). Records request bodies and the peak number in flight."""

    def __init__(self, reply: Callable[[int], tuple[int, str, float]]):
        self.reply, self.bodies, self.headers = reply, [], []
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    n = len(server.bodies)
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                status, answer, delay = server.reply(n)
                time.sleep(delay)
                with server.lock:
                    server.in_flight -= 1
                out = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(reply):
        servers.append(FakeServer(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _tasks(tmp_path: Path, n: int) -> list[JudgeTask]:
    out = []
    for i in range(n):
        path = tmp_path / f"{i}_0.png"
        Image.new("RGB", (4, 4), (10 * i, 0, 0)).save(path)
        out.append(JudgeTask(str(path), i, 0, f"judge prompt {i}", ("Style", "Attribute - Color")))
    return out


def _judge(url: str, **kw) -> OpenAIJudge:
    kw = {"backoff_s": 0.0, "timeout_s": 5.0, "max_retries": 2, **kw}
    return OpenAIJudge(JudgeSettings(url, "QwenVL", **kw))


def test_image_encoding_and_message_layout_per_backend(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    gem = encode_image(path, "gemini")
    assert gem == "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    vll = encode_image(path, "vllm")
    assert vll.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(vll.split(",", 1)[1])[:3] == b"\xff\xd8\xff"  # JPEG magic
    text_first = build_messages("T", "U", "gemini")[0]["content"]
    assert [p["type"] for p in text_first] == ["text", "image_url"]
    image_first = build_messages("T", "U", "vllm")[0]["content"]
    assert [p["type"] for p in image_first] == ["image_url", "text"]
    assert image_first[0]["image_url"]["url"] == "U" and image_first[1]["text"] == "T"


def test_normal_answers_are_recorded(serve, tmp_path):
    srv = serve(lambda n: (200, GOOD, 0.0))
    tasks = _tasks(tmp_path, 3)
    judge = _judge(srv.url, backend="vllm", api_key="k")
    stats = run_judgements(tasks, judge, tmp_path / "p.jsonl", judge_name="QwenVL")
    assert stats == (3, 0, 3, 0) and srv.requests == 3
    body = srv.bodies[0]
    assert body["model"] == "QwenVL" and body["max_tokens"] == 4096
    assert body["do_sample"] is False  # the official offline call's greedy flag
    assert body["messages"][0]["content"][1]["text"].startswith("judge prompt")
    assert srv.headers[0]["Authorization"] == "Bearer k"
    rows = load_progress(tmp_path / "p.jsonl")
    assert rows[tasks[1].key]["scores"] == [1, 0] and rows[tasks[1].key]["judge"] == "QwenVL"
    assert rows[tasks[1].key]["attempts"] == 1
    assert [j.scores for j in read_results(tmp_path / "p.jsonl")] == [(1, 0)] * 3


def test_malformed_answer_is_retried_then_dropped_after_the_limit(serve, tmp_path):
    srv = serve(lambda n: (200, BAD if n == 1 else GOOD, 0.0))
    task = _tasks(tmp_path, 1)
    stats = run_judgements(task, _judge(srv.url), tmp_path / "p.jsonl", judge_name="j")
    assert stats.judged == 1 and srv.requests == 2
    assert load_progress(tmp_path / "p.jsonl")[task[0].key]["attempts"] == 2

    bad = serve(lambda n: (200, BAD, 0.0))
    stats = run_judgements(task, _judge(bad.url), tmp_path / "q.jsonl", judge_name="j",
                           max_retries=2)
    row = load_progress(tmp_path / "q.jsonl")[task[0].key]
    # 1 try + 2 retries, then recorded as dropped with the reason
    assert (stats.dropped, bad.requests, row["scores"], row["attempts"]) == (1, 3, None, 3)
    assert "list of 2 entries, got 1" in row["error"] and row["output"] == BAD


def test_a_timed_out_request_is_retried(serve, tmp_path):
    srv = serve(lambda n: (200, GOOD, 1.0 if n == 1 else 0.0))
    judge = _judge(srv.url, timeout_s=0.25)
    start = time.monotonic()
    assert judge("t", _tasks(tmp_path, 1)[0].key) == GOOD
    assert srv.requests == 2 and time.monotonic() - start < 0.9


def test_server_errors_are_retried_with_backoff(serve, tmp_path):
    srv = serve(lambda n: (503 if n <= 2 else 200, GOOD, 0.0))
    judge = _judge(srv.url, max_retries=2, backoff_s=0.05)
    start = time.monotonic()
    assert judge("t", _tasks(tmp_path, 1)[0].key) == GOOD
    # waits 0.05 then 0.10 s before the 2nd and 3rd request
    assert srv.requests == 3 and time.monotonic() - start >= 0.15


def test_client_error_is_not_retried(serve, tmp_path):
    srv = serve(lambda n: (401, "", 0.0))
    with pytest.raises(SlasError, match="rejected the request with HTTP 401"):
        _judge(srv.url)("t", _tasks(tmp_path, 1)[0].key)
    assert srv.requests == 1


def test_dead_server_raises_naming_the_url_and_keeps_progress(serve, tmp_path):
    state = {"up": True}
    srv = serve(lambda n: (200 if state["up"] and n <= 2 else 503, GOOD, 0.0))
    tasks, progress = _tasks(tmp_path, 4), tmp_path / "p.jsonl"
    with pytest.raises(SlasError, match=rf"judge server {srv.url}/chat/completions unreachable "
                                        r"after 3 attempts \(last error: HTTP 503"):
        run_judgements(tasks, _judge(srv.url), progress, judge_name="j", concurrency=1)
    assert sorted(load_progress(progress)) == [tasks[0].key, tasks[1].key]
    # the server comes back: the rerun only asks for the two missing images
    back = serve(lambda n: (200, GOOD, 0.0))
    stats = run_judgements(tasks, _judge(back.url), progress, judge_name="j")
    assert stats == (4, 2, 2, 0) and back.requests == 2
    assert len(progress.read_text().splitlines()) == 4


def test_nothing_listening_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(SlasError, match=f"judge server {url}/chat/completions unreachable"):
        run_judgements(_tasks(tmp_path, 2), _judge(url, max_retries=1), tmp_path / "p.jsonl",
                       judge_name="j")
    assert not (tmp_path / "p.jsonl").read_text()


def test_resume_skips_finished_work_and_repairs_a_torn_line(serve, tmp_path):
    srv = serve(lambda n: (200, GOOD, 0.0))
    tasks, progress = _tasks(tmp_path, 4), tmp_path / "p.jsonl"
    run_judgements(tasks[:3], _judge(srv.url), progress, judge_name="j")
    assert srv.requests == 3
    assert run_judgements(tasks[:3], _judge(srv.url), progress, judge_name="j") == (3, 3, 0, 0)
    assert srv.requests == 3
    # a crash while writing the third row leaves a torn line: it is cut and that image redone
    lines = progress.read_bytes().splitlines(keepends=True)
    progress.write_bytes(b"".join(lines[:2]) + lines[2][:10])
    stats = run_judgements(tasks, _judge(srv.url), progress, judge_name="j")
    assert stats == (4, 2, 2, 0) and srv.requests == 5
    assert sorted(load_progress(progress)) == sorted(t.key for t in tasks)


def test_redo_dropped_asks_again_only_for_dropped_images(serve, tmp_path):
    srv = serve(lambda n: (200, BAD if n == 1 else GOOD, 0.0))
    tasks, progress = _tasks(tmp_path, 2), tmp_path / "p.jsonl"
    run_judgements(tasks, _judge(srv.url), progress, judge_name="j", max_retries=0,
                   concurrency=1)
    assert [j.scores for j in read_results(progress)] == [None, (1, 0)]
    stats = run_judgements(tasks, _judge(srv.url), progress, judge_name="j", redo_dropped=True)
    assert stats == (2, 1, 1, 0) and srv.requests == 3
    assert [j.scores for j in read_results(progress)] == [(1, 0), (1, 0)]  # last row wins


def test_concurrency_limit_is_respected(serve, tmp_path):
    srv = serve(lambda n: (200, GOOD, 0.1))
    run_judgements(_tasks(tmp_path, 6), _judge(srv.url), tmp_path / "p.jsonl", judge_name="j",
                   concurrency=2)
    assert srv.requests == 6 and srv.peak == 2


def test_make_tasks_requires_every_image(tmp_path):
    rec = UniGenBenchRecord(7, "p", ("Style",), ("ink",), "en", 2, False, {})
    prompts = UniGenBenchPrompts([rec], "en", tmp_path / "x.csv", "", ())
    Image.new("RGB", (2, 2)).save(tmp_path / "7_0.png")
    with pytest.raises(SlasError, match=r"1 of 2 images missing, first .*7_1\.png"):
        make_tasks(prompts, MINI, tmp_path, images_per_prompt=2)
    tasks = make_tasks(prompts, MINI, tmp_path, images_per_prompt=1)
    assert tasks == [JudgeTask(str(tmp_path / "7_0.png"), 7, 0, tasks[0].text, ("Style",))]
    assert tasks[0].text.startswith("P=p|T=['Style']")


def test_upstream_results_csv_is_read_with_dropped_rows(tmp_path):
    path = tmp_path / "model_en.csv"
    ok = json.dumps({"prompt": "p", "testpoint": ["Style"], "analysis": ["a"], "score": [1]},
                    indent=4)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "prompt", "testpoint", "output", "result_json", "img_path"])
        w.writerow(["0", "p", "['Style']", "text\nwith newline", ok, "d/0_0.png"])
        w.writerow(["0", "p", "['Style']", "garbage", "null", "d/0_1.png"])
    got = read_results(path)
    assert [(j.key, j.scores) for j in got] == [("d/0_0.png", (1,)), ("d/0_1.png", None)]
