"""Pairwise judge reward: answer parsing, win rates, and the HTTP client against a local server."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from slas.config import RewardConfig
from slas.errors import SlasError
from slas.rewards import get_reward
from slas.rewards.pairwise import (
    ChatJudge,
    PairwiseWinRate,
    chat_url,
    group_ids_from,
    parse_preference,
)

ONE = "<think>The first follows the prompt.</think>\n<answer>Image 1 is better</answer>"
TWO = "Reasoning...\n<answer> image 2  IS better </answer>"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("text, expected", [
    (ONE, 1.0),
    (TWO, 0.0),
    ("Image 1 is better", 0.5),  # no <answer> tag -> tie (reference rule)
    ("<answer>They are equally good</answer>", 0.5),
    ("<answer>Image 1 is better and Image 2 is better</answer>", 0.5),
    ("<answer>Image 2 is better</answer> wait <answer>Image 1 is better</answer>", 1.0),
    ("", 0.5),
])
def test_parse_preference(text, expected):
    assert parse_preference(text) == expected


def test_chat_url():
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


# ----------------------------------------------------------------------------- win rates


def _grey(levels):
    return torch.stack([torch.full((3, 4, 4), v) for v in levels])


def test_win_rates_hand_checked():
    # Group "a": brightness 0.1, 0.5, 0.9; the judge prefers the brighter image.
    #   pairs (0,1) -> 1 wins, (0,2) -> 2 wins, (1,2) -> 2 wins
    #   win rates: 0/2 = 0, 1/2 = 0.5, 2/2 = 1.
    # Group 7: two images, the judge cannot decide -> 0.5 each. Group "solo": alone -> 0.5.
    calls = []

    def judge(prompt, image1, image2):
        calls.append((prompt, round(float(image1.mean()), 2), round(float(image2.mean()), 2)))
        if prompt == "tie":
            return 0.5
        return 1.0 if image1.mean() > image2.mean() else 0.0

    images = _grey([0.1, 0.3, 0.5, 0.7, 0.9, 0.2])
    prompts = ["p", "tie", "p", "tie", "p", "solo"]
    meta = [{"group_id": g} for g in ("a", 7, "a", 7, "a", "solo")]
    rates = PairwiseWinRate(judge, concurrency=3)(images, prompts, meta)
    torch.testing.assert_close(rates, torch.tensor([0.0, 0.5, 0.5, 0.5, 1.0, 0.5]))
    assert rates.dtype == torch.float32
    # One call per unordered same-group pair, lower index shown as Image 1.
    assert sorted(calls) == sorted([("p", 0.1, 0.5), ("p", 0.1, 0.9), ("p", 0.5, 0.9),
                                    ("tie", 0.3, 0.7)])


def test_group_ids_are_required_and_consistent():
    judge = PairwiseWinRate(lambda p, a, b: 0.5)
    with pytest.raises(SlasError, match=r"metadata\[1\] has no 'group_id'"):
        judge(_grey([0.1, 0.2]), ["p", "p"], [{"group_id": 0}, {}])
    with pytest.raises(SlasError, match="needs one metadata record per image"):
        judge(_grey([0.1, 0.2]), ["p", "p"], None)
    with pytest.raises(SlasError, match="share group_id 0 but not the prompt"):
        judge(_grey([0.1, 0.2]), ["p", "q"], [{"group_id": 0}, {"group_id": 0}])
    assert group_ids_from([{"group_id": "b"}, {"group_id": "a"}, {"group_id": "b"}],
                          3).tolist() == [0, 1, 0]


# ----------------------------------------------------------------------------- HTTP judge


class _Server:
    """A local OpenAI-compatible endpoint answering from a script of behaviours."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                step = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                kind, value = step
                if kind == "sleep":
                    time.sleep(value)
                    kind, value = "answer", ONE
                if kind == "status":
                    self.send_response(value)
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted"}')
                    return
                payload = {"choices": [{"message": {"role": "assistant", "content": value}}]}
                data = json.dumps(payload).encode() if kind == "answer" else value
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def start(*script):
        servers.append(_Server(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_judge_request_format_and_win_rates(server):
    srv = server(("answer", ONE))
    judge = ChatJudge(srv.url, model="UnifiedReward", timeout_s=5, retries=0)
    images = _grey([0.2, 0.4, 0.6])
    rates = PairwiseWinRate(judge, concurrency=2)(images, ["a fox"] * 3, [{"group_id": 0}] * 3)
    # "Image 1 is better" every time: image 0 beats 1 and 2, image 1 beats 2 -> 1, 0.5, 0.
    torch.testing.assert_close(rates, torch.tensor([1.0, 0.5, 0.0]))
    assert len(srv.requests) == 3
    path, body = srv.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "UnifiedReward"
    assert body["max_tokens"] == 4096 and body["temperature"] == 0.0
    content = body["messages"][0]["content"]
    assert [c["type"] for c in content] == ["text", "image_url", "image_url"]
    assert "Prompt: a fox" in content[0]["text"]
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert png.format == "PNG" and png.size == (4, 4) and png.mode == "RGB"


def test_malformed_answers_are_ties(server):
    srv = server(("answer", "I cannot tell."))
    judge = ChatJudge(srv.url, retries=0, timeout_s=5)
    assert judge("p", torch.zeros(3, 2, 2), torch.ones(3, 2, 2)) == 0.5
    assert "model" not in srv.requests[0][1]  # no model name configured -> field omitted


def test_timeout_then_retry(server):
    srv = server(("sleep", 1.5), ("answer", TWO))
    judge = ChatJudge(srv.url, timeout_s=0.3, retries=2, backoff_s=0.01)
    assert judge("p", torch.zeros(3, 2, 2), torch.ones(3, 2, 2)) == 0.0
    assert len(srv.requests) == 2


def test_server_errors_retry_and_client_errors_do_not(server):
    srv = server(("status", 503), ("raw", b"not json"), ("answer", ONE))
    judge = ChatJudge(srv.url, timeout_s=5, retries=3, backoff_s=0.01)
    assert judge("p", torch.zeros(3, 2, 2), torch.ones(3, 2, 2)) == 1.0
    assert len(srv.requests) == 3  # 503 and an unreadable reply are retried
    bad = server(("status", 400))
    with pytest.raises(SlasError, match=r"reward\.judge_url .*refused the request \(HTTP 400"):
        ChatJudge(bad.url, timeout_s=5, retries=3, backoff_s=0.01)(
            "p", torch.zeros(3, 2, 2), torch.ones(3, 2, 2))
    assert len(bad.requests) == 1


def test_server_down_names_the_url():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    judge = ChatJudge(url, timeout_s=1, retries=2, backoff_s=0.01)
    with pytest.raises(SlasError, match=rf"reward\.judge_url {url}: no answer after 3 attempts"):
        judge("p", torch.zeros(3, 2, 2), torch.ones(3, 2, 2))


def test_factory_through_the_table(server):
    srv = server(("answer", TWO))
    config = RewardConfig(names=["pairwise_judge"], weights=[1.0], judge_url=srv.url)
    config.judge_retries = 0  # not yet a RewardConfig field; the factory reads it if present
    reward = get_reward("pairwise_judge", config)
    assert isinstance(reward, PairwiseWinRate) and reward.judge.retries == 0
    rates = reward(_grey([0.1, 0.9]), ["p", "p"], [{"group_id": 3}, {"group_id": 3}])
    torch.testing.assert_close(rates, torch.tensor([0.0, 1.0]))  # "Image 2 is better"
    with pytest.raises(SlasError, match=r"reward\.judge_url: not set"):
        get_reward("pairwise_judge", RewardConfig(names=["pairwise_judge"], weights=[1.0]))
