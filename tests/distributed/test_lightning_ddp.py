"""``AutoBalanceCallback`` under Lightning's ``strategy="ddp"`` on 2 CPU processes keeps α the same on both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning.pytorch")


@pytest.mark.slow
def test_alpha_is_the_same_on_both_ranks(tmp_path):
    worker = Path(__file__).with_name("lightning_worker.py")
    res = subprocess.run([sys.executable, str(worker), str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["hyper_steps"] == r1["hyper_steps"] > 0
    assert r0["alpha"] == r1["alpha"]
    assert r0["alpha"]["logit_bias"] != r0["start"]["logit_bias"]  # α moved
