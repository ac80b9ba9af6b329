"""Evaluation on a loader of preprocessed batches: logits and the imbalance metrics of the core."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ab_plugin.evaluation import predict_batches
from ab_plugin.objectives import Metrics, compute_metrics

__all__ = ["evaluate_metrics", "predict_logits"]


def predict_logits(
    model: nn.Module, loader: Iterable[Sequence[Tensor]], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Logits ``[N, C]`` (float32, CPU) and labels ``[N]`` of every ``(x, y, ...)`` batch, in eval mode.

    Every submodule's train/eval mode is restored afterwards.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    labels: list[Tensor] = []

    def inputs() -> Iterator[Tensor]:
        for batch in loader:
            labels.append(torch.as_tensor(batch[1]).cpu())
            yield batch[0]

    logits, _ = predict_batches(model, inputs(), device=dev, features=False)
    return logits.cpu(), torch.cat(labels)


def evaluate_metrics(
    model: nn.Module,
    loader: Iterable[Sequence[Tensor]],
    num_classes: int,
    device: torch.device | str | None = None,
) -> Metrics:
    """Accuracy, balanced error, worst-class and per-class error of ``model`` on ``loader``."""
    logits, labels = predict_logits(model, loader, device)
    return compute_metrics(logits, labels.long(), num_classes)
