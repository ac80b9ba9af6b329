"""A whole search (sampler, DDP lower level, hyper-steps) on 2 torchrun ranks ends with one process's α.

Without BatchNorm and augmentation (``search_worker.py``) nothing but the order of floating-point sums differs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("search_worker.py")


def _run(out: Path, ranks: int, *args: str) -> list[dict]:
    out.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    launch = torchrun if ranks > 1 else [sys.executable]
    res = subprocess.run([*launch, str(WORKER), str(out), *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(ranks)]


def test_two_ranks_end_with_the_alpha_of_one_process(tmp_path):
    (one,), (r0, r1) = _run(tmp_path / "one", 1), _run(tmp_path / "two", 2)
    assert r0["alpha"] == r1["alpha"]
    assert one["hyper_steps"] == r0["hyper_steps"] > 0
    for k, ref in one["alpha"].items():
        ref, got = torch.tensor(ref), torch.tensor(r0["alpha"][k])
        assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-5, k


def test_cuda_levels_are_tested_in_shares_and_agree_on_every_rank(tmp_path):
    r0, r1 = _run(tmp_path / "cuda", 2, "cuda")
    assert r0["levels"] == r1["levels"] and len(r0["levels"]) == 2
    assert all(len(lv) == 10 for lv in r0["levels"])
