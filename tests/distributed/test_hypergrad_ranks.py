"""Two gloo ranks under the real ``torchrun`` compute the hypergradient one process computes on the union of
their batches (the worker: ``hypergrad_worker.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("hypergrad_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(out: Path, ranks: int) -> list[dict]:
    out.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    launch = torchrun if ranks > 1 else [sys.executable]
    res = subprocess.run([*launch, str(WORKER), str(out)], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(ranks)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hypergrad")
    return _run(tmp / "one", 1)[0], _run(tmp / "two", 2)


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("engine", ["head", "cg", "neumann"])
def test_two_ranks_give_the_union_hypergradient(runs, engine):
    one, two = runs
    assert not one["distributed"] and all(r["distributed"] for r in two)
    ref = _flat(one["grads"][engine])
    for r in two:
        got = _flat(r["grads"][engine])
        assert float((got - ref).norm() / ref.norm()) <= 1e-5


@pytest.mark.parametrize("engine", ["head", "cg", "neumann"])
def test_every_rank_gets_the_same_hypergradient_bit_for_bit(runs, engine):
    _, (r0, r1) = runs
    assert torch.equal(_flat(r0["grads"][engine]), _flat(r1["grads"][engine]))


def test_alpha_guard_notices_ranks_that_differ(runs):
    one, two = runs
    assert one["guard"] == "silent"
    assert [r["guard"] for r in two] == ["raised", "raised"]
