"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a training batch, as pure functions of their draws.

A batch's random draws (:func:`sample_mix`) are plain tensors kept beside the augmentation's, so that a
hyper-step replays exactly the mix the lower step trained on; :func:`mix_images` and :func:`mix_targets` are
deterministic given them. The semantics are timm's ``Mixup`` in batch mode: ``λ ~ Beta(α, α)``; mixup blends
each image with its partner ``x[perm]``; CutMix pastes the partner's box of area about ``1 − λ`` and corrects
``λ`` to the box's exact area; with both enabled each batch picks one of them with probability 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MIX_PREFIX", "MixDraws", "cutmix_box", "mix_images", "mix_lambda", "mix_targets",
           "sample_mix", "split_mix"]

#: ``{"mix_lam": [] float64, "mix_perm": [B] int64, "mix_labels": [B] int64, "mix_box": [2] float64 (CutMix)}``
MixDraws = dict[str, Tensor]
#: the keys of :data:`MixDraws` start with it, so they travel in one dict with the augmentation's draws
MIX_PREFIX = "mix_"
#: timm's ``switch_prob`` default: with both mixup and CutMix on, the chance a batch uses CutMix
SWITCH_PROB = 0.5


def sample_mix(labels: Tensor, *, mixup_alpha: float, cutmix_alpha: float,
               switch_prob: float = SWITCH_PROB) -> MixDraws | None:
    """One batch's mix, drawn from torch's global CPU generator (the checkpointed random state, so a resumed
    run draws the same), or ``None`` when both ``α`` are 0 (nothing is drawn then).

    Args:
        labels: ``[B]`` int64 class labels of the batch.
        mixup_alpha, cutmix_alpha: ``α >= 0`` of the Beta distribution of each kind (0: that kind is off).
        switch_prob: with both kinds on, the probability that the batch uses CutMix.

    Returns:
        ``mix_lam`` ``[]`` the drawn ``λ``; ``mix_perm`` ``[B]`` each image's partner; ``mix_labels`` ``[B]``
        the labels (a replay's class-conditional augmentation reads them, the loss sees soft targets);
        ``mix_box`` ``[2]`` (CutMix only) the box centre (row, column) as fractions in ``[0, 1)`` of ``(H, W)``.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or bool(torch.rand(()) < switch_prob))
    alpha = torch.tensor(cutmix_alpha if cutmix else mixup_alpha, dtype=torch.float64)
    draws = {"mix_lam": torch.distributions.Beta(alpha, alpha).sample(),
             "mix_perm": torch.randperm(labels.shape[0]).to(labels.device),
             "mix_labels": labels.long()}
    if cutmix:
        draws["mix_box"] = torch.rand(2, dtype=torch.float64)
    return draws


def split_mix(draws: dict[str, Tensor] | None) -> tuple[dict[str, Tensor] | None, MixDraws | None]:
    """``draws`` as (the augmentation's part, the mix's part or ``None``); ``None`` gives ``(None, None)``."""
    if draws is None:
        return None, None
    mix = {k: v for k, v in draws.items() if k.startswith(MIX_PREFIX)}
    if not mix:
        return draws, None
    return {k: v for k, v in draws.items() if not k.startswith(MIX_PREFIX)}, mix


def cutmix_box(lam: float, centre: Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: ``(top, bottom, left, right)`` pixel bounds of a box of sides ``√(1 − λ)·(H, W)``
    around ``centre`` (fractions of ``(H, W)``), clipped to the image (so its area can be less than ``1 − λ``)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(float(centre[0]) * height), int(float(centre[1]) * width)
    top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return top, bottom, left, right


def mix_lambda(draws: MixDraws, height: int, width: int) -> float:
    """The weight of each image's own label: the drawn ``λ`` for mixup, ``1 − box area / image area`` for CutMix."""
    lam = float(draws["mix_lam"])
    if "mix_box" not in draws:
        return lam
    top, bottom, left, right = cutmix_box(lam, draws["mix_box"], height, width)
    return 1.0 - (bottom - top) * (right - left) / (height * width)


def mix_images(x: Tensor, draws: MixDraws) -> Tensor:
    """``[B, C, H, W]`` images mixed with their partners ``x[perm]`` (differentiable w.r.t. ``x``)."""
    partner = x[draws["mix_perm"].to(x.device)]
    lam = float(draws["mix_lam"])
    if "mix_box" not in draws:
        return lam * x + (1.0 - lam) * partner
    top, bottom, left, right = cutmix_box(lam, draws["mix_box"], x.shape[-2], x.shape[-1])
    out = x.clone()
    out[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return out


def mix_targets(num_classes: int, draws: MixDraws, height: int, width: int) -> Tensor:
    """Soft targets ``[B, C]``: ``λ·onehot(y) + (1 − λ)·onehot(y[perm])`` with :func:`mix_lambda`'s ``λ``."""
    y = draws["mix_labels"]
    lam = mix_lambda(draws, height, width)
    one_hot = F.one_hot(y, num_classes).float()
    return lam * one_hot + (1.0 - lam) * one_hot[draws["mix_perm"].to(y.device)]
