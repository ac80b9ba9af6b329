"""Long-tail profiles, long-tailed subsampling and stratified train/validation splits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch

from ._imagefolder import ImageFolderIndex
from ._types import ImageData

S = TypeVar("S", ImageData, ImageFolderIndex)

__all__ = ["LONG_TAIL_PROFILES", "long_tail_counts", "make_long_tailed", "split_per_class"]

#: Names accepted by :func:`long_tail_counts`.
LONG_TAIL_PROFILES: tuple[str, ...] = ("exp", "step", "exp_floor")


def _ceil(x: float) -> int:
    """``ceil`` that ignores float noise: ``ceil(10.000000000000002) == 10``."""
    r = round(x)
    return int(r) if abs(x - r) <= 1e-9 * max(1.0, abs(x)) else math.ceil(x)


def _floor(x: float) -> int:
    r = round(x)
    return int(r) if abs(x - r) <= 1e-9 * max(1.0, abs(x)) else math.floor(x)


def long_tail_counts(n_max: int, num_classes: int, imbalance: float, profile: str = "exp") -> list[int]:
    """Per-class sample counts of a long-tailed dataset, head class first.

    Profiles (``C = num_classes``, ``rho = imbalance``, ``i = 0 .. C-1``):

    - ``"exp"``: ``n_i = ceil(n_max * rho ** (-i / (C - 1)))`` (CIFAR-LT of LDAM-DRW / AutoBalance as
      written in BENCHMARKS.md; ``n_max=1000, rho=100`` gives ``[1000, 600, 360, 216, 130, 78, 47, 28,
      17, 10]``).
    - ``"exp_floor"``: the same with ``floor``, which is what the LDAM-DRW release computes
      (``int(...)``; ``n_max=5000, rho=100`` gives its 12,406 CIFAR-10-LT images, ``"exp"`` gives 12,414).
    - ``"step"``: the first ``C // 2`` classes keep ``n_max``, the others ``ceil(n_max / rho)``.

    ``imbalance == 1`` gives ``n_max`` for every class.

    Returns:
        ``C`` ints, non-increasing, the first equal to ``n_max``.
    """
    if int(n_max) != n_max or n_max < 1:
        raise ValueError(f"n_max must be an integer >= 1, got {n_max!r}: pass the head-class sample count")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not math.isfinite(imbalance) or imbalance < 1:
        raise ValueError(
            f"imbalance must be >= 1 (head count / tail count), got {imbalance!r}: "
            "use e.g. 100 for CIFAR-LT, 1 for balanced"
        )
    if profile not in LONG_TAIL_PROFILES:
        known = ", ".join(LONG_TAIL_PROFILES)
        raise ValueError(f"unknown long-tail profile {profile!r}: choose one of {known}")
    n_max, num_classes = int(n_max), int(num_classes)
    if imbalance == 1 or num_classes == 1:
        return [n_max] * num_classes
    if profile == "step":
        tail = max(1, _ceil(n_max / imbalance))
        head = num_classes // 2
        return [n_max] * head + [tail] * (num_classes - head)
    rnd = _ceil if profile == "exp" else _floor
    return [max(1, rnd(n_max * imbalance ** (-i / (num_classes - 1)))) for i in range(num_classes)]


def _rank_within_class(targets: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """int64 ``[N]``: position of each sample among the samples of its class.

    Positions follow ``order`` (a permutation of ``0..N-1``; default: dataset order).
    """
    n = targets.shape[0]
    if order is None:
        order = torch.arange(n)
    t = targets[order]
    by_class = torch.argsort(t, stable=True)
    sorted_t = t[by_class]
    counts = torch.bincount(sorted_t, minlength=int(targets.max()) + 1 if n else 0)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(n) - starts[sorted_t]
    rank = torch.empty(n, dtype=torch.int64)
    rank[order[by_class]] = rank_sorted
    return rank


def make_long_tailed(data: ImageData, counts: Sequence[int]) -> ImageData:
    """Keep the first ``counts[c]`` samples of each class ``c``, in the existing order.

    For ImageFolder trees the existing order is the sorted file-name order, so this reproduces the
    "first ``n_i`` files" rule of CIFAR-LT. The relative order of the kept samples is unchanged.

    Args:
        data: ``N`` samples of ``C`` classes.
        counts: ``C`` non-negative ints.

    Returns:
        ``ImageData`` with ``sum(counts)`` samples.
    """
    if len(counts) != data.num_classes:
        raise ValueError(
            f"make_long_tailed needs one count per class ({data.num_classes}), got {len(counts)}"
        )
    want = torch.as_tensor([int(c) for c in counts], dtype=torch.int64)
    if (want < 0).any():
        raise ValueError("make_long_tailed: counts must be >= 0")
    have = data.class_counts()
    short = (have < want).nonzero().flatten().tolist()
    if short:
        c = short[0]
        raise ValueError(
            f"class {data.classes[c]!r} has {int(have[c])} samples but {int(want[c])} were asked: "
            "lower n_max (or the counts)"
        )
    targets = data.targets.cpu()
    keep = _rank_within_class(targets) < want[targets]
    return data.subset(keep.nonzero().flatten())


def split_per_class(data: S, val_fraction: float = 0.2, seed: int = 0, min_val: int = 1) -> tuple[S, S]:
    """Stratified random train/validation split of in-memory images or of a file list.

    Each class ``c`` with ``n_c`` samples gives ``max(round(val_fraction * n_c), min(min_val, n_c // 2))``
    (half rounded up), clipped to ``[1, n_c - 1]``, randomly chosen samples to validation and the rest to
    training, so every class is on both sides and a tail class keeps at least half its samples for
    training. Both parts keep the original sample order. Deterministic for a ``seed`` (CPU generator,
    independent of the device of ``data``).

    Returns:
        ``(train, val)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    counts = data.class_counts()
    small = ((counts < 2) & (counts > 0)).nonzero().flatten().tolist()
    if small:
        c = small[0]
        raise ValueError(
            f"class {data.classes[c]!r} has {int(counts[c])} sample: a train/validation split needs >= 2 "
            "per class; lower the imbalance (or raise n_max) so that every class keeps at least 2"
        )
    n_val = torch.floor(counts.double() * val_fraction + 0.5).long()
    n_val = torch.maximum(n_val, torch.clamp(counts // 2, max=int(min_val)))
    n_val = torch.minimum(torch.clamp(n_val, min=1), torch.clamp(counts - 1, min=0))
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(data), generator=gen)
    targets = data.targets.cpu()
    is_val = _rank_within_class(targets, order) < n_val[targets]
    return data.subset((~is_val).nonzero().flatten()), data.subset(is_val.nonzero().flatten())
