"""Long-tailed datasets, stratified splits and the in-memory tensor pipeline.

Public API (everything else lives in ``_``-prefixed modules):

- containers: :class:`ImageData` (uint8 ``[N, 3, H, W]`` images, int64 labels, optional groups),
  :class:`DatasetBundle` (train / test / normalisation);
- long tails: :func:`long_tail_counts`, :func:`make_long_tailed`, :func:`split_per_class`;
- datasets: :func:`create_dataset`, :func:`list_datasets`, :func:`register_dataset`,
  :func:`load_imagefolder` (``digits-lt``, ``digits-lt-groups``, ``cifar10-lt``, ``cifar100-lt``,
  ``imagefolder:PATH``);
- loaders: :class:`TensorLoader` (fast, on the device), :class:`StreamingLoader`, :func:`create_loader`;
- batched transforms: :func:`random_crop_flip`, :func:`normalize`.
"""

from ._datasets import (
    channel_stats,
    create_dataset,
    list_datasets,
    load_imagefolder,
    long_tail_index,
    register_dataset,
)
from ._imagefolder import ImageFolderError, ImageFolderIndex, scan_imagefolder
from ._loader import Batch, StreamingLoader, TensorLoader, create_loader
from ._longtail import LONG_TAIL_PROFILES, long_tail_counts, make_long_tailed, split_per_class
from ._transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, normalize, random_crop_flip
from ._types import DatasetBundle, ImageData

__all__ = [
    "ImageData",
    "DatasetBundle",
    "LONG_TAIL_PROFILES",
    "long_tail_counts",
    "make_long_tailed",
    "split_per_class",
    "create_dataset",
    "list_datasets",
    "register_dataset",
    "load_imagefolder",
    "channel_stats",
    "ImageFolderError",
    "ImageFolderIndex",
    "scan_imagefolder",
    "long_tail_index",
    "Batch",
    "TensorLoader",
    "StreamingLoader",
    "create_loader",
    "random_crop_flip",
    "normalize",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
]
