"""The real CLI under the real ``torchrun`` with two gloo ranks: a search, and a rank killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# the one-stage search (hyper-steps in the loop), whose buffers and α the ranks share
ARGS = ["search", "--stage2", "none", "--backbone", "resnet20", "--batch-size", "64", "--interval", "2",
        "--upper-start", "0.25", "--device", "cpu", "--quiet", "--compare", "", "--no-retrain", "--format", "json"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(out: Path, epochs: int, *launcher: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *launcher,
         "-m", "ab_plugin", *ARGS, "--epochs", str(epochs), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _finish(p: subprocess.Popen) -> dict:
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


def _epochs(out: Path) -> list[int]:
    path = out / "search" / "metrics.jsonl"
    return [json.loads(x)["epoch"] for x in path.read_text().splitlines()] if path.exists() else []


def test_search_on_two_ranks(tmp_path):
    out = tmp_path / "run"
    summary = _finish(_torchrun(out, 2))
    assert _epochs(out) == [1, 2]
    assert summary["stages"]["search"]["hyper_steps"] > 0
    ck = torch.load(out / "search" / "checkpoint.pt", weights_only=True)
    # each rank's random state and buffer, and (checked before every checkpoint) the same α on both
    assert len(ck["ranks"]) == 2 and not torch.equal(ck["ranks"][0]["rng"], ck["ranks"][1]["rng"])
    assert len(ck["ranks"][0]["bilevel_buffer"]) == len(ck["ranks"][1]["bilevel_buffer"]) > 0
    assert sorted(p.name for p in out.iterdir()) == ["alpha_trajectory.png", "alpha_vs_frequency.png",
                                                     "config.yaml", "per_class_error.png", "policy.json",
                                                     "result.json", "search"]


def _worker(parent: int, rank: int) -> int:
    """The pid of ``parent``'s child process that runs ``rank``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no rank {rank} under pid {parent}")


@pytest.mark.slow
def test_a_killed_rank_comes_back_from_the_last_checkpoint(tmp_path):
    clean = _finish(_torchrun(tmp_path / "clean", 4))
    out = tmp_path / "killed"
    p = _torchrun(out, 4, "--max-restarts", "1")
    while _epochs(out) != [1, 2]:  # kill in the third epoch, two epochs after the last checkpoint's start
        assert p.poll() is None
        time.sleep(0.2)
    os.kill(_worker(p.pid, 1), signal.SIGKILL)
    resumed = _finish(p)
    assert resumed["alpha"] == clean["alpha"]
    assert resumed["test_metrics"] == clean["test_metrics"]
    assert _epochs(out) == [1, 2, 3, 4]
