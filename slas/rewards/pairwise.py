"""Pairwise judge reward (Pref-GRPO, CodeGoat24/Pref-GRPO): win rates from an MLLM judge.

For the G images of one prompt every unordered pair (i < j) is shown to a judge served behind
an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, or a hosted API), image i always as
"Image 1" (the reference does not symmetrise the order). The judge answers with reasoning and
``<answer>Image 1 is better</answer>`` or ``<answer>Image 2 is better</answer>``; the winner
gets 1, and an answer with no ``<answer>`` tag, neither phrase or both phrases counts as a tie
(0.5 each). Win rate_i = wins_i / (G - 1), computed by
:func:`slas.advantages.preference_matrix` + :func:`slas.advantages.pairwise_winrate`; the win
rates are then the reward fed to any advantage estimator.

**Group structure.** The RewardFn needs to know which images belong to one prompt: every
``metadata[i]`` must carry ``"group_id"`` (any hashable; equal ids = one group). Missing ids
raise :class:`~slas.errors.SlasError`.

The instruction text below is this library's own (the Pref-GRPO/UnifiedReward prompt is under
an academic-only licence); set ``instruction`` to the judge's native prompt for exact
reproduction. Images are sent as base64 PNG data URLs after the text. Cost: G(G-1)/2 calls per
prompt, run ``concurrency`` at a time.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from slas.advantages import pairwise_winrate, preference_matrix
from slas.errors import SlasError
from slas.rewards.clip_score import check_batch
from slas.rewards.pickscore import to_pil

if TYPE_CHECKING:
    from slas.config import RewardConfig

FIELD = "reward.judge_url"
DEFAULT_INSTRUCTION = (
    "You are shown two images generated from the same text prompt.\n"
    "Prompt: {prompt}\n"
    "Compare Image 1 (shown first) and Image 2 (shown second): how faithfully each follows the "
    "prompt (objects, counts, attributes, spatial relations, text) and its visual quality "
    "(coherence, detail, absence of artifacts). Reason briefly, then end with exactly one of\n"
    "<answer>Image 1 is better</answer>\n"
    "<answer>Image 2 is better</answer>"
)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_RETRY_HTTP = {408, 409, 425, 429, 500, 502, 503, 504}


def parse_preference(text: str) -> float:
    """P(Image 1 beats Image 2) from a judge reply: 1.0, 0.0, or 0.5 (tie / malformed).

    The last ``<answer>...</answer>`` decides (case and spacing ignored): exactly one of
    "image 1 is better" / "image 2 is better" -> that image wins; anything else -> 0.5.
    """
    answers = _ANSWER.findall(text or "")
    if not answers:
        return 0.5
    answer = " ".join(answers[-1].lower().split())
    one, two = "image 1 is better" in answer, "image 2 is better" in answer
    return 1.0 if one and not two else 0.0 if two and not one else 0.5


def png_data_url(image: Tensor) -> str:
    """``image [3, H, W]`` in [0, 1] -> ``data:image/png;base64,...`` (8-bit RGB)."""
    buf = io.BytesIO()
    to_pil(image[None])[0].save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pair_messages(prompt: str, image1: Tensor, image2: Tensor,
                  instruction: str = DEFAULT_INSTRUCTION) -> list[dict[str, Any]]:
    """One user message: the instruction text, then Image 1, then Image 2 (``[3, H, W]``)."""
    return [{"role": "user", "content": [
        {"type": "text", "text": instruction.format(prompt=prompt)},
        {"type": "image_url", "image_url": {"url": png_data_url(image1)}},
        {"type": "image_url", "image_url": {"url": png_data_url(image2)}},
    ]}]


def chat_url(url: str) -> str:
    """``http://host:port/v1`` or a full ``.../chat/completions`` URL -> the completions URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


@dataclass(frozen=True)
class ChatJudge:
    """A pairwise judge over an OpenAI-compatible chat-completions endpoint (stdlib HTTP only).

    Attributes:
        url: endpoint base (``http://host:8000/v1``) or the full ``/chat/completions`` URL.
        model: the served model name (``model`` field of the request; omitted when None).
        timeout_s: seconds per HTTP request.
        retries: extra attempts after a failed request (connection error, timeout, HTTP 408/
            429/5xx, unreadable reply); other HTTP errors fail at once.
        backoff_s: sleep before retry k is ``backoff_s * 2**k``.
        max_tokens: completion budget (the reference uses 4096 for reasoning judges).
        temperature: sampling temperature (0 = greedy; a library choice).
        api_key: sent as ``Authorization: Bearer``; None sends no header.
        instruction: text template with a ``{prompt}`` field.
    """

    url: str
    model: str | None = None
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    max_tokens: int = 4096
    temperature: float = 0.0
    api_key: str | None = None
    instruction: str = DEFAULT_INSTRUCTION

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """The reply text for ``messages``, retrying; SlasError naming the URL if none comes."""
        body: dict[str, Any] = {"messages": messages, "max_tokens": self.max_tokens,
                                "temperature": self.temperature}
        if self.model is not None:
            body["model"] = self.model
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data, url, last = json.dumps(body).encode("utf-8"), chat_url(self.url), ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                return str(reply["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code} {err.reason}"
                if err.code not in _RETRY_HTTP:
                    detail = err.read(300).decode("utf-8", "replace")
                    raise SlasError(f"{FIELD} {self.url}: the judge refused the request "
                                    f"({last}: {detail}); check reward.judge_model and the "
                                    "API key") from None
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except (ValueError, KeyError, IndexError, TypeError) as err:
                last = f"unreadable reply ({type(err).__name__}: {err})"
        raise SlasError(f"{FIELD} {self.url}: no answer after {self.retries + 1} attempts (last "
                        f"error: {last}); check that the server is running and reachable, or "
                        "raise reward.judge_timeout / reward.judge_retries")

    def __call__(self, prompt: str, image1: Tensor, image2: Tensor) -> float:
        """P(image1 beats image2) in {0, 0.5, 1} for ``image1, image2 [3, H, W]`` in [0, 1]."""
        return parse_preference(self.complete(pair_messages(prompt, image1, image2,
                                                            self.instruction)))


PairJudge = Callable[[str, Tensor, Tensor], float]


def group_ids_from(metadata: Sequence[Mapping[str, Any]] | None, n: int) -> Tensor:
    """``[N]`` int64 group codes (first-seen order) from ``metadata[i]["group_id"]``."""
    if metadata is None or len(metadata) != n:
        raise SlasError(f"reward pairwise_judge needs one metadata record per image ({n}) with a "
                        "'group_id' key naming the image's prompt group")
    codes: dict[Any, int] = {}
    for i, record in enumerate(metadata):
        if "group_id" not in record:
            raise SlasError(f"reward pairwise_judge: metadata[{i}] has no 'group_id'; every "
                            "record must name its prompt group (equal ids = one prompt's images)")
        codes.setdefault(record["group_id"], len(codes))
    return torch.tensor([codes[r["group_id"]] for r in metadata], dtype=torch.long)


class PairwiseWinRate:
    """A RewardFn: each image's win rate against the other images of its group, ``[N]``.

    Args:
        judge: ``(prompt, image1 [3, H, W], image2 [3, H, W]) -> P(image1 wins)``.
        concurrency: judge calls in flight at once (threads).
    """

    def __init__(self, judge: PairJudge, concurrency: int = 8) -> None:
        if concurrency < 1:
            raise SlasError(f"reward.judge_concurrency: must be >= 1, got {concurrency}")
        self.judge, self.concurrency = judge, concurrency

    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[Mapping[str, Any]] | None = None) -> Tensor:
        """Win rates ``[N]`` float32 in [0, 1]; 0.5 for an image alone in its group."""
        check_batch("pairwise_judge", images, prompts, metadata)
        groups = group_ids_from(metadata, images.shape[0])
        pairs = [(i, j) for i in range(len(groups)) for j in range(i + 1, len(groups))
                 if groups[i] == groups[j]]
        for i, j in pairs:
            if prompts[i] != prompts[j]:
                raise SlasError(f"reward pairwise_judge: images {i} and {j} share group_id "
                                f"{metadata[i]['group_id']!r} but not the prompt; a group is "
                                "the images of one prompt")
        cpu = images.detach().float().cpu()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(lambda p: self.judge(prompts[p[0]], cpu[p[0]], cpu[p[1]]),
                                    pairs))
        won = dict(zip(pairs, results, strict=True))
        matrix = preference_matrix(groups, lambda i, j: won[(i, j)])
        return pairwise_winrate(matrix, groups).float().to(images.device)


def pairwise_judge(config: RewardConfig, device: torch.device) -> PairwiseWinRate:
    """Pref-GRPO win rates from an OpenAI-compatible judge at ``reward.judge_url``.

    Needs ``metadata[i]["group_id"]`` on every record. ``device`` is unused (the judge is remote).
    The API key, if any, is read from the ``OPENAI_API_KEY`` environment variable (the standard
    one of OpenAI-compatible clients), never from the config, so it never lands in a run folder.
    """
    if not config.judge_url:
        raise SlasError(f"{FIELD}: not set; reward pairwise_judge needs an OpenAI-compatible "
                        "endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM serving the judge)")
    judge = ChatJudge(
        url=config.judge_url,
        model=config.judge_model,
        timeout_s=config.judge_timeout,
        retries=config.judge_retries,
        backoff_s=config.judge_backoff,
        max_tokens=config.judge_max_tokens,
        api_key=os.environ.get(config.judge_api_key_env),
    )
    return PairwiseWinRate(judge, concurrency=config.judge_concurrency)
