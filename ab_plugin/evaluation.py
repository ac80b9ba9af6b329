"""Prediction and imbalance metrics of a trained classifier: the functional core behind ``Trainer.predict``,
``ab-plugin evaluate`` and the integrations' evaluation helpers.

Every function runs the model in eval mode without gradients and restores each submodule's train/eval
mode afterwards. Many / medium / few-shot accuracy (:func:`shot_accuracy`) is computed here and only here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .data import Split, create_loader, normalize
from .models import split_model
from .objectives import Metrics, compute_metrics

__all__ = ["predict", "predict_batches", "evaluate", "metrics_of", "shot_accuracy", "SHOT_GROUPS"]

#: The long-tailed literature's shot groups (Liu et al. 2019, OLTR), as inclusive ranges of training images
#: per class: many-shot more than 100, medium-shot 20 to 100, few-shot fewer than 20.
SHOT_GROUPS: dict[str, tuple[int, float]] = {"many": (101, math.inf), "medium": (20, 100), "few": (0, 19)}


def shot_accuracy(per_class_error: Sequence[float], train_counts: Sequence[int]) -> dict[str, float | None]:
    """Accuracy averaged over the classes of each shot group (see :data:`SHOT_GROUPS`).

    Args:
        per_class_error: ``C`` error fractions, NaN for a class absent from the evaluated data.
        train_counts: ``C`` training images per class (of the whole training set).

    Returns:
        ``{"many": a, "medium": a, "few": a}``, fractions in [0, 1]; ``None`` for a group without a class
        present in the evaluated data (an empty group is absent, not 0).
    """
    if len(per_class_error) != len(train_counts):
        raise ValueError(f"shot_accuracy needs one training count per class ({len(per_class_error)}), "
                         f"got {len(train_counts)}")
    out: dict[str, float | None] = {}
    for name, (lo, hi) in SHOT_GROUPS.items():
        pairs = zip(per_class_error, train_counts, strict=True)
        accs = [1.0 - e for e, n in pairs if lo <= n <= hi and not math.isnan(e)]
        out[name] = sum(accs) / len(accs) if accs else None
    return out


@torch.no_grad()
def predict_batches(
    model: nn.Module,
    inputs: Iterable[Tensor],
    *,
    device: torch.device | str,
    channels_last: bool = False,
    amp: bool = False,
    features: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Logits ``[N, C]`` and, with ``features``, penultimate features ``[N, D]`` (both float32, on ``device``)
    of model-ready input batches ``[B, 3, H, W]``; ``amp`` runs bfloat16 autocast on CUDA only."""
    device = torch.device(device)
    head = split_model(model) if features else None
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    logits, feats = [], []
    try:
        for x in inputs:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                if head is None:
                    logits.append(model(x).float())
                    continue
                f = head[0](x)
                logits.append(head[1](f).float())
            feats.append(f.float())
    finally:
        for m, training in modes:
            m.training = training
    if not logits:
        raise ValueError("nothing to predict: the data holds no images")
    return torch.cat(logits), (torch.cat(feats) if feats else None)


def _prepared(data: Split, mean: Sequence[float], std: Sequence[float], device: torch.device,
              batch_size: int, num_workers: int) -> Iterator[Tensor]:
    for x, _, _ in create_loader(data, batch_size, shuffle=False, device=device, num_workers=num_workers):
        x01 = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        yield normalize(x01, mean, std)


def predict(
    model: nn.Module,
    data: Split,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    batch_size: int = 512,
    channels_last: bool = False,
    amp: bool = False,
    num_workers: int = 2,
) -> tuple[Tensor, Tensor]:
    """Logits ``[N, C]`` and features ``[N, D]`` (float32, on ``device``) of ``data``'s images (uint8 scaled
    to ``[0, 1]``, then normalised with the per-channel ``mean`` / ``std``), without augmentation; a file
    list is decoded (evaluation crop) by ``num_workers`` DataLoader workers."""
    device = torch.device(device)
    batches = _prepared(data, mean, std, device, batch_size, num_workers)
    logits, feats = predict_batches(model, batches, device=device, channels_last=channels_last, amp=amp)
    assert feats is not None
    return logits, feats


def metrics_of(logits: Tensor, data: Split, train_counts: Sequence[int] | None = None) -> Metrics:
    """Accuracy, balanced, worst-class, per-class (and, with groups, per-group) error of ``logits [N, C]``
    against ``data``'s labels; with the ``C`` ``train_counts``, also many / medium / few-shot accuracy."""
    groups = data.groups.to(logits.device) if data.groups is not None else None
    m = compute_metrics(logits, data.targets.to(logits.device), data.num_classes, groups)
    if train_counts is not None:
        m.shot_accuracy = shot_accuracy(m.per_class_error, [int(n) for n in train_counts])
    return m


def evaluate(model: nn.Module, data: Split, *, mean: Sequence[float], std: Sequence[float],
             device: torch.device | str, batch_size: int = 512, channels_last: bool = False,
             amp: bool = False, num_workers: int = 2, train_counts: Sequence[int] | None = None) -> Metrics:
    """:func:`predict` then :func:`metrics_of`."""
    logits, _ = predict(model, data, mean=mean, std=std, device=device, batch_size=batch_size,
                        channels_last=channels_last, amp=amp, num_workers=num_workers)
    return metrics_of(logits, data, train_counts)
