"""Checkpoint files: round trip and clear errors for damaged files."""

import pytest
import torch

from slas.checkpoint import load_checkpoint, save_checkpoint
from slas.errors import SlasError


def test_round_trip_and_damaged_files(tmp_path):
    state = {"step": 3, "params": [torch.arange(6.0).reshape(2, 3)]}
    path = save_checkpoint(tmp_path, 3, state, keep_last=2)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["params"][0], state["params"][0])
    loaded["params"][0].add_(1)  # mapped copy-on-write: the file keeps the saved values
    assert torch.equal(load_checkpoint(path)["params"][0], state["params"][0])
    data = path.read_bytes()
    for damaged in (b"garbage" * 10, data[: len(data) // 2], b""):
        path.write_bytes(damaged)
        with pytest.raises(SlasError, match="cannot read checkpoint .*remove it"):
            load_checkpoint(path)
