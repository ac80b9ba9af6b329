"""What the network is fed: the list-file datasets' crop size and the normalisation, decided here only.

Normalisation (per channel, of images scaled to ``[0, 1]``), first match wins:

1. the user's ``--mean`` / ``--std`` (each on its own);
2. a timm model starting from pretrained weights (``--pretrained`` or ``--pretrained-file``): its
   ``pretrained_cfg`` mean / std, since its weights expect inputs normalised the way they were trained;
3. the dataset's (:class:`~ab_plugin.data.DatasetBundle` ``mean`` / ``std``: measured on the training images,
   ImageNet's for the list-file datasets).

A CIFAR ResNet from ``--pretrained-file`` keeps the dataset's: its ``pretrained_cfg`` holds generic CIFAR-10
statistics, not those of whatever data the checkpoint was trained on.

Crop size of the list-file datasets' 224-pixel recipe: ``--image-size``, else the pretrained timm model's input
size, else 224. In-memory datasets keep their native size unless ``--image-size`` is given (resizing CIFAR to
224 pixels in memory would take 49 times the memory, a choice for the user).
"""

from __future__ import annotations

from typing import Any

import timm
from timm.utils import unwrap_model
from torch import nn

from .config import Config
from .data import DatasetBundle
from .models import list_backbones

__all__ = ["crop_size", "normalization"]

RGB = tuple[float, float, float]


def _pretrained_timm(cfg: Config) -> bool:
    """Whether ``cfg`` starts a timm model (not a CIFAR ResNet) from pretrained weights."""
    pretrained = cfg.pretrained or cfg.pretrained_file is not None
    return pretrained and cfg.backbone.removesuffix("_cifar") not in list_backbones()


def crop_size(cfg: Config) -> int | None:
    """The list-file datasets' crop size in pixels (``create_dataset(crop_size=...)``) when ``cfg.image_size``
    does not set it: the pretrained timm model's ``input_size`` (its default pretrained cfg); ``None``: 224."""
    if cfg.image_size is not None or not _pretrained_timm(cfg):
        return None
    pc = timm.models.get_pretrained_cfg(cfg.backbone)
    return int(pc.input_size[-1]) if pc is not None and pc.input_size else None


def normalization(cfg: Config, model: nn.Module, bundle: DatasetBundle) -> tuple[RGB, RGB]:
    """``(mean, std)``, 3 values each, that ``model`` is fed with (see the module's docstring for the order).
    ``model``'s own ``pretrained_cfg`` counts (a ``pretrained_cfg_overlay`` included), unwrapped first."""
    pc: dict[str, Any] = getattr(unwrap_model(model), "pretrained_cfg", None) or {}
    use_model = _pretrained_timm(cfg) and pc.get("mean") is not None and pc.get("std") is not None
    mean = cfg.mean or (pc["mean"] if use_model else bundle.mean)
    std = cfg.std or (pc["std"] if use_model else bundle.std)
    return _rgb(mean), _rgb(std)


def _rgb(v: Any) -> RGB:
    a, b, c = (float(x) for x in v)
    return a, b, c
