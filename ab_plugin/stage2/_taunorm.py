"""τ-normalisation of a linear classifier (Kang et al., ICLR 2020) and the choice of τ on validation data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..objectives import compute_metrics

#: τ values tried (0, 0.1, ..., 2): Kang et al. search τ in [0, 2].
TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))


def tau_normalize(weight: Tensor, tau: float) -> Tensor:
    """``w_j / ||w_j||^τ`` for each class row of ``weight`` ``[C, D]`` (τ = 0: unchanged, τ = 1: unit rows)."""
    return weight / weight.norm(dim=1, keepdim=True).pow(tau)


@torch.no_grad()
def choose_tau(weight: Tensor, features: Tensor, labels: Tensor,
               grid: Sequence[float] = TAU_GRID) -> tuple[float, float]:
    """The τ of ``grid`` whose normalised classifier (no bias: Kang et al. drop it) has the lowest balanced
    error on validation ``features`` ``[N, D]`` / ``labels`` ``[N]`` (the smallest τ on a tie), and that error."""
    num_classes = weight.shape[0]
    best = (float("inf"), 0.0)
    for tau in grid:
        logits = features @ tau_normalize(weight, tau).T
        err = compute_metrics(logits, labels, num_classes).balanced_error
        if err < best[0]:
            best = (err, float(tau))
    return best[1], best[0]
