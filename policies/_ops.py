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
per sample by ``kornia.geometry`` and applied by a single bilinear warp with zero padding; the colour
ops are ``kornia.enhance``'s; cutout is a kornia ``OperationBase`` (``ab_plugin.policies._cutout``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from torch import Tensor

__all__ = [
    "OPS",
    "GEOMETRIC_OPS",
    "COLOR_OPS",
    "APPLY_ORDER",
    "OpSpec",
    "relaxed_bernoulli_gate",
    "crop_flip",
    "affine_matrix",
    "warp",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
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


def affine_matrix(translation: Tensor, angle: Tensor, zoom: Tensor, shear: Tensor, mirror: Tensor,
                  height: int, width: int) -> Tensor:
    """One forward affine matrix per sample, composed by ``kornia.geometry.transform.get_affine_matrix2d``.

    The image is sheared, mirrored and zoomed, rotated (all about the image centre ``((W-1)/2, (H-1)/2)``)
    and then translated. Zoom and mirror commute with the shear about the same centre, so this is the order
    scale, shear, rotate, translate of :data:`GEOMETRIC_OPS` with the mirror folded into the scale.

    Args:
        translation: ``[B, 2]`` shift ``(dx, dy)`` in pixels (x right, y down).
        angle: ``[B]`` rotation in degrees (kornia: positive is clockwise on screen).
        zoom: ``[B]`` isotropic zoom factor (ratio; > 1 enlarges the content).
        shear: ``[B, 2]`` shear factors ``(k_x, k_y)`` (tangent of the shear angle; kornia shears by
            ``-k``, which the random sign of the policies makes immaterial).
        mirror: ``[B]`` ``1.0`` (keep) or ``-1.0`` (horizontal mirror); in between scales x.
        height: image height ``H`` in pixels.
        width: image width ``W`` in pixels.

    Returns:
        ``[B, 3, 3]`` homogeneous matrices in pixel coordinates, differentiable w.r.t. every argument.
    """
    b = angle.shape[0]
    center = angle.new_tensor([(width - 1) / 2.0, (height - 1) / 2.0]).expand(b, 2)
    scale = torch.stack([zoom * mirror, zoom], -1)
    return get_affine_matrix2d(translation, center, scale, angle, sx=torch.atan(shear[:, 0]),
                               sy=torch.atan(shear[:, 1]))


def warp(x: Tensor, matrix: Tensor) -> Tensor:
    """Warp images with forward affine matrices in one bilinear pass (``kornia.geometry.transform.warp_affine``).

    Args:
        x: ``[B, C, H, W]`` float images.
        matrix: ``[B, 3, 3]`` forward matrices in pixel coordinates (from :func:`affine_matrix`).

    Returns:
        ``[B, C, H, W]`` warped images (zero outside the source), differentiable w.r.t. ``x`` and ``matrix``.
    """
    h, w = x.shape[-2:]
    # align_corners=True: pixel centres sit on the integer grid get_affine_matrix2d's centre assumes
    return warp_affine(x, matrix[:, :2, :], (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)


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
