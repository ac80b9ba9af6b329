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
    ("protocol_q.py", "bs-mixup-drw,ab-dl-la-mixup"),  # the Bag of Tricks rivals' recipe
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


@needs_zip
def test_protocol_f_quick(tmp_path):
    out, cache = tmp_path / "f.jsonl", tmp_path / "cache"
    methods = ["la", "ab-dl-la", "la@freeze_backbone=true"]

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "protocol_f.py"), "--quick", "--threads", "1",
                               "--methods", ",".join(methods), "--seeds", "0", "--out", str(out), "--cache",
                               str(cache)], capture_output=True, text=True, timeout=600)

    res = run()
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in rows] == methods and all("error" not in r for r in rows), rows
    # five target classes, long-tailed from the quick n_max (200, rho 100): fine-tuned from the cached checkpoint
    assert all(r["train_images"] == 200 + 64 + 20 + 7 + 2 and len(r["per_class_error"]) == 5 for r in rows)
    (ckpt,) = cache.glob("resnet20_c5_*.pt")
    meta = json.loads(out.with_suffix(".meta.jsonl").read_text().splitlines()[-1])
    assert meta["protocol"] == "F-modified" and meta["pretrained"]["path"] == str(ckpt)
    assert meta["recipe"]["pretrained_file"] == str(ckpt)
    ab = rows[1]
    assert ab["hyper_steps"] > 0 and 0 < ab["search_images"] < ab["train_images"]
    la, la_frozen = rows[0], rows[2]
    # a paired difference against LA of the same mode, and the search's cost per image
    d = ab["balanced_error"] - la["balanced_error"]
    assert f"| ab-dl-la | 1 | {ab['balanced_error']:.2f} | {ab['worst_class_error']:.2f} | {d:+.2f} (n=1) |" \
        in res.stdout
    assert "| la@freeze_backbone=true | 1 |" in res.stdout and la_frozen["train_seconds"] > 0
    # a re-run reuses the checkpoint (same file, no second pretraining) and skips the finished jobs
    stamp = ckpt.stat().st_mtime_ns
    assert run().returncode == 0 and ckpt.stat().st_mtime_ns == stamp and len(out.read_text().splitlines()) == 3


def test_protocol_f_table_pairs_seeds(tmp_path):
    spec = importlib.util.spec_from_file_location("protocol_f", REPO / "benchmarks" / "protocol_f.py")
    f = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec.loader.exec_module(f)
    rows = [{"method": "la", "seed": s, "balanced_error": e, "worst_class_error": 50.0, "train_seconds": 10.0,
             "train_images": 100} for s, e in ((0, 40.0), (1, 42.0), (2, 41.0))]
    rows += [{"method": "ab-dl-la", "seed": s, "balanced_error": e, "worst_class_error": 45.0, "train_seconds": 10.0,
              "train_images": 100, "search_seconds": 24.0, "search_images": 80} for s, e in ((0, 39.0), (1, 40.0))]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = f.table(path, ("la", "ab-dl-la", "ce"))
    # seeds 0 and 1 paired: differences -1 and -2, mean -1.5, standard error 0.5; cost (24/80)/(10/100) = 3
    assert "| ab-dl-la | 2 | 39.50 ± 0.71 | 45.00 ± 0.00 | -1.50 ± 0.50 (n=2) | -5.00 ± 0.00 (n=2) |" in table
    assert table.splitlines()[3].endswith("| 3.00 ± 0.00x |")
    assert "| ce | – | not run |" in table


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


def test_protocol_q_method_lists_keep_each_methods_overrides(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    q = importlib.import_module("protocol_q")
    assert q.split_methods("la,ce@weight_decay=0.002,stage2=wb, ab-dl-la@upper_lr=0.03,interval=10,ab-ws") == [
        "la", "ce@weight_decay=0.002,stage2=wb", "ab-dl-la@upper_lr=0.03,interval=10", "ab-ws"]
    assert q.parse_method("ce@weight_decay=0.002,stage2=tau-norm,freeze_backbone=true") == (
        "ce", {"weight_decay": 0.002, "stage2": "tau-norm", "freeze_backbone": True})
    assert q.parse_method("la") == ("la", {})


def test_subset_zip_gives_protocol_q_the_same_long_tailed_data(tmp_path, monkeypatch):
    import io
    import zipfile

    from PIL import Image

    from ab_plugin.data import create_dataset

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    subset_zip = importlib.import_module("subset_zip")
    g = torch.Generator().manual_seed(0)
    full = tmp_path / "full.zip"
    with zipfile.ZipFile(full, "w") as zf:  # a top folder, unsorted member order, 6 / 3 images per class
        for split, n in (("test", 3), ("train", 6)):
            for cls in ("b", "a", "c"):
                for i in reversed(range(n)):
                    buf = io.BytesIO()
                    pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
                    Image.fromarray(pixels).save(buf, format="PNG")
                    zf.writestr(f"top/{split}/{cls}/{i:02d}.png", buf.getvalue())
    small = tmp_path / "q" / "small.zip"
    assert subset_zip.main([str(full), str(small), "--n-max", "4"]) == 0
    assert len(zipfile.ZipFile(small).namelist()) == 3 * 4 + 3 * 3
    a = create_dataset(f"imagefolder:{full}", imbalance=4, n_max=4)
    b = create_dataset(f"imagefolder:{small}", imbalance=4, n_max=4)
    assert a.train.targets.tolist() == [0] * 4 + [1] * 2 + [2]  # n_i = ceil(4 * 4 ** (-i / 2))
    for split in ("train", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).targets, getattr(b, split).targets)
    assert subset_zip.main([str(tmp_path / "absent.zip"), str(small)]) == 2
