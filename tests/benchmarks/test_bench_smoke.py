"""Smoke versions of the benchmark protocols, so the scripts never rot (skip without the CIFAR zip)."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SHARED_DATA

ZIP = SHARED_DATA / "cifar10-jpg.zip"
needs_zip = pytest.mark.skipif(not ZIP.exists(), reason="../shared/data/cifar10-jpg.zip not present")


@needs_zip
@pytest.mark.parametrize(("script", "methods"), [
    ("protocol_q.py", "la,ab-dl-la@upper_lr=0.02"),
    ("protocol_q.py", "bs-mixup-drw,ce-mixup-drw,ab-dl-la-mixup"),  # the Bag of Tricks rivals' recipe
    # the paper's Neumann engine over the whole network: about 7 CPU minutes even shrunk
    pytest.param("protocol_p.py", "la,ab-dl-la", marks=pytest.mark.slow),
])
def test_protocol_quick(tmp_path, script, methods):
    out = tmp_path / "results.jsonl"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", "--data", str(ZIP),
                          "--methods", methods, "--seeds", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["method"] for r in rows} == set(methods.split(","))
    assert all("error" not in r and 0 <= r["balanced_error"] <= 100 for r in rows), rows
    ab = next(r for r in rows if r["method"].startswith("ab-"))
    assert ab["hyper_steps"] > 0 and len(ab["alpha"]["logit_bias"]) == 10
    assert f"| {ab['method']} | 1 |" in res.stdout
    meta = json.loads(out.with_suffix(".meta.jsonl").read_text().splitlines()[-1])
    assert meta["protocol"] == ("Q" if script == "protocol_q.py" else "P") + "-modified"


def test_protocol_s4_quick():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "protocol_s.py"), "s4", "--classes", "10,50"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"classes"')]
    engines = ["head", "neumann", "cg", "unrolled"]
    assert [(r["classes"], r["engine"], r["sharing"]) for r in rows] == [
        (c, e, s) for c in (10, 50) for e in engines for s in ("per_class", "poly:3")]
    assert all(r["seconds"] > 0 for r in rows)
    assert {r["hparams"] for r in rows if r["classes"] == 50} == {100, 6}


def test_augment_throughput_quick():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "augment_throughput.py"), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["protocol"] == "S3" and result["workers"] == 2
    assert result["policy_images_per_s"] > 0 and result["pil_dataloader_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["policy_images_per_s"] / result["pil_dataloader_images_per_s"],
                                            rel=1e-2)


@needs_zip
@pytest.mark.slow  # S1's three shrunk trainings take minutes; S3 and S4 have their own quick tests above
def test_protocol_s_all_quick(tmp_path):
    out = tmp_path / "s.jsonl"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "protocol_s.py"), "all", "--quick",
                          "--data", str(ZIP), "--rows", "plain,head,unrolled", "--classes", "10", "--engines", "head",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["protocol"] for r in rows] == ["S1"] * 3 + ["S3"] + ["S4"] * 2
    s1 = {r["row"]: r for r in rows[:3]}
    assert s1["plain"]["epoch_ratio"] == 1.0 and s1["plain"]["hyper_steps"] == 0
    assert s1["head"]["hyper_steps"] > 0 and s1["unrolled"]["hyper_steps"] > 0
    assert all(r["median_epoch"] > 0 and r["memory_ratio"] > 0 for r in s1.values())
    assert "| unrolled |" in res.stdout and "| ClassPolicy, batched, 1 thread |" in res.stdout


@pytest.mark.slow  # two searches, one of them on 2 torchrun ranks
def test_protocol_s5_ranks_quick(tmp_path):
    out = tmp_path / "s5.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "protocol_s5.py"), "ranks", "--epochs", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["ranks"]
    assert [r["ranks"] for r in rows] == [1, 2]
    assert rows[0]["hyper_steps"] == rows[1]["hyper_steps"] > 0
    assert set(rows[1]["alpha_max_rel_diff"]) == {"class_weight", "logit_bias", "logit_scale"}
    assert all(r["images_per_s_per_rank"] > 0 for r in rows)


def test_policy_hypergrad_quick(tmp_path):
    out = tmp_path / "policy_hypergrad.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "policy_hypergrad.py"), "--epochs", "1",
                          "--upper-start", "0", "--n-max", "40", "--batch-size", "16", "--interval", "2",
                          "--states", "1", "--draws", "2", "--estimate-draws", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert result["search"]["hyper_steps"] > 0 and len(result["states"]) == 1
    (state,) = result["states"]
    for name in ("head", "head+backbone"):
        for part in ("all", "probability", "magnitude"):
            row = state[name][part]
            # a NaN cosine or norm ratio means an estimate or the reference was all zeros
            assert all(math.isfinite(row[k]) for k in ("cos", "cos_of_mean", "rel_norm")), (name, part, row)
            assert row["rel_norm"] > 0
            assert result["summary"][name][part] == row  # the mean over one state is that state
    assert state["backbone_vs_head"]["rel_norm"] > 0  # the backbone term adds something to the head's
    assert math.isfinite(state["noise_floor"]["all"]["cos"])
    assert state["cpu_seconds"]["reference"] > 0 and state["reference_norm"] > 0
    assert "| **mean** |" in res.stdout


def test_policy_hypergrad_compare_known_answer():
    spec = importlib.util.spec_from_file_location("policy_hypergrad", REPO / "benchmarks" / "policy_hypergrad.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # A = [probability logits, magnitude logits]; the estimate doubles the first and flips one magnitude
    ref = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])]
    est = [torch.tensor([[2.0, 0.0]]), torch.tensor([[-1.0, 1.0]])]
    got = bench.compare(est, ref)
    assert got["probability"] == {"cos": 1.0, "rel_norm": 2.0, "sign": 1.0}
    assert got["magnitude"] == {"cos": 0.0, "rel_norm": 1.0, "sign": 0.5}
    # all of A: e = [2, 0, -1, 1], r = [1, 0, 1, 1]: e.r = 2, |e| = sqrt(6), |r| = sqrt(3)
    assert got["all"]["cos"] == pytest.approx(2 / math.sqrt(18), abs=1e-15)
    assert got["all"]["rel_norm"] == pytest.approx(math.sqrt(2), abs=1e-15)
    assert got["all"]["sign"] == 0.75
    assert math.isnan(bench.compare(ref, [torch.zeros(1, 2), torch.zeros(1, 2)])["all"]["cos"])
