"""Smoke versions of the benchmark protocols, so the scripts never rot (skip without the CIFAR zip)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA

ZIP = SHARED_DATA / "cifar10-jpg.zip"
needs_zip = pytest.mark.skipif(not ZIP.exists(), reason="../shared/data/cifar10-jpg.zip not present")


@needs_zip
def test_protocol_q_quick(tmp_path):
    out = tmp_path / "q.jsonl"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "protocol_q.py"), "--quick", "--data", str(ZIP),
                          "--methods", "la,ab-dl-la@upper_lr=0.02", "--seeds", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["method"] for r in rows} == {"la", "ab-dl-la@upper_lr=0.02"}
    assert all("error" not in r and 0 <= r["balanced_error"] <= 100 for r in rows), rows
    assert "| ab-dl-la@upper_lr=0.02 | 1 |" in res.stdout


def test_protocol_s4_quick():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "protocol_s.py"), "s4", "--classes", "10,50"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"classes"')]
    assert [(r["classes"], r["sharing"]) for r in rows] == [(10, "per_class"), (10, "poly:3"), (50, "per_class"),
                                                            (50, "poly:3")]
    assert rows[3]["hparams"] == 6 and rows[2]["hparams"] == 100


def test_policy_throughput_quick():
    res = subprocess.run([sys.executable, "-m", "ab_plugin.policies.bench_throughput", "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
