"""A learned augmentation policy inside the caller's training loop, replayable for a hyper-step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ab_plugin.policies import ClassPolicy

__all__ = ["LivePolicy"]


class LivePolicy(nn.Module):
    """Applies a :class:`~ab_plugin.policies.ClassPolicy` to training batches and keeps the last batch's draws.

    The caller's batches are what the model takes (normalised by ``mean`` / ``std`` when given); the policy
    works on ``[0, 1]`` images, so a batch is un-normalised, augmented and normalised again. The forward pass
    keeps no graph (the caller's backward never reaches the policy); :meth:`apply` rebuilds an augmented batch
    from its draws with a graph to the policy's parameters, for the hyper-step's replay.

    Args:
        policy: the learnable policy (its :meth:`~ab_plugin.policies.ClassPolicy.hparameters` are A).
        mean: per-channel mean the batches were normalised with (``None``: batches are in ``[0, 1]``).
        std: per-channel standard deviation, with ``mean``.
    """

    mean: Tensor | None
    std: Tensor | None

    def __init__(self, policy: ClassPolicy, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("pass both pixel mean and std (the batches' normalisation), or neither")
        self.policy = policy
        stats = [None if v is None else torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (mean, std)]
        self.register_buffer("mean", stats[0], persistent=False)
        self.register_buffer("std", stats[1], persistent=False)
        self._last: tuple[Tensor, Tensor, dict[str, Tensor]] | None = None

    def apply(self, x: Tensor, y: Tensor, draws: dict[str, Tensor]) -> Tensor:
        """``x`` augmented with the given draws (a graph to the policy's parameters when grad is enabled).

        Args:
            x: ``[B, 3, H, W]`` float batch as the model takes it; y: ``[B]`` int labels; draws: from
                :meth:`~ab_plugin.policies.ClassPolicy.sample_params`.

        Returns:
            ``[B, 3, H, W]``, same normalisation as ``x``.
        """
        if self.mean is None:
            return self.policy(x, y, draws)
        x01 = x * self.std.to(x.dtype) + self.mean.to(x.dtype)
        return (self.policy(x01, y, draws) - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Augment one training batch with its labels' policies (no graph).

        Args:
            x: ``[B, 3, H, W]`` float batch as the model takes it.
            y: ``[B]`` int labels.

        Returns:
            ``[B, 3, H, W]`` augmented batch, same normalisation and dtype.
        """
        with torch.no_grad():
            draws = self.policy.sample_params(x, y)
            out = self.apply(x, y, draws).to(x.dtype)
        self._last = (x.detach(), y, draws)
        return out

    def last_for(self, target: Tensor) -> tuple[Tensor, dict[str, Tensor]] | None:
        """The last augmented batch's input and draws, if ``target`` is its labels.

        Args:
            target: the targets paired with the batch's features; after mixup (soft targets, or other labels) the
                model's input is no longer the policy's output, so there is nothing to replay.

        Returns:
            ``(x [B, 3, H, W], draws)`` or ``None``.
        """
        if self._last is None:
            return None
        x, y, draws = self._last
        if target.ndim != 1 or target.shape != y.shape:
            return None
        # the caller's own label tensor (the usual case) needs no comparison, which would wait for the device
        if target is not y and not torch.equal(target.to(y.device), y):
            return None
        return x, draws

    def forget(self) -> None:
        """Drop the last batch (it belongs to no run after a restore)."""
        self._last = None
