"""The 224-pixel ImageNet recipe, applied to one PIL image at a time in the DataLoader workers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["CropRecipe", "IMAGENET_MEAN", "IMAGENET_STD"]

#: ImageNet channel statistics (images scaled to [0, 1]); the list-file datasets normalise with them, since
#: a pass over a few hundred thousand JPEGs to measure their own would cost more than it changes.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CropRecipe:
    """Training: ``RandomResizedCrop(size, scale, 3/4..4/3)`` then a horizontal flip (p = 0.5); evaluation:
    the shorter side resized to ``round(size / crop_pct)`` then a centre crop of ``size`` (256 -> 224).

    Both return a ``size x size`` RGB PIL image; resampling is bilinear. Random numbers come from torch's
    generator, which the DataLoader seeds per worker, so a seeded run draws the same crops.
    """

    size: int = 224
    crop_pct: float = 0.875
    scale: tuple[float, float] = (0.08, 1.0)

    def train(self, img: Image) -> Image:
        from torchvision.transforms import InterpolationMode, RandomResizedCrop
        from torchvision.transforms import functional as TF

        top, left, h, w = RandomResizedCrop.get_params(img, list(self.scale), [3 / 4, 4 / 3])
        out = TF.resized_crop(img, top, left, h, w, [self.size, self.size], InterpolationMode.BILINEAR)
        return TF.hflip(out) if float(torch.rand(())) < 0.5 else out

    def eval(self, img: Image) -> Image:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        short = math.floor(self.size / self.crop_pct + 0.5)
        out = TF.resize(img, [short], InterpolationMode.BILINEAR)
        return TF.center_crop(out, [self.size, self.size])
