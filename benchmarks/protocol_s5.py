"""Protocol S5 (../shared/BENCHMARKS.md): the same search on 1 and on 2 ranks, and the ImageNet-LT-shaped step.

    python benchmarks/protocol_s5.py ranks --epochs 4          # 1 process vs torchrun --nproc_per_node 2
    python benchmarks/protocol_s5.py imagenet --images 192     # one hyper-step vs one plain step, ResNet-50

ranks: ``ab-plugin search`` on the embedded digits-lt data, once as one process and once under the real
``torchrun`` with 2 ranks (gloo on CPU, NCCL on GPUs), same global batch and seed. Reported: the hyper-steps
taken, the largest relative difference of each learned α vector (``max|α₂ − α₁| / max|α₁|``) and images per
second per rank over the search stage (its epochs' wall time, validation passes and hyper-steps included).
Augmentation is off by default: the ranks draw their own crops, so with it on the two runs also differ by
their random numbers; what remains is BatchNorm, whose batch statistics are each rank's half-batch.

imagenet: 1,000 classes, 224 px random images, timm ``resnet50`` (no pretrained weights), the Trainer's
own lower step and head-engine hyper-step timed from its callbacks: a plain step is a lower
step without a hyper-step; a hyper-step's time is its step's time minus the median plain step. The
engine's solve alone is timed again on the last hyper-step's cached problem (median of 3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from protocol_q import machine, revision  # noqa: E402

from ab_plugin.callbacks import TrainerCallback  # noqa: E402


def _search(out: Path, ranks: int, a: argparse.Namespace) -> dict[str, Any]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    launch = torchrun if ranks > 1 else [sys.executable]
    cmd = [*launch, "-m", "ab_plugin", "search", "--backbone", a.backbone, "--epochs", str(a.epochs),
           "--batch-size", str(a.batch_size), "--interval", str(a.interval), "--upper-start", "0.25",
           "--augment", a.augment, "--engine", a.engine, "--device", a.device, "--quiet", "--compare", "",
           "--no-retrain", "--format", "json", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout)


def ranks(a: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: _search(Path(tmp) / f"r{n}", n, a) for n in (1, 2)}
    out = []
    for n, s in runs.items():
        st = s["stages"]["search"]
        images = st["steps"] * a.batch_size / n  # each rank takes 1/n of every global batch
        out.append({"ranks": n, "hyper_steps": st["hyper_steps"], "seconds": st["seconds"],
                    "images_per_s_per_rank": images / st["seconds"], "alpha": s["alpha"],
                    "test_balanced_error": s["balanced_error"]})
    one, two = runs[1]["alpha"], runs[2]["alpha"]
    out[1]["alpha_max_rel_diff"] = {
        k: max(abs(x - y) for x, y in zip(one[k], two[k], strict=True)) / max(abs(x) for x in one[k])
        for k in one}
    return out


class _Clock(TrainerCallback):
    """Trainer callbacks: wall time of each lower step, and which steps carried a hyper-step."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.steps: list[tuple[float, bool]] = []
        self._hyper = False

    def on_hyper_step(self, trainer, step, norm, skipped) -> None:
        self._hyper = True

    def on_step_end(self, trainer, step, loss) -> None:
        now = time.perf_counter()
        self.steps.append((now - self.last, self._hyper))
        self.last, self._hyper = now, False

    def on_epoch_start(self, trainer, epoch) -> None:
        self.last = time.perf_counter()


def imagenet(a: argparse.Namespace) -> list[dict[str, Any]]:
    import timm
    import torch

    from ab_plugin import Config
    from ab_plugin.data import ImageData
    from ab_plugin.hypergrad import create_engine
    from ab_plugin.losses import ParametricCrossEntropy
    from ab_plugin.objectives import balanced_ce
    from ab_plugin.trainer import HyperSetup, Trainer

    torch.manual_seed(0)
    c = 1000
    classes = [str(i) for i in range(c)]

    def images(n: int, seed: int) -> ImageData:
        # long-tailed labels over 1,000 classes: class k is drawn with probability ∝ 1 / (k + 1)
        gen = torch.Generator().manual_seed(seed)
        labels = torch.multinomial(1.0 / torch.arange(1, c + 1), n, replacement=True, generator=gen)
        return ImageData(torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=gen), labels, classes)

    # a few hundred images cannot give every one of 1,000 classes a validation image, so the splits are drawn
    # apart instead of by the search's per-class split
    train, val = images(a.images * 3 // 4, 1), images(a.images // 4, 2)
    cfg = Config(backbone="resnet50", epochs=1, batch_size=a.batch_size, interval=a.interval,
                 hyper_batches=a.hyper_batches, upper_start=0.0, warmup_epochs=0, augment="none", engine="head",
                 device=a.device, seed=0)
    clock = _Clock()
    model = timm.create_model("resnet50", pretrained=False, num_classes=c)
    loss = ParametricCrossEntropy(c, learn=("logit_bias", "logit_scale"))
    trainer = Trainer(model, loss, train, cfg, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      upper=HyperSetup(create_engine("head"), balanced_ce, val), callbacks=[clock])
    t0 = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - t0
    plain = [t for t, h in clock.steps[1:] if not h]  # the first step warms up
    hyper = [t for t, h in clock.steps if h]
    step = statistics.median(plain)
    hyper_extra = statistics.median(t - step for t in hyper)
    # the solve alone, on the last hyper-step's cached features: the class-dependent part of a hyper-step
    # (the rest, refreshing validation features, costs forward passes whatever the number of classes)
    solves = []
    for _ in range(3):
        t1 = time.perf_counter()
        trainer.bilevel.hypergradient(trainer.pipeline, step=trainer.state.step)
        solves.append(time.perf_counter() - t1)
    return [{"classes": c, "image_px": 224, "backbone": "resnet50", "engine": "head",
             "train_images": len(train), "val_images": len(val),
             "batch_size": a.batch_size, "hyper_batches": a.hyper_batches,
             "interval": a.interval, "plain_step_s": step, "hyper_step_s": hyper_extra,
             "head_solve_s": statistics.median(solves),
             "hyper_over_plain": hyper_extra / step, "plain_steps": len(plain), "hyper_steps": len(hyper),
             "epoch_s": total}]


def markdown(what: str, rows: list[dict[str, Any]]) -> str:
    if what == "ranks":
        lines = ["| ranks | hyper-steps | search s | images/s per rank | max rel. diff of α vs 1 rank |",
                 "|---|---|---|---|---|"]
        for r in rows:
            diff = ", ".join(f"{k} {v:.2e}" for k, v in r.get("alpha_max_rel_diff", {}).items()) or "–"
            lines.append(f"| {r['ranks']} | {r['hyper_steps']} | {r['seconds']:.1f} | "
                         f"{r['images_per_s_per_rank']:.1f} | {diff} |")
    else:
        lines = ["| classes, px, backbone | engine | batch | plain step s | hyper-step s | of which solve s | ratio |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['classes']}, {r['image_px']}, {r['backbone']} | {r['engine']} | {r['batch_size']} | "
                  f"{r['plain_step_s']:.3f} | {r['hyper_step_s']:.3f} | {r['head_solve_s']:.3f} | "
                  f"{r['hyper_over_plain']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["ranks", "imagenet", "all"])
    p.add_argument("--epochs", type=int, default=4, help="ranks: search epochs")
    p.add_argument("--backbone", default="resnet20", help="ranks: backbone")
    p.add_argument("--batch-size", type=int, default=None, help="global batch [ranks: 64, imagenet: 8]")
    p.add_argument("--interval", type=int, default=None, help="steps between hyper-steps [ranks: 2, imagenet: 4]")
    p.add_argument("--augment", default="none", help="ranks: augmentation (none | fixed)")
    p.add_argument("--engine", default="head", help="ranks: hypergradient engine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="ranks: OMP threads per process")
    p.add_argument("--images", type=int, default=192, help="imagenet: synthetic images (a quarter is validation)")
    p.add_argument("--hyper-batches", type=int, default=4, help="imagenet: batches per hyper-step")
    p.add_argument("--out", default=None, help="write the results (JSON) to this file")
    a = p.parse_args(argv)
    meta = {"machine": machine(), "revision": revision(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join([sys.executable, *sys.argv]), "threads": os.environ.get("OMP_NUM_THREADS")}
    report: dict[str, Any] = {"meta": {"protocol": "S5", **meta}}
    for part in (["ranks", "imagenet"] if a.what == "all" else [a.what]):
        defaults = {"ranks": (64, 2), "imagenet": (8, 4)}[part]
        b = argparse.Namespace(**{**vars(a), "batch_size": a.batch_size or defaults[0],
                                  "interval": a.interval or defaults[1]})
        report[part] = {"ranks": ranks, "imagenet": imagenet}[part](b)
        print(markdown(part, report[part]), flush=True)
    text = json.dumps(report, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
