"""CUDA's level-of-learning curriculum, as pure functions on integer levels and trial outcomes.

CUDA (Ahn et al., "CUDA: Curriculum of Data Augmentation for Long-tailed Recognition", ICLR 2023) keeps one
augmentation strength level ``L_c`` per class. Before each epoch its code
(``github.com/sumyeongahn/CUDA_LTR``, ``cifar/train/train_fn/base.py`` ``update_score_base``, lines 42-95)
tests every class at every strength ``s = 0 .. L_c``: ``T * (s + 1)`` of the class's training images, drawn
with replacement (``random.choices``), augmented at strength ``s`` and classified in eval mode. The class
goes one level up when the accuracy at every tested strength exceeds ``γ`` (strictly, ``ratio > accept_rate``,
line 84), else one level down, clamped to ``[0, max_level]`` (line 95). Defaults from ``cifar/utils/config.py``
and ``cifar/datasets/cifar100.py`` (lines 86-101): ``γ = 0.6`` (``--accept_rate``), ``T = 10``
(``--num_test``), levels ``0 .. 10`` (``max_state = 11``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GAMMA", "TRIALS", "MAX_LEVEL", "update_levels", "trial_plan", "trial_accuracies"]

GAMMA: float = 0.6
"""Accuracy a class must exceed at every tested strength to go one level up (CUDA's ``--accept_rate``)."""

TRIALS: int = 10
"""``T``: images per class tested at strength ``s`` are ``T * (s + 1)`` (CUDA's ``--num_test``)."""

MAX_LEVEL: int = 10
"""Highest strength level (CUDA's ``max_state - 1`` with ``max_mag = max_ops = 10``)."""


def update_levels(levels: Tensor, accuracies: Tensor, gamma: float = GAMMA, max_level: int = MAX_LEVEL) -> Tensor:
    """One curriculum step: a class whose accuracy exceeds ``gamma`` at every strength ``0 .. L_c`` goes up a
    level, any other class goes down one; the result is clamped to ``[0, max_level]``.

    Args:
        levels: int64 ``[C]`` current levels ``L_c`` in ``[0, max_level]``.
        accuracies: float ``[C, K]`` (``K > max(levels)``) accuracy (fraction) of class ``c`` at strength
            ``s`` in column ``s``; only columns ``0 .. L_c`` of row ``c`` are read. A NaN (untested, e.g. a
            class without training images) counts as a failure.
        gamma: threshold in ``[0, 1)``; passing needs ``accuracy > gamma``.
        max_level: highest level.

    Returns:
        int64 ``[C]`` new levels (a new tensor).
    """
    levels = levels.long()
    if accuracies.ndim != 2 or accuracies.shape[0] != levels.shape[0]:
        raise ValueError(f"accuracies must be [C={levels.shape[0]}, K], got {tuple(accuracies.shape)}")
    if levels.numel() and int(levels.max()) >= accuracies.shape[1]:
        raise ValueError(f"accuracies has {accuracies.shape[1]} strengths but a level is {int(levels.max())}")
    tested = torch.arange(accuracies.shape[1], device=levels.device) <= levels[:, None]  # [C, K]
    passed = (accuracies > gamma) | ~tested  # NaN > gamma is False
    step = torch.where(passed.all(dim=1), 1, -1)
    return (levels + step).clamp(0, max_level)


def trial_plan(levels: Tensor, counts: Tensor, trials: int = TRIALS) -> tuple[Tensor, Tensor]:
    """Which tests one curriculum step runs: class ``c`` is tested ``trials * (s + 1)`` times at each
    strength ``s = 0 .. L_c`` (classes without training images are not tested).

    Args:
        levels: int64 ``[C]`` current levels.
        counts: int64 ``[C]`` training images per class.
        trials: ``T`` (>= 1).

    Returns:
        ``(classes, strengths)``: int64 ``[N]`` each, one row per test, grouped by class then strength;
        ``N = trials * sum_c (L_c + 1)(L_c + 2) / 2`` over the classes with images.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    classes, strengths = [], []
    for c, (level, n) in enumerate(zip(levels.tolist(), counts.tolist(), strict=True)):
        if n <= 0:
            continue
        for s in range(int(level) + 1):
            classes.append(torch.full((trials * (s + 1),), c, dtype=torch.long))
            strengths.append(torch.full((trials * (s + 1),), s, dtype=torch.long))
    if not classes:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(classes), torch.cat(strengths)


def trial_accuracies(correct: Tensor, classes: Tensor, strengths: Tensor, num_classes: int,
                     num_strengths: int) -> Tensor:
    """Accuracy per class and strength of the tests of :func:`trial_plan`.

    Args:
        correct: bool ``[N]`` whether test ``i`` was classified correctly.
        classes, strengths: int64 ``[N]`` from :func:`trial_plan`.
        num_classes: ``C``.
        num_strengths: ``K`` (``max_level + 1``).

    Returns:
        float32 ``[C, K]`` fraction correct; NaN where nothing was tested.
    """
    flat = (classes * num_strengths + strengths).cpu()
    size = num_classes * num_strengths
    hits = torch.bincount(flat, weights=correct.cpu().float(), minlength=size)
    tests = torch.bincount(flat, minlength=size).float()
    return (hits / tests).float().reshape(num_classes, num_strengths)  # 0 / 0 = NaN: untested
