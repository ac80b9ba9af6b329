"""A frozen backbone's features of a split, computed once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data import Split
from ..evaluation import predict


@dataclass(frozen=True)
class Features:
    """Classifier inputs of a split: ``features`` ``[N, D]`` (float32, or float64 for an exact solve) and
    ``labels`` ``[N]``, on one device."""

    features: Tensor
    labels: Tensor

    def pair(self) -> tuple[Tensor, Tensor]:
        return self.features, self.labels

    def to(self, dtype: torch.dtype) -> Features:
        return Features(self.features.to(dtype), self.labels)


def features_of(model: nn.Module, data: Split, *, mean: Sequence[float], std: Sequence[float],
                device: torch.device, channels_last: bool = False, num_workers: int = 0) -> Features:
    """``model``'s penultimate features of every image of ``data`` in eval mode, without augmentation (the
    evaluation path, :func:`~ab_plugin.evaluation.predict`), with its labels."""
    _, feats = predict(model, data, mean=mean, std=std, device=device, channels_last=channels_last,
                       num_workers=num_workers)
    return Features(feats, data.targets.to(feats.device))
