"""Protocol S (../shared/BENCHMARKS.md): search overhead, memory and hyper-step scaling.

    python benchmarks/protocol_s.py s1 --rows plain,head,head-paper,cg,neumann,unrolled --epochs 4
    python benchmarks/protocol_s.py s4 --classes 10,100,1000,8142

s1: each row runs in its own subprocess, back to back on the same machine, on CIFAR-10-LT (protocol Q
data) with ResNet-32 and batch 128; the upper level is active from the first epoch. Reported: median
epoch time after the first epoch, its ratio to the plain-CE row, peak memory (RSS on CPU, max
allocated on CUDA) and its ratio. ``whole`` rows run a full search schedule (40 % warm-up) against
plain training of the same epochs. s4: time of one hyper-step of each engine against the number of
classes, per class and with a 3-term frequency dictionary, on synthetic data (see ``s4``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from protocol_q import machine, revision  # noqa: E402

# row -> (engine or None for plain CE, Config overrides). The paper's schedule: a hyper-step every
# 20 iterations from 10 training and 10 validation batches, 5 Neumann terms.
ROWS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "plain": (None, {}),
    "head": ("head", {"interval": 5}),
    "head-paper": ("head", {"interval": 20}),
    # learned per-class augmentation (PDA): A's hypergradient from the head only, or plus the backbone term
    "head-pda": ("head", {"interval": 5, "augment": "learned", "augment_hypergrad": "head"}),
    "head-pda-backbone": ("head", {"interval": 5, "augment": "learned", "augment_hypergrad": "backbone"}),
    # the augmentation bank: the newest batch at all 6 strengths per hyper-step (no graph), or plus the backbone
    # term through all of them
    "head-bank": ("head", {"interval": 5, "augment": "bank", "augment_hypergrad": "head"}),
    "head-bank-backbone": ("head", {"interval": 5, "augment": "bank", "augment_hypergrad": "backbone"}),
    "cg": ("cg", {"interval": 20, "engine_options": {"iters": 5}}),
    "neumann": ("neumann", {"interval": 20, "engine_options": {"terms": 5, "step": 0.1}}),
    "unrolled": ("unrolled", {"interval": 20, "engine_options": {"steps": 1}}),
}


def _row(name: str, a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ab_plugin import AutoBalance, Config, train_baseline
    from ab_plugin.data import create_dataset

    device = a.device
    bundle = create_dataset(f"imagefolder:{a.data}", imbalance=100, n_max=a.n_max)
    engine, over = ROWS[name.removeprefix("whole-")]
    cfg = Config(dataset="imagefolder", backbone=a.backbone, epochs=a.epochs, batch_size=a.batch_size,
                 warmup_epochs=1, device=device, upper_start=a.upper_start, hyper_batches=10, seed=0, **over)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if engine is None:
        res = train_baseline("ce", bundle, cfg)
    else:
        res = AutoBalance(cfg.replace(engine=engine)).fit(bundle)
    secs = [h["seconds"] for h in res.history]
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"row": name, "epoch_seconds": secs, "median_epoch": statistics.median(secs[1:] or secs),
            "total_seconds": sum(secs), "peak_bytes": peak, "hyper_steps": res.hyper_steps}


def s1(a: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [r.strip() for r in a.rows.split(",")]
    out = []
    for name in rows:
        cmd = [sys.executable, __file__, "_row", name, "--epochs", str(a.epochs), "--device", a.device,
               "--data", a.data, "--n-max", str(a.n_max), "--backbone", a.backbone, "--batch-size", str(a.batch_size)]
        if name.startswith("whole-"):
            cmd += ["--upper-start", "0.4"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            out.append({"row": name, "error": r.stderr.strip().splitlines()[-1] if r.stderr else "failed"})
        else:
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(out[-1]), flush=True)
    base = next((r for r in out if r["row"] == "plain" and "error" not in r), None)
    for r in out:
        if base and "error" not in r:
            r["epoch_ratio"] = r["median_epoch"] / base["median_epoch"]
            r["total_ratio"] = r["total_seconds"] / base["total_seconds"]
            r["memory_ratio"] = r["peak_bytes"] / base["peak_bytes"]
    return out


# S4 engine settings: the S1 rows' (the paper's 5 Neumann terms; 5 CG iterations; one unrolled step)
S4_ENGINES: dict[str, dict[str, Any]] = {"head": {}, "neumann": {"terms": 5, "step": 0.1}, "cg": {"iters": 5},
                                         "unrolled": {"steps": 1}}


def s4(a: argparse.Namespace) -> list[dict[str, Any]]:
    """One hyper-step vs the number of classes, on synthetic 64-d inputs: 10 training and 10 validation
    batches of 128. ``head`` works on them as cached features of a linear classifier; the full-network
    engines (neumann, cg, unrolled) differentiate through a 64-256-C MLP, so the class-dependent part of
    their cost shows instead of a backbone's fixed cost."""
    import torch

    from ab_plugin.hypergrad import FeatureProblem, ModelProblem, create_engine
    from ab_plugin.losses import create_loss, create_sharing
    from ab_plugin.objectives import balanced_ce

    torch.manual_seed(0)
    out = []
    for c in [int(x) for x in a.classes.split(",")]:
        counts = torch.clamp((1000 * torch.tensor(100.0) ** (-torch.arange(c) / max(1, c - 1))).ceil(), min=2).long()
        train = [(torch.randn(128, 64), torch.randint(0, c, (128,))) for _ in range(10)]
        val = [(torch.randn(128, 64), torch.randint(0, c, (128,))) for _ in range(10)]
        for engine_name in a.engines.split(","):
            engine = create_engine(engine_name, **S4_ENGINES[engine_name])
            for sharing in ("per_class", "poly:3"):
                loss = create_loss("autobalance", counts, init="la", sharing=create_sharing(sharing, counts))
                hparams, wd = loss.hparameters(), 5e-4
                if engine.problem is FeatureProblem:
                    clf = torch.nn.Linear(64, c)
                    val_feats = [(torch.cat([v[0] for v in val]), torch.cat([v[1] for v in val]))]
                    problem = FeatureProblem(clf, loss, balanced_ce, hparams, train, val_feats, wd)
                else:
                    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, c))
                    problem = ModelProblem(
                        model, loss, balanced_ce, hparams, train, val,
                        train_forward=lambda x, y, m=None, net=model: (net if m is None else m)(x),
                        val_forward=lambda x, m=None, net=model: (net if m is None else m)(x),
                        weight_decay=wd, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
                engine(problem)  # warm-up
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    engine(problem)
                    times.append(time.perf_counter() - t0)
                r = {"classes": c, "engine": engine_name, "sharing": sharing,
                     "hparams": sum(p.numel() for p in loss.hparameters()), "seconds": statistics.median(times)}
                out.append(r)
                print(json.dumps(r), flush=True)
    return out


def s3(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Batched per-class policy vs the PIL / DataLoader pipeline (``benchmarks/augment_throughput.py``)."""
    from augment_throughput import main as bench

    return [bench(["--quick"] if a.quick else ["--n", "8192", "--repeats", "2"])]


def markdown(what: str, rows: list[dict[str, Any]]) -> str:
    """The markdown table of one part's result rows."""
    if what == "s1":
        lines = ["| row | s / epoch | epoch ratio | total ratio | peak MiB | memory ratio | hyper-steps |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['row']} | failed: {r['error']} | | | | | |")
                continue
            er, tr, mr = (f"{r[k]:.2f}" if k in r else "–" for k in ("epoch_ratio", "total_ratio", "memory_ratio"))
            mib = r["peak_bytes"] / 2**20
            lines.append(f"| {r['row']} | {r['median_epoch']:.3f} | {er} | {tr} | {mib:.0f} | {mr} | "
                         f"{r['hyper_steps']} |")
    elif what == "s3":
        lines = ["| pipeline | images/s | ratio |", "|---|---|---|"]
        for r in rows:
            n_threads, n_rate = r["policy_threads"], r["policy_nthreads_images_per_s"]
            pil = r["pil_dataloader_images_per_s"]
            lines += [f"| ClassPolicy, batched, 1 thread | {r['policy_images_per_s']:.0f} | {r['ratio']:.2f} |",
                      f"| ClassPolicy, batched, {n_threads} threads | {n_rate:.0f} | {r['ratio_nthreads']:.2f} |",
                      f"| PIL per sample, DataLoader ({r['workers']} workers) | {pil:.0f} | 1.00 |"]
    else:
        lines = ["| classes | engine | sharing | hparams | s / hyper-step |", "|---|---|---|---|---|"]
        lines += [f"| {r['classes']} | {r['engine']} | {r['sharing']} | {r['hparams']} | {r['seconds']:.4f} |"
                  for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["s1", "s3", "s4", "all", "_row"], help="a part of protocol S, or all of them")
    p.add_argument("row", nargs="?")
    p.add_argument("--rows", default="plain,head,head-paper,cg,unrolled,whole-plain,whole-head")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpg.zip"))
    p.add_argument("--n-max", type=int, default=1000)
    p.add_argument("--backbone", default="resnet32")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke version (seconds): sets --n-max 200 --backbone resnet20 --batch-size 32 --epochs 2")
    p.add_argument("--upper-start", type=float, default=0.0)
    p.add_argument("--classes", default=None, help="s4: comma list [default: 10,100,1000,8142; quick: 10,50]")
    p.add_argument("--engines", default="head,neumann,cg,unrolled", help="s4: comma list of engines")
    p.add_argument("--out", default=None, help="append the results (JSON lines) to this file")
    a = p.parse_args(argv)
    if a.quick:
        a.n_max, a.backbone, a.batch_size, a.epochs = 200, "resnet20", 32, 2
    a.classes = a.classes or ("10,50" if a.quick else "10,100,1000,8142")
    if a.what == "_row":
        print(json.dumps(_row(a.row, a)))
        return 0
    parts = ["s1", "s3", "s4"] if a.what == "all" else [a.what]
    if "s1" in parts and not Path(a.data).exists():
        print(f"error: {a.data} not found: pass --data pointing at cifar10-jpg.zip", file=sys.stderr)
        return 2
    meta = {"machine": machine(), "revision": revision(), "date": time.strftime("%Y-%m-%d"),
            "command": " ".join([sys.executable, *sys.argv]), "threads": os.environ.get("OMP_NUM_THREADS")}
    for part in parts:
        results = {"s1": s1, "s3": s3, "s4": s4}[part](a)
        if a.out:
            with open(a.out, "a") as f:
                for r in results:
                    f.write(json.dumps({"protocol": part.upper(), **meta, **r}) + "\n")
        print(json.dumps({"meta": {"protocol": part.upper(), **meta}, "results": results}, indent=1))
        print(markdown(part, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
