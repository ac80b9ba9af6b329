"""CUDA's strength-dependent augmentation on the policies' kornia op bank: strength ``k`` applies ``k`` ops drawn
uniformly with replacement, each at magnitude ``k / max_d`` of its range.

Follows ``github.com/sumyeongahn/CUDA_LTR`` ``cifar/aug/cuda.py`` ``CUDA`` (lines 13-20): ``n`` ops by
``random.choices`` (with replacement) and the value ``m / max_d * (max - min) + min`` with ``max_d = 30``;
``cifar/datasets/cifar100.py`` (lines 86-101) sets ``n = m = k`` at strength level ``k``. Deviations (the ops
here are the learned policies' ops, :data:`~ab_plugin.policies.OPS`, so that CUDA and PDA differ in their
policy only):

- the op list is :data:`~ab_plugin.policies._policy.DEFAULT_OPS` (translate, rotate, shear, scale, brightness,
  contrast, saturation, cutout) instead of CUDA's 22 PIL ops; its PIL-only ops (vertical flip, edge enhance,
  detail, smooth, autocontrast, equalize, invert, blur, posterize, solarize, solarize-add, sharpness) are not
  applied, and cutout is (CUDA has it as a separate option);
- a magnitude ``m = k / max_d`` maps to each op's range as for the learned policies (``± m * max_value``,
  random sign): rotate (``± 30 m`` degrees) and shear (``± 0.3 m``) equal CUDA's; CUDA's colour factor
  ``0.1 + 1.8 m`` (weakest at the highest strength) becomes ``1 ± 0.5 m``, its absolute translation of
  ``100 m`` pixels ``0.3 m`` of the image size, its enlarge-and-crop ``1 + 0.5 m`` the zoom ``1 ± 0.3 m``;
- the ops run in the policies' fixed order (all geometric draws composed into one affine warp, then colour,
  then cutout) rather than in the drawn order; several draws of one colour op apply once with the product of
  their factors (the same result but for the clamp to ``[0, 1]`` in between).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import _ops
from ._cutout import Cutout
from ._ops import COLOR_OPS, OPS

__all__ = ["MAX_D", "sample_cuda_draws", "cuda_augment"]

MAX_D: float = 30.0
"""CUDA's ``max_d``: strength ``k`` is magnitude ``k / MAX_D`` of each op's range (``--max_d``, default 30)."""

_CUTOUT = Cutout(OPS["cutout"].max_value)

_COLOR_FNS = {
    "brightness": _ops.adjust_brightness,
    "contrast": _ops.adjust_contrast,
    "saturation": _ops.adjust_saturation,
}


def sample_cuda_draws(batch: int, slots: int, num_ops: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Everything random in :func:`cuda_augment` for ``batch`` images and up to ``slots`` ops each.

    Args:
        batch: ``B``.
        slots: most ops one image gets (the highest strength).
        num_ops: size of the op bank.
        generator: optional ``torch.Generator``; the draws happen on its device (else on ``device``).
        device: where the draws end up.

    Returns:
        ``op`` ``[B, slots]`` int64 in ``[0, num_ops)`` (slot ``j``'s op); ``sign`` ``[B, slots]`` ``±1.0``;
        ``translate_direction`` ``[B, slots, 2]`` unit vectors; ``shear_axis`` ``[B, slots]`` bool (True: x);
        ``cutout_center`` ``[B, slots, 2]`` centre ``(x, y)`` as fractions of ``(W, H)``.
    """
    kw: dict[str, Any] = {"generator": generator, "device": generator.device if generator is not None else device}
    phi = torch.rand(batch, slots, **kw) * (2.0 * math.pi)
    draws = {
        "op": torch.randint(0, num_ops, (batch, slots), **kw),
        "sign": torch.where(torch.rand(batch, slots, **kw) < 0.5, -1.0, 1.0),
        "translate_direction": torch.stack([torch.cos(phi), torch.sin(phi)], -1),
        "shear_axis": torch.rand(batch, slots, **kw) < 0.5,
        "cutout_center": torch.rand(batch, slots, 2, **kw),
    }
    return {k: v.to(device) for k, v in draws.items()}


def cuda_augment(x: Tensor, strength: Tensor, draws: dict[str, Tensor], ops: Sequence[str],
                 max_d: float = MAX_D) -> Tensor:
    """Apply ``strength[b]`` ops (slots ``0 .. strength[b] - 1`` of ``draws``) to image ``b``, each at
    magnitude ``strength[b] / max_d``; strength 0 returns the image unchanged (bit for bit).

    Args:
        x: ``[B, 3, H, W]`` float images in ``[0, 1]``.
        strength: int64 ``[B]`` in ``[0, slots]``.
        draws: from :func:`sample_cuda_draws` with ``num_ops = len(ops)``, on ``x``'s device.
        ops: the op bank (names in :data:`~ab_plugin.policies.OPS`, ``flip`` excluded: it has no magnitude).
        max_d: strength at which an op reaches its full range.

    Returns:
        ``[B, 3, H, W]`` augmented images in ``[0, 1]``.
    """
    strength = strength.to(x.device).long()
    slots = int(strength.max()) if strength.numel() else 0
    if slots == 0:
        return x
    dtype = x.dtype
    active = torch.arange(slots, device=x.device) < strength[:, None]  # [B, S]
    op = draws["op"][:, :slots]
    magnitude = (strength.to(dtype) / max_d)[:, None]  # [B, 1], fraction of each op's range
    sign = draws["sign"][:, :slots].to(dtype)

    def chosen(name: str) -> Tensor:
        """``[B, S]`` 1.0 where slot ``j`` of image ``b`` is op ``name``."""
        if name not in ops:
            return torch.zeros_like(sign)
        return (active & (op == ops.index(name))).to(dtype)

    def signed(name: str) -> Tensor:
        return chosen(name) * sign * magnitude * OPS[name].max_value

    out = _warp(x, chosen, signed, magnitude, draws, slots)
    for name in COLOR_OPS:
        if name in ops:
            factor = (1.0 + signed(name)).prod(dim=1)  # [B]
            out = _where(chosen(name).any(dim=1), _COLOR_FNS[name](out, factor), out)
    if "cutout" in ops:
        side = magnitude[:, 0]
        for j in range(slots):
            gate = chosen("cutout")[:, j]
            out = _where(gate.bool(), _CUTOUT.erase(out, side, draws["cutout_center"][:, j].to(dtype), gate), out)
    return out


def _where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` for the images in ``mask`` ``[B]``, the others exactly as they were."""
    return torch.where(mask[:, None, None, None], new, old)


def _warp(x: Tensor, chosen: Callable[[str], Tensor], signed: Callable[[str], Tensor], magnitude: Tensor,
          draws: dict[str, Tensor], slots: int) -> Tensor:
    """Every slot's geometric op as one affine matrix per image, composed in slot order, applied by one warp;
    images without a geometric draw keep their pixels exactly."""
    b, _, h, w = x.shape
    geometric = sum(chosen(name) for name in ("translate", "rotate", "shear", "scale")).gt(0).any(dim=1)  # [B]
    if not bool(geometric.any()):
        return x
    size = x.new_tensor([float(w), float(h)])
    axis = draws["shear_axis"][:, :slots]
    angle, zoom, shear = signed("rotate"), 1.0 + signed("scale"), signed("shear")  # [B, S] each
    shear_xy = torch.stack([torch.where(axis, shear, 0.0), torch.where(axis, 0.0, shear)], -1)  # [B, S, 2]
    shift = (chosen("translate") * magnitude * OPS["translate"].max_value)[..., None] \
        * draws["translate_direction"][:, :slots].to(x.dtype) * size  # [B, S, 2] pixels
    mirror = torch.ones(b, dtype=x.dtype, device=x.device)
    matrix = torch.eye(3, dtype=x.dtype, device=x.device).expand(b, 3, 3)
    for j in range(slots):
        step = _ops.affine_matrix(shift[:, j], angle[:, j], zoom[:, j], shear_xy[:, j], mirror, height=h, width=w)
        matrix = step @ matrix  # slot j acts after slots 0 .. j - 1
    return _where(geometric, _ops.warp(x, matrix), x)
