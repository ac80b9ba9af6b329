"""Protocol S3: augmentation throughput, batched per-class policy vs. a torchvision PIL pipeline.

Both sides apply, per class ``y``, the same ops with the same per-class magnitudes: random crop (pad 4) +
horizontal flip, an affine warp (rotate ±30 m degrees, translate 0.3 m, zoom 1 ± 0.3 m, shear atan(0.3 m)),
colour jitter (brightness / contrast / saturation factors 1 ± 0.5 m) and cutout (square of side 0.5 m of
the image). Side A: :class:`ab_plugin.policies.ClassPolicy` on batches of uint8 CPU tensors (converted to
float in ``[0, 1]``, output float). Side B: a per-sample torchvision (v1) PIL pipeline picked by label,
in a ``DataLoader`` with 2 workers (``ToTensor`` output, default collate). Same process, alternating
A/B; the best of ``--repeats`` timed passes is reported (after one warm-up pass each). The policy side is
timed twice, with 1 torch thread (``policy_images_per_s``, ``ratio``: one core against two worker
processes) and with ``--threads`` (default: torch's default; ``policy_nthreads_images_per_s``,
``ratio_nthreads``); intra-op threads degrade badly when other processes load the cores, so the 1-minute
load average is reported too.

Run: ``python benchmarks/augment_throughput.py [--n 4096] [--quick]``; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ab_plugin.policies import ClassPolicy
from ab_plugin.policies._policy import DEFAULT_OPS

__all__ = ["main", "BENCH_OPS"]

BENCH_OPS: tuple[str, ...] = DEFAULT_OPS  # the ops a learned policy uses by default


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _pil_transforms(magnitudes: Sequence[float], probability: float, size: int) -> list[Any]:
    """One torchvision PIL pipeline per class with that class's magnitude ``m`` (same ops as the policy)."""
    from torchvision import transforms as T

    out = []
    for m in magnitudes:
        shear_deg = math.degrees(math.atan(0.3 * m))
        side = 0.5 * m
        out.append(
            T.Compose(
                [
                    T.RandomCrop(size, padding=4),
                    T.RandomHorizontalFlip(),
                    T.RandomApply(
                        [
                            T.RandomAffine(
                                degrees=30.0 * m,
                                translate=(0.3 * m, 0.3 * m),
                                scale=(1.0 - 0.3 * m, 1.0 + 0.3 * m),
                                shear=(-shear_deg, shear_deg, -shear_deg, shear_deg),
                            )
                        ],
                        p=probability,
                    ),
                    T.RandomApply([T.ColorJitter(brightness=0.5 * m)], p=probability),
                    T.RandomApply([T.ColorJitter(contrast=0.5 * m)], p=probability),
                    T.RandomApply([T.ColorJitter(saturation=0.5 * m)], p=probability),
                    T.ToTensor(),
                    T.RandomErasing(p=probability, scale=(side * side, side * side), ratio=(1.0, 1.0), value=0.5),
                ]
            )
        )
    return out


class _PILDataset(Dataset):
    """In-memory PIL images; each sample is transformed by its class's pipeline."""

    def __init__(self, images: list[Any], labels: list[int], transforms: list[Any]) -> None:
        self.images, self.labels, self.transforms = images, labels, transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        y = self.labels[i]
        return self.transforms[y](self.images[i]), y


def _time_policy(policy: ClassPolicy, x: torch.Tensor, y: torch.Tensor, batch_size: int, threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                xb = x[i : i + batch_size].float().div_(255.0)
                out = policy(xb, y[i : i + batch_size])
                assert out.shape == xb.shape
        return x.shape[0] / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def _time_loader(loader: DataLoader, n: int) -> float:
    t0 = time.perf_counter()
    seen = 0
    for xb, _ in loader:
        seen += xb.shape[0]
    assert seen == n
    return n / (time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the S3 throughput comparison and print one JSON line (also returned as a dict).

    Args:
        argv: command-line arguments (``--n``, ``--batch-size``, ``--num-classes``, ``--size``,
            ``--workers``, ``--repeats``, ``--probability``, ``--seed``, ``--quick``).

    Returns:
        dict with ``policy_images_per_s`` (1 thread), ``pil_dataloader_images_per_s``, ``ratio`` (policy /
        PIL), ``policy_nthreads_images_per_s`` / ``ratio_nthreads`` (``policy_threads`` threads), the
        settings, torch version, load average and CPU model.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="images per timed pass")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the PIL side")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per side (best is reported)")
    ap.add_argument("--probability", type=float, default=0.5, help="probability of each op")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the second policy run (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.batch_size, args.repeats = 128, 64, 1

    import PIL.Image

    torch.manual_seed(args.seed)
    c, n, s = args.num_classes, args.n, args.size
    x = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8)
    y = torch.arange(n) % c
    y = y[torch.randperm(n)]
    magnitudes = [0.1 + 0.8 * i / max(1, c - 1) for i in range(c)]  # head weak ... tail strong

    policy = ClassPolicy(c, BENCH_OPS, learnable=False, crop_flip=True)
    policy.load_per_class(
        {op: {"probability": [args.probability] * c, "magnitude": list(magnitudes)} for op in BENCH_OPS}
    )
    images = [PIL.Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]
    dataset = _PILDataset(images, y.tolist(), _pil_transforms(magnitudes, args.probability, s))
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )

    threads = args.threads or torch.get_num_threads()
    _time_policy(policy, x[: args.batch_size], y[: args.batch_size], args.batch_size, 1)  # warm-up
    _time_loader(loader, n)  # warm-up, starts the workers
    rates_1, rates_n, rates_b = [], [], []
    for _ in range(args.repeats):
        rates_1.append(_time_policy(policy, x, y, args.batch_size, 1))
        rates_n.append(_time_policy(policy, x, y, args.batch_size, threads))
        rates_b.append(_time_loader(loader, n))
    del loader
    a1, an, b = max(rates_1), max(rates_n), max(rates_b)
    result = {
        "protocol": "S3",
        "policy_images_per_s": round(a1, 1),
        "pil_dataloader_images_per_s": round(b, 1),
        "ratio": round(a1 / b, 3),
        "policy_threads": threads,
        "policy_nthreads_images_per_s": round(an, 1),
        "ratio_nthreads": round(an / b, 3),
        "n_images": n,
        "batch_size": args.batch_size,
        "image_size": s,
        "num_classes": c,
        "ops": ["crop_flip", *BENCH_OPS],
        "probability": args.probability,
        "workers": args.workers,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "quick": bool(args.quick),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
