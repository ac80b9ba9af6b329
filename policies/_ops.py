"""Functional core of the per-class augmentation policies: batched ops with per-sample parameters.

Every function here takes a batch ``x`` of float images ``[B, 3, H, W]`` with values in ``[0, 1]``
and per-sample parameters (one row per image), and is differentiable with respect to both the
images and the float parameters. Nothing here draws random numbers: the caller
(:class:`ab_plugin.policies.ClassPolicy`) samples the noise once and replays it.

Magnitude convention. A learned magnitude ``m`` in ``(0, 1)`` maps linearly to the op's physical
strength ``m * max``; a random sign (or direction) drawn per sample is the non-differentiable noise
that ``m`` scales (the reparameterisation). The ranges, in :data:`OPS`:

============  ===============================================  =========================================
op            physical value at magnitude ``m``                unit
============  ===============================================  =========================================
translate     shift of ``m * 0.3`` of the image size along a   fraction of the width / height
              random unit direction ``(cos φ, sin φ)``
rotate        rotation by ``± m * 30``                         degrees (about the image centre)
shear         shear factor ``± m * 0.3`` along x or y (random)  tangent of the shear angle (0.3 ≈ 16.7°)
scale         isotropic zoom factor ``1 ± m * 0.3``            ratio (>1 zooms in), about the centre
flip          horizontal mirror (probability only)             —
brightness    multiply by ``1 ± m * 0.5``                      ratio (torchvision ``adjust_brightness``)
contrast      blend with the grey mean, factor ``1 ± m * 0.5``  ratio (torchvision ``adjust_contrast``)
saturation    blend with the grey image, factor ``1 ± m * 0.5``  ratio (torchvision ``adjust_saturation``)
cutout        grey (0.5) square of side ``m * 0.5`` of the     fraction of ``min(H, W)``; anti-aliased
              shorter side, at a uniformly random centre       edges so the side is differentiable
============  ===============================================  =========================================

The geometric ops (translate, rotate, shear, scale, flip) are composed into one ``3 x 3`` matrix
per sample and applied by a single bilinear ``grid_sample`` warp with zero padding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "OPS",
    "GEOMETRIC_OPS",
    "COLOR_OPS",
    "APPLY_ORDER",
    "OpSpec",
    "relaxed_bernoulli_gate",
    "crop_flip",
    "translate_matrix",
    "rotate_matrix",
    "shear_matrix",
    "scale_matrix",
    "flip_matrix",
    "blend_matrix",
    "matmul3",
    "cutout_mask",
    "warp_affine",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "soft_cutout",
    "CUTOUT_FILL",
]


@dataclass(frozen=True)
class OpSpec:
    """Description of one policy operation.

    Attributes:
        name: op name used in policies and policy files.
        has_magnitude: whether the op has a learnable magnitude (``flip`` has a probability only).
        max_value: physical value reached at magnitude 1 (see ``unit``).
        unit: unit of ``max_value``.
        kind: ``"geometric"`` (folded into the one affine warp), ``"color"`` or ``"erase"``.
    """

    name: str
    has_magnitude: bool
    max_value: float
    unit: str
    kind: str


OPS: Mapping[str, OpSpec] = {
    "translate": OpSpec("translate", True, 0.3, "fraction of image size", "geometric"),
    "rotate": OpSpec("rotate", True, 30.0, "degrees", "geometric"),
    "shear": OpSpec("shear", True, 0.3, "shear factor (tan of angle)", "geometric"),
    "scale": OpSpec("scale", True, 0.3, "relative zoom (factor 1 ± value)", "geometric"),
    "flip": OpSpec("flip", False, 1.0, "horizontal mirror", "geometric"),
    "brightness": OpSpec("brightness", True, 0.5, "relative factor (1 ± value)", "color"),
    "contrast": OpSpec("contrast", True, 0.5, "relative factor (1 ± value)", "color"),
    "saturation": OpSpec("saturation", True, 0.5, "relative factor (1 ± value)", "color"),
    "cutout": OpSpec("cutout", True, 0.5, "square side, fraction of min(H, W)", "erase"),
}
"""All supported ops with their physical ranges (magnitude 1 reaches ``max_value``)."""

GEOMETRIC_OPS: tuple[str, ...] = ("scale", "shear", "rotate", "translate", "flip")
"""Geometric ops, in the order their matrices are applied to the image (scale first)."""

COLOR_OPS: tuple[str, ...] = ("brightness", "contrast", "saturation")

APPLY_ORDER: tuple[str, ...] = GEOMETRIC_OPS + COLOR_OPS + ("cutout",)
"""Order in which a policy applies its ops, whatever order they are listed in."""


CUTOUT_FILL: float = 0.5
"""Value written by cutout (mid grey, close to the CIFAR mean) in ``[0, 1]`` units."""


def relaxed_bernoulli_gate(logits: Tensor, noise: Tensor, temperature: float | Tensor) -> Tensor:
    """Straight-through relaxed Bernoulli gate (Concrete / Gumbel-sigmoid), replayable.

    The relaxed sample is ``soft = sigmoid((logits + logit(u)) / T)`` (the reparameterisation of
    ``torch.distributions.RelaxedBernoulli(T, logits=logits)`` with logistic noise ``logit(u)``);
    the returned gate has the forward value ``hard = 1[logits + logit(u) > 0]`` exactly (0.0 or 1.0)
    and the gradient of ``soft``. ``hard`` is 1 with probability ``sigmoid(logits)``.

    Args:
        logits: ``[...]`` log-odds of applying the op (float).
        noise: ``[...]`` uniform draws ``u`` in ``(0, 1)`` (same shape, no gradient).
        temperature: relaxation temperature ``T > 0`` (smaller: closer to hard, sharper gradient).

    Returns:
        ``[...]`` gate, exactly 0 or 1 in the forward pass, differentiable w.r.t. ``logits``.
    """
    s = (logits + torch.logit(noise.to(logits.dtype))) / temperature
    soft = torch.sigmoid(s)
    hard = (s > 0).to(soft.dtype)
    return hard + (soft - soft.detach())


def crop_flip(x: Tensor, offset: Tensor, flip: Tensor, padding: int = 4) -> Tensor:
    """Standard CIFAR random crop (zero pad ``padding``) and horizontal flip, batched and exact.

    Equals ``torchvision.transforms.RandomCrop(H, padding)`` followed by ``RandomHorizontalFlip``
    for the same draws: output pixels are copies of input pixels (or zero), bit for bit.

    Args:
        x: ``[B, C, H, W]`` images, any dtype.
        offset: ``[B, 2]`` int64 ``(top, left)`` of the crop in the padded image, in ``[0, 2 * padding]``.
        flip: ``[B]`` bool, mirror the crop horizontally.
        padding: zero padding in pixels on each side.

    Returns:
        ``[B, C, H, W]`` cropped (and flipped) images, same dtype and device as ``x``.
    """
    b, c, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    wp = w + 2 * padding
    offset = offset.to(device=x.device, dtype=torch.long)
    flip = flip.to(device=x.device, dtype=torch.bool)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offset[:, 0:1] + ar_h  # [B, H]
    cols = offset[:, 1:2] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # [B, W]
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(xp.reshape(b, c, -1), 2, index).reshape(b, c, h, w)


def _eye(b: int, like: Tensor) -> Tensor:
    return torch.eye(3, dtype=like.dtype, device=like.device).expand(b, 3, 3)


def _affine(a: Tensor, bb: Tensor, c: Tensor, d: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    zero = torch.zeros_like(a)
    one = torch.ones_like(a)
    return torch.stack(
        [torch.stack([a, bb, tx], -1), torch.stack([c, d, ty], -1), torch.stack([zero, zero, one], -1)], -2
    )


def translate_matrix(shift: Tensor) -> Tensor:
    """Translation matrices.

    Args:
        shift: ``[B, 2]`` shift ``(dx, dy)`` in pixels (x right, y down).

    Returns:
        ``[B, 3, 3]`` homogeneous matrices in pixel coordinates.
    """
    one = torch.ones_like(shift[:, 0])
    zero = torch.zeros_like(one)
    return _affine(one, zero, zero, one, shift[:, 0], shift[:, 1])


def rotate_matrix(angle: Tensor) -> Tensor:
    """Rotation matrices about the image centre.

    Args:
        angle: ``[B]`` angle in radians (positive turns x towards y, i.e. clockwise on screen).

    Returns:
        ``[B, 3, 3]`` homogeneous matrices in centred pixel coordinates.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    return _affine(cos, -sin, sin, cos, zero, zero)


def shear_matrix(shear_x: Tensor, shear_y: Tensor) -> Tensor:
    """Shear matrices ``[[1, shear_x], [shear_y, 1]]`` about the centre.

    Args:
        shear_x: ``[B]`` x-shear factor (x += shear_x * y), dimensionless (tan of the shear angle).
        shear_y: ``[B]`` y-shear factor (y += shear_y * x).

    Returns:
        ``[B, 3, 3]`` homogeneous matrices in centred pixel coordinates.
    """
    one = torch.ones_like(shear_x)
    zero = torch.zeros_like(shear_x)
    return _affine(one, shear_x, shear_y, one, zero, zero)


def scale_matrix(zoom: Tensor) -> Tensor:
    """Isotropic scaling about the centre.

    Args:
        zoom: ``[B]`` zoom factor (ratio; > 1 enlarges the content).

    Returns:
        ``[B, 3, 3]`` homogeneous matrices in centred pixel coordinates.
    """
    zero = torch.zeros_like(zoom)
    return _affine(zoom, zero, zero, zoom, zero, zero)


def flip_matrix(b: int, like: Tensor) -> Tensor:
    """Horizontal mirror about the centre: ``x -> -x`` in centred pixel coordinates.

    Args:
        b: batch size.
        like: tensor giving dtype and device.

    Returns:
        ``[b, 3, 3]`` matrices.
    """
    m = torch.eye(3, dtype=like.dtype, device=like.device).repeat(b, 1, 1)
    m[:, 0, 0] = -1.0
    return m


def blend_matrix(matrix: Tensor, gate: Tensor) -> Tensor:
    """``I + gate * (matrix - I)``: the op's matrix where ``gate = 1``, the identity where ``gate = 0``.

    Args:
        matrix: ``[B, 3, 3]``.
        gate: ``[B]`` in ``[0, 1]`` (the straight-through gate carries the gradient to the probability).

    Returns:
        ``[B, 3, 3]``.
    """
    eye = _eye(matrix.shape[0], matrix)
    return eye + gate[:, None, None] * (matrix - eye)


def matmul3(a: Tensor, b: Tensor) -> Tensor:
    """Batched ``a @ b`` for ``[B, 3, 3]`` matrices (elementwise products: faster than ``bmm`` at 3 x 3).

    Args:
        a: ``[B, 3, 3]``.
        b: ``[B, 3, 3]``.

    Returns:
        ``[B, 3, 3]``.
    """
    return (a[:, :, :, None] * b[:, None, :, :]).sum(dim=2)


def warp_affine(x: Tensor, matrix: Tensor) -> Tensor:
    """Warp images with forward affine matrices in centred pixel coordinates, one bilinear pass.

    ``matrix`` maps an input pixel position (origin at the image centre, x right, y down, in pixels)
    to its output position; it is inverted analytically and converted to ``F.affine_grid``'s
    normalised sampling convention (``align_corners=False``). Outside pixels are zero.

    Args:
        x: ``[B, C, H, W]`` float images.
        matrix: ``[B, 3, 3]`` forward affine matrices (last row ``0 0 1``).

    Returns:
        ``[B, C, H, W]`` warped images, differentiable w.r.t. ``x`` and ``matrix``.
    """
    b, _, h, w = x.shape
    a, bb, tx = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
    c, d, ty = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
    det = a * d - bb * c
    ia, ib, ic, id_ = d / det, -bb / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    sx, sy = w / 2.0, h / 2.0
    # theta = S^-1 A^-1 S with S = diag(W/2, H/2): normalised output -> normalised input coordinates
    theta = torch.stack(
        [torch.stack([ia, ib * (sy / sx), itx / sx], -1), torch.stack([ic * (sx / sy), id_, ity / sy], -1)],
        -2,
    )
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(x * factor, 0, 1)`` (torchvision's brightness; kornia calls this scaling ``adjust_contrast``).

    Args:
        x: ``[B, 3, H, W]`` float images in ``[0, 1]``.
        factor: ``[B]`` multiplicative factor (ratio, 1 = unchanged).

    Returns:
        ``[B, 3, H, W]`` in ``[0, 1]``.
    """
    return kornia.enhance.adjust_contrast(x, factor, clip_output=True)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-image mean grey level (torchvision's contrast), by ``kornia.enhance``.

    Args:
        x: ``[B, 3, H, W]`` float images in ``[0, 1]``.
        factor: ``[B]`` ratio (1 = unchanged, 0 = uniform grey at the mean luma).

    Returns:
        ``[B, 3, H, W]`` ``clamp(factor * x + (1 - factor) * mean_luma, 0, 1)``.
    """
    return kornia.enhance.adjust_contrast_with_mean_subtraction(x, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grey version of each image (torchvision's saturation), by ``kornia.enhance``.

    Args:
        x: ``[B, 3, H, W]`` float images in ``[0, 1]``.
        factor: ``[B]`` ratio (1 = unchanged, 0 = grey scale).

    Returns:
        ``[B, 3, H, W]`` ``clamp(factor * x + (1 - factor) * luma(x), 0, 1)``.
    """
    return kornia.enhance.adjust_saturation_with_gray_subtraction(x, factor)


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


def soft_cutout(x: Tensor, center: Tensor, side: Tensor, fill: float = CUTOUT_FILL) -> Tensor:
    """Cutout with an anti-aliased square (see :func:`cutout_mask`), differentiable in ``side``.

    Args:
        x: ``[B, C, H, W]`` float images in ``[0, 1]``.
        center: ``[B, 2]`` centre ``(x, y)`` in pixels.
        side: ``[B]`` side length in pixels.
        fill: value written inside the square (``[0, 1]`` units).

    Returns:
        ``[B, C, H, W]`` ``x * (1 - mask) + fill * mask``.
    """
    mask = cutout_mask(center.to(x.dtype), side.to(x.dtype), x.shape[-2], x.shape[-1])
    return x + mask * (fill - x)


def deg2rad(deg: Tensor) -> Tensor:
    """Degrees to radians."""
    return deg * (math.pi / 180.0)
