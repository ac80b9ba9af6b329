"""Cutout as a kornia op whose square side is differentiable (kornia's ``RandomErasing`` box is not).

:class:`SoftErase` is a kornia ``IntensityAugmentationBase2D`` painting an anti-aliased grey square;
:class:`Cutout` wraps it in kornia's ``OperationBase`` so that a per-sample magnitude (the side) and a
per-sample gate (``params["batch_prob"]``, blended linearly by ``OperationBase.forward``) carry gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.augmentation import IntensityAugmentationBase2D
from kornia.augmentation import random_generator as rg
from kornia.augmentation.auto.operations.base import OperationBase
from torch import Tensor

__all__ = ["CUTOUT_FILL", "Cutout", "SoftErase", "cutout_mask"]

CUTOUT_FILL: float = 0.5
"""Value written by cutout (mid grey, close to the CIFAR mean) in ``[0, 1]`` units."""


def cutout_mask(center: Tensor, side: Tensor, height: int, width: int) -> Tensor:
    """Anti-aliased square mask: the fraction of each pixel covered by the square.

    Pixel ``i`` covers ``[i, i + 1)``; the square is ``[c - side/2, c + side/2]`` on each axis, so the
    mask is exactly 0 for ``side = 0`` and its partial edge pixels make it piecewise linear (hence
    differentiable almost everywhere) in ``side`` and ``center``.

    Args:
        center: ``[B, 2]`` square centre ``(x, y)`` in pixels (continuous, ``0 .. W`` / ``0 .. H``).
        side: ``[B]`` side length in pixels (``>= 0``).
        height: image height ``H`` in pixels.
        width: image width ``W`` in pixels.

    Returns:
        ``[B, 1, H, W]`` mask in ``[0, 1]``.
    """
    half = side[:, None] / 2.0
    px = torch.arange(width, device=side.device, dtype=side.dtype)
    py = torch.arange(height, device=side.device, dtype=side.dtype)
    cx, cy = center[:, 0:1], center[:, 1:2]
    cov_x = (torch.minimum(px + 1, cx + half) - torch.maximum(px, cx - half)).clamp(0.0, 1.0)  # [B, W]
    cov_y = (torch.minimum(py + 1, cy + half) - torch.maximum(py, cy - half)).clamp(0.0, 1.0)  # [B, H]
    return (cov_y[:, :, None] * cov_x[:, None, :])[:, None]


class SoftErase(IntensityAugmentationBase2D):
    """kornia augmentation: a grey square of side ``side * max_side * min(H, W)`` at a random centre.

    Parameters (kornia's ``params`` dict, one row per image): ``side`` in ``[0, 1]`` (the magnitude),
    ``center_x`` / ``center_y`` in ``[0, 1)`` (fractions of ``W`` / ``H``).

    Args:
        max_side: side at magnitude 1, as a fraction of the shorter image side.
        fill: value painted inside the square (``[0, 1]`` units).
    """

    def __init__(self, max_side: float = 0.5, fill: float = CUTOUT_FILL) -> None:
        super().__init__(p=1.0, same_on_batch=False)
        self.max_side, self.fill = float(max_side), float(fill)
        self._param_generator = rg.PlainUniformGenerator(
            ((0.0, 1.0), "side", None, None), ((0.0, 1.0), "center_x", None, None), ((0.0, 1.0), "center_y", None, None)
        )

    def apply_transform(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any],
                        transform: Tensor | None = None) -> Tensor:
        h, w = input.shape[-2:]
        dtype = input.dtype
        side = params["side"].to(dtype) * (self.max_side * min(h, w))
        center = torch.stack([params["center_x"].to(dtype) * w, params["center_y"].to(dtype) * h], -1)
        mask = cutout_mask(center, side, h, w)
        return input + mask * (self.fill - input)


class Cutout(OperationBase):
    """Differentiable cutout as a kornia ``OperationBase``: per-sample side and gate come in ``params``.

    Args:
        max_side: side at magnitude 1, as a fraction of the shorter image side.
    """

    def __init__(self, max_side: float = 0.5) -> None:
        super().__init__(SoftErase(max_side), initial_magnitude=[("side", None)])

    def erase(self, x: Tensor, side: Tensor, center: Tensor, gate: Tensor) -> Tensor:
        """Cut out one square per image with a replayed centre.

        The parameters are built here rather than by ``forward_parameters``: its draws live on the
        generator's device (CPU) and every one of them is replaced by a replayed value anyway.

        Args:
            x: ``[B, C, H, W]`` float images in ``[0, 1]``.
            side: ``[B]`` magnitude in ``[0, 1]`` (differentiable).
            center: ``[B, 2]`` centre ``(x, y)`` as fractions of ``(W, H)`` in ``[0, 1)``.
            gate: ``[B]`` in ``[0, 1]``; the output is ``gate * cutout(x) + (1 - gate) * x``.

        Returns:
            ``[B, C, H, W]`` images, differentiable w.r.t. ``x``, ``side`` and ``gate``.
        """
        params = {
            "side": side,
            "center_x": center[:, 0],
            "center_y": center[:, 1],
            "batch_prob": gate,
            "forward_input_shape": torch.tensor(x.shape, dtype=torch.long),
        }
        return self(x, params=params)
