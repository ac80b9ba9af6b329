"""Every integration example runs end to end in its ``--quick`` form (subprocesses, started together)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = {
    "criterion_only": [],
    "timm_loop": [],
    "torchvision_loop": ["--batched-policy"],
    "lightning_loop": [],
}
TIMEOUT = 240


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start all examples at once (their start-up is mostly imports); each test waits for its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = {}
    for name, extra in SCRIPTS.items():
        if name == "lightning_loop" and importlib.util.find_spec("lightning") is None:
            continue
        cwd = tmp_path_factory.mktemp(name)
        procs[name] = subprocess.Popen([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", *extra], cwd=cwd,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_example_runs_quick(runs, name):
    if name not in runs:
        pytest.skip("lightning is not installed")
    out, err = runs[name].communicate(timeout=TIMEOUT)
    assert runs[name].returncode == 0, err[-3000:]
    done = [line for line in out.splitlines() if line.startswith("done:")]
    assert done, out[-2000:]
    m = re.search(r"hyper-steps (\d+), alpha moved ([0-9.]+)", done[-1])
    assert m and int(m.group(1)) >= 1 and float(m.group(2)) > 0, done[-1]
