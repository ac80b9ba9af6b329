"""Kill a real `ab-plugin search` subprocess at several points, resume it, compare with a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["search", "--backbone", "resnet20", "--epochs", "4", "--batch-size", "64", "--interval", "2",
        "--upper-start", "0.25", "--device", "cpu", "--quiet", "--compare", "", "--format", "json"]


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ab_plugin.cli", *ARGS, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(p: subprocess.Popen) -> dict:
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    return json.loads(stdout)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    t0 = time.monotonic()
    summary = _finish(_cli(out))
    return summary, time.monotonic() - t0


def _kill_and_resume(tmp_path: Path, delay: float) -> dict:
    out = tmp_path / "run"
    p = _cli(out)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    for _ in range(3):  # a kill before the first checkpoint leaves nothing to resume: start again
        p = _cli(out, "--resume") if (out / "config.yaml").exists() else _cli(out)
        stdout, stderr = p.communicate(timeout=600)
        if p.returncode == 0:
            return json.loads(stdout)
        assert "nothing to resume" in stderr or "error" not in stderr, stderr
    raise AssertionError("resume did not finish")


@pytest.mark.parametrize("fraction", [0.45])
def test_kill_and_resume_matches_clean_run(clean, tmp_path, fraction):
    summary, seconds = clean
    resumed = _kill_and_resume(tmp_path, fraction * seconds)
    assert resumed["alpha"] == summary["alpha"]
    assert resumed["test_metrics"] == summary["test_metrics"]
    lines = (tmp_path / "run" / "search" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6, 0.8, 0.95])
def test_kill_at_many_points(clean, tmp_path, fraction):
    summary, seconds = clean
    resumed = _kill_and_resume(tmp_path, fraction * seconds)
    assert resumed["alpha"] == summary["alpha"]
    assert resumed["test_metrics"] == summary["test_metrics"]
