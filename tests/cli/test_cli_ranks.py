"""Under torchrun a bad option is refused before any process group starts, said once (by rank 0), exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BAD = [
    (["search", "--upper-lr", "inf"], "config key 'upper_lr' must be a finite number"),
    (["search", "--epochs", "abc"], "'abc' is not a valid integer"),
    (["baseline", "la", "--sharing", "groups:50"], "has 10 classes"),
]


def _rank(rank: int, args: list[str], tmp_path) -> subprocess.CompletedProcess:
    # what torchrun sets; no MASTER_ADDR / MASTER_PORT, so a rank that started a process group would fail loudly
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ab_plugin", *args, "--device", "cpu", "--quiet",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(("args", "msg"), BAD)
def test_only_rank_zero_reports_a_bad_option_and_every_rank_exits_2(tmp_path, args, msg):
    zero, one = _rank(0, args, tmp_path), _rank(1, args, tmp_path)
    assert zero.returncode == one.returncode == 2, (zero.stderr, one.stderr)
    assert msg in zero.stderr and "Traceback" not in zero.stderr
    assert one.stderr == one.stdout == ""
    assert not (tmp_path / "run").exists()


def test_rank_one_stays_silent_under_format_json(tmp_path):
    args = ["search", "--tau", "nan", "--format", "json"]
    zero, one = _rank(0, args, tmp_path), _rank(1, args, tmp_path)
    assert json.loads(zero.stdout)["exit_code"] == 2 and one.stdout == one.stderr == ""


def test_under_real_torchrun_the_error_is_printed_once(tmp_path):
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "ab_plugin", "search", "--upper-lr", "inf", "--device", "cpu", "--quiet",
                          "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode != 0
    assert res.stderr.count("error: config key 'upper_lr' must be a finite number") == 1, res.stderr
    assert not (tmp_path / "run").exists()
