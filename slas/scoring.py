"""Scoring rollouts with the reward models, optionally overlapped with sampling.

``score_rows`` decodes final latents and runs every reward on them. ``OverlappedScorer`` is the
``on_chunk`` callback of :func:`slas.sampling.rollout.rollout`: each time a micro-batch
finishes, the groups it completes are decoded and scored in one background thread while the
next micro-batch is sampled. Groups are never split, so pairwise rewards (which compare the
images of one prompt) see whole groups; the rewards are the same as scoring everything at the
end (rewards score each sample or group independently).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

from slas.backbones import Backbone
from slas.data.prompts import PromptItem
from slas.rewards import RewardFn


def score_rows(
    backbone: Backbone,
    reward_fns: Mapping[str, RewardFn],
    latents: Tensor,
    items: Sequence[PromptItem],
    prompt_ids: Tensor,
    group_ids: Tensor,
) -> Tensor:
    """Rewards ``[K, n]`` of final latents ``[n, *S]`` (prompt row ``prompt_ids [n]`` in
    ``items``, group ``group_ids [n]``), one row per reward model, float32."""
    with torch.inference_mode():
        images = backbone.decode(latents)
        prompts = [items[i].prompt for i in prompt_ids.tolist()]
        # group_id lets pairwise rewards compare the images of one prompt
        meta = [{**items[i].metadata, "group_id": int(g)}
                for i, g in zip(prompt_ids.tolist(), group_ids.tolist(), strict=True)]
        rows = [fn(images, prompts, meta).float() for fn in reward_fns.values()]
    return torch.stack(rows)


class OverlappedScorer:
    """Scores completed groups in a background thread during the rollout.

    Args:
        score: ``(latents [m, *S], rows slice) -> [K, m]`` for local sample rows.
        group_ids: ``[n]`` group of each local sample; a group's samples are contiguous.
    """

    def __init__(self, score, group_ids: Tensor) -> None:
        self._score, self._groups = score, group_ids.tolist()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slas-reward")
        self._futures: list[Future] = []
        self._pending: list[Tensor] = []  # finished latents not yet submitted
        self._submitted = 0  # rows [0, _submitted) are submitted
        self._done = 0  # rows [0, _done) are sampled

    def __call__(self, start: int, end: int, latents: Tensor) -> None:
        """``on_chunk`` of the rollout: rows ``[start, end)`` are finished."""
        self._pending.append(latents.clone())
        self._done = end
        cut = end  # the last group boundary at or before ``end``
        while 0 < cut < len(self._groups) and self._groups[cut - 1] == self._groups[cut]:
            cut -= 1
        if cut > self._submitted:
            self._submit(cut)

    def _submit(self, cut: int) -> None:
        pending = torch.cat(self._pending)
        take = cut - self._submitted
        chunk, rest = pending[:take], pending[take:]
        self._pending = [rest] if rest.shape[0] else []
        self._futures.append(self._pool.submit(self._score, chunk, slice(self._submitted, cut)))
        self._submitted = cut

    def result(self) -> Tensor:
        """Wait for every chunk; ``[K, n]``. Re-raises a reward's exception."""
        try:
            if self._done > self._submitted:
                self._submit(self._done)
            return torch.cat([f.result() for f in self._futures], dim=1)
        finally:
            self._pool.shutdown(wait=True)
