"""1 process vs 2 processes (CPU, gloo) with the same global batch: same rewards, advantages
and parameters. ``accelerate launch --cpu`` silently runs one process, so torchrun is used."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def launch(nproc: int, out: Path) -> None:
    out.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "tests.distributed.one_step",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # A rank has been seen to abort at interpreter exit after finishing; judge by its files.
    missing = [r for r in range(nproc) if not (out / f"rank{r}.pt").is_file()]
    assert not missing, (
        f"ranks {missing} wrote nothing:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )


@pytest.mark.distributed
def test_one_vs_two_processes(tmp_path):
    launch(1, tmp_path / "one")
    launch(2, tmp_path / "two")
    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in range(2)]
    assert one["world"] == 1 and all(r["world"] == 2 for r in ranks)
    assert torch.equal(torch.cat([r["sample_ids"] for r in ranks]), one["sample_ids"])
    # Same micro-batch size on both layouts: the rollouts, hence rewards, are bit-identical.
    assert torch.equal(torch.cat([r["rewards"] for r in ranks], dim=1), one["rewards"])
    assert torch.allclose(
        torch.cat([r["advantages"] for r in ranks]), one["advantages"], atol=1e-7, rtol=0
    )
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)  # the ranks agree exactly with each other
    for a, b in zip(ranks[0]["params"], one["params"], strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
