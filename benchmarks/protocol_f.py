"""Protocol F (benchmarks/PROTOCOLS.md): transfer to a long tail on 2 CPU cores.

ResNet-32 is pretrained (CE) on five balanced CIFAR-10 classes (airplane ... deer, 1000 images each), then
fine-tuned on the other five (dog ... truck) long-tailed with rho 100 and n_max 500 (730 images), tested on
their balanced 5000 test images. Full-network rows start from ``--pretrained-file``; the ``@freeze_backbone=true``
rows train only the classifier on the frozen backbone. The pretrained checkpoint is cached outside the
repository (``--cache``, file name keyed by its settings) and reused. Same job runner, resume and output format
as protocol Q (:mod:`protocol_q`); the table adds paired per-seed differences against LA of the same mode.

    python benchmarks/protocol_f.py --threads 1 --methods ce,la,ab-dl-la --seeds 0,1,2
    python benchmarks/protocol_f.py --threads 1 --methods la@freeze_backbone=true --seeds 0
    python benchmarks/protocol_f.py --table benchmarks/results/f.jsonl
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol_q import ROOT, Protocol, finished_rows, main  # noqa: E402

from ab_plugin.data import DatasetBundle, ImageData, create_dataset, long_tail_counts  # noqa: E402
from ab_plugin.data._datasets import channel_stats  # noqa: E402

#: CIFAR-10 classes the backbone is pretrained on, and those it is fine-tuned on (head class first).
SOURCE = ("airplane", "automobile", "bird", "cat", "deer")
TARGET = ("dog", "frog", "horse", "ship", "truck")
#: Pretraining: Q's from-scratch recipe, 1000 images per class and 30 epochs (about 10 min on one core).
PRETRAIN = {"per_class": 1000, "recipe": dict(epochs=30, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                              warmup_epochs=2, schedule="cosine", augment="fixed"), "seed": 0}
FROZEN = "@freeze_backbone=true"
MODES = ("", FROZEN)


def select(data: ImageData, names: tuple[str, ...], counts: list[int] | None = None) -> ImageData:
    """The images of classes ``names``, relabelled ``0 .. K-1`` in that order, the first ``counts[k]`` of class
    ``k`` (file-name order, as the long tail of BENCHMARKS.md) or all of them. ``[N, 3, H, W] -> [M, 3, H, W]``."""
    index, targets = [], []
    for k, name in enumerate(names):
        idx = torch.nonzero(data.targets == data.classes.index(name)).flatten()
        idx = idx[: counts[k]] if counts is not None else idx
        index.append(idx)
        targets.append(torch.full((len(idx),), k, dtype=torch.int64))
    index_all = torch.cat(index)
    return ImageData(data.images[index_all], torch.cat(targets), list(names))


def five_classes(zip_path: str, names: tuple[str, ...], counts: list[int], test_per_class: int = 0) -> DatasetBundle:
    """Training images ``counts[k]`` of class ``names[k]`` and the balanced test images of ``names`` (the first
    ``test_per_class`` of each when > 0), normalised with the training images' own channel statistics."""
    # a balanced cut of the ten classes decodes only the files kept; the long tail is cut here, over five
    full = create_dataset(f"imagefolder:{zip_path}", imbalance=1.0, n_max=max(counts))
    train = select(full.train, names, counts)
    test = select(full.test, names, [test_per_class] * len(names) if test_per_class else None)
    mean, std = channel_stats(train.images)
    meta = {"source": zip_path, "classes": list(names), "counts": counts}
    return DatasetBundle(f"cifar10-f:{'+'.join(names)}", train, test, mean, std, meta)  # type: ignore[arg-type]


def target_bundle(args: dict[str, Any]) -> DatasetBundle:
    """The fine-tuning data of a job: ``TARGET`` long-tailed (``args["imbalance"]``, ``args["n_max"]``)."""
    counts = long_tail_counts(args["n_max"], len(TARGET), args["imbalance"])
    return five_classes(args["data"], TARGET, counts, args.get("test_per_class", 0))


def pretrain_settings(args: dict[str, Any]) -> dict[str, Any]:
    """Everything the pretrained checkpoint depends on (its cache key): the backbone of the fine-tuning recipe,
    the pretraining data and recipe, the zip's size."""
    pre = args["pretrain"]
    return {"backbone": args["recipe"]["backbone"], "classes": list(SOURCE), "per_class": pre["per_class"],
            "recipe": pre["recipe"], "seed": pre["seed"], "test_per_class": args.get("test_per_class", 0),
            "zip_bytes": Path(args["data"]).stat().st_size}


def pretrained_checkpoint(args: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The cached pretrained state dict for ``args`` (trained and saved on a cache miss) and its record
    (settings, source test accuracy %, seconds)."""
    from ab_plugin import Config
    from ab_plugin.io import atomic_write
    from ab_plugin.search import build_model, train_baseline

    settings = pretrain_settings(args)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(args["cache"]) / f"{settings['backbone']}_c5_{key}.pt"
    record_path = path.with_suffix(".json")
    if path.exists() and record_path.exists():
        return path, json.loads(record_path.read_text())
    torch.set_num_threads(args["threads"])
    pre = args["pretrain"]
    bundle = five_classes(args["data"], SOURCE, [pre["per_class"]] * len(SOURCE), settings["test_per_class"])
    cfg = Config(dataset="imagefolder", backbone=settings["backbone"], seed=pre["seed"], device=args["device"],
                 amp=args["amp"], **pre["recipe"])
    model = build_model(cfg, len(SOURCE), "ce")
    t0 = time.perf_counter()
    res = train_baseline("ce", bundle, cfg, model=model)
    assert res.test_metrics is not None
    record = {"settings": settings, "source_test_accuracy": 100 * res.test_metrics["accuracy"],
              "train_seconds": res.seconds, "wall_seconds": time.perf_counter() - t0, "path": str(path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save(state, f))
    atomic_write(record_path, lambda f: f.write(json.dumps(record, indent=1)), mode="w", encoding="utf-8")
    return path, record


def prepare(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pretrain (or reuse the cache) and point every job's recipe at the checkpoint."""
    path, record = pretrained_checkpoint(args)
    return {**args, "recipe": {**args["recipe"], "pretrained_file": str(path)}}, {"pretrained": record}


def _mean_se(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:+.2f}"
    return f"{statistics.mean(vals):+.2f} ± {statistics.stdev(vals) / math.sqrt(len(vals)):.2f}"


def _mean_sd(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def reference(method: str) -> str:
    """LA of the same mode: ``ab-dl-la@freeze_backbone=true`` -> ``la@freeze_backbone=true``."""
    _, _, rest = method.partition("@")
    return "la" + (f"@{rest}" if rest else "")


def paired(rows: list[dict[str, Any]], ref: list[dict[str, Any]], key: str) -> list[float]:
    """Per-seed differences ``row[key] - ref[key]`` over the seeds both have (percentage points)."""
    by_seed = {r["seed"]: r[key] for r in ref}
    return [r[key] - by_seed[r["seed"]] for r in rows if r["seed"] in by_seed]


def search_cost(r: dict[str, Any]) -> float:
    """Search seconds per search-split image over retrain seconds per training image (same epochs): what the
    search costs per training image, as a multiple of plain training."""
    return (r["search_seconds"] / r["search_images"]) / (r["train_seconds"] / r["train_images"])


def table(path: Path, methods: tuple[str, ...]) -> str:
    """Markdown table: mean ± std over seeds; paired differences against LA of the same mode, mean ± standard
    error over the shared seeds (negative: fewer errors than LA)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in finished_rows(path):
        rows.setdefault(r["method"], []).append(r)
    lines = ["| method | seeds | balanced error % | worst-class error % | Δ balanced vs LA | Δ worst vs LA "
             "| train s | search s | search cost / image |", "|---|---|---|---|---|---|---|---|---|"]
    for m in list(methods) + sorted(set(rows) - set(methods)):
        if m not in rows:
            lines.append(f"| {m} | – | not run | not run | not run | not run | not run | not run | not run |")
            continue
        rs, ref = rows[m], rows.get(reference(m), [])
        cells = [_mean_sd([r[k] for r in rs]) for k in ("balanced_error", "worst_class_error")]
        for k in ("balanced_error", "worst_class_error"):
            d = paired(rs, ref, k) if m != reference(m) else []
            cells.append(_mean_se(d) + f" (n={len(d)})" if d else "–")
        cells.append(_mean_sd([r["train_seconds"] for r in rs]))
        searched = [r for r in rs if "search_seconds" in r]
        cells.append(_mean_sd([r["search_seconds"] for r in searched]) if searched else "–")
        cells.append(f"{_mean_sd([search_cost(r) for r in searched])}x" if searched else "–")
        lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BASE_METHODS = ("ce", "la", "ab-dl-la")
F = Protocol(
    name="F",
    n_max=500,
    recipe=dict(backbone="resnet32", epochs=30, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-4,
                warmup_epochs=1, schedule="cosine", augment="fixed"),
    methods=tuple(m + mode for mode in MODES for m in BASE_METHODS),
    out="f.jsonl",
    bundle=target_bundle,
    prepare=prepare,
    table=table,
    quick={"pretrain": {"per_class": 40, "recipe": dict(PRETRAIN["recipe"], epochs=1, batch_size=32,
                                                        warmup_epochs=0), "seed": 0}},
    cache=str(ROOT.parent / "f_pretrained"),
    job_args={"pretrain": PRETRAIN},
)

if __name__ == "__main__":
    sys.exit(main(protocol=F, doc=__doc__))
