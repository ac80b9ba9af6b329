"""Batched, vectorised image transforms on ``[B, C, H, W]`` tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["random_crop_flip", "normalize", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD"]

#: CIFAR statistics as used by LDAM-DRW / AutoBalance (images scaled to [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)


def _draw_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard CIFAR augmentation for a batch: zero-pad, random crop back to ``H x W``, random h-flip.

    Every sample gets its own crop offsets ``(dy, dx)`` in ``[0, 2 * padding]`` and its own flip
    (probability 0.5); no Python loop over samples (one gather). Random numbers are drawn on the
    generator's device (the device of ``x`` without a generator) in this order: ``dy``, ``dx``, flip;
    so the same generator state gives the same output, on any device of ``x``.

    Args:
        x: uint8 or float ``[B, C, H, W]``.
        padding: zero padding on each side (0: flip only).
        generator: optional ``torch.Generator``; the global RNG otherwise.

    Returns:
        Tensor of the dtype, shape, device and memory format (contiguous / channels_last) of ``x``.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, _, h, w = x.shape
    dev = _draw_device(x, generator)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev).to(x.device)
    flip = (torch.rand(b, generator=generator, device=dev) < 0.5).to(x.device)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    xp = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = dx[:, None] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices separated by a slice -> result [B, H, W, C]
    out = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]
    out = out.permute(0, 3, 1, 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Per-channel normalisation ``(x / 255 - mean) / std`` for uint8, ``(x - mean) / std`` for float.

    Args:
        x: uint8 ``[B, C, H, W]`` (0..255) or float ``[B, C, H, W]`` already in ``[0, 1]``.
        mean, std: ``C`` values each.

    Returns:
        float ``[B, C, H, W]`` (float32 for uint8 input, else the dtype of ``x``).
    """
    xf = x.float().div_(255.0) if x.dtype == torch.uint8 else x
    m = torch.as_tensor(mean, dtype=xf.dtype, device=xf.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=xf.dtype, device=xf.device).view(1, -1, 1, 1)
    return (xf - m) / s
