"""Long-tailed datasets, stratified splits and the in-memory tensor pipeline.

Public API (everything else lives in ``_``-prefixed modules):

- containers: :class:`ImageData` (uint8 ``[N, 3, H, W]`` images, int64 labels, optional groups),
  :class:`DatasetBundle` (train / test / normalisation);
- long tails: :func:`long_tail_counts`, :func:`make_long_tailed`, :func:`split_per_class`;
- datasets: :func:`create_dataset`, :func:`list_datasets`, :func:`register_dataset`,
  :func:`load_imagefolder` (``digits-lt``, ``digits-lt-groups``, ``cifar10-lt``, ``cifar100-lt``,
  ``imagefolder:PATH``, ``imagenet-lt:ROOT``, ``places-lt:ROOT``, ``inat2018:ROOT``, ``listfile:TRAIN,TEST[,VAL]``);
- file lists (streamed, never held in memory): :func:`read_listfile`, :func:`read_coco_json`,
  :class:`ListFileError`, the per-image 224-pixel :class:`CropRecipe`; a :data:`Split` is either kind;
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
from ._listfile import ListFileError, read_coco_json, read_listfile
from ._loader import Batch, StreamingLoader, TensorLoader, create_loader
from ._longtail import LONG_TAIL_PROFILES, long_tail_counts, make_long_tailed, split_per_class
from ._recipe import IMAGENET_MEAN, IMAGENET_STD, CropRecipe
from ._transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, normalize, random_crop_flip
from ._types import DatasetBundle, ImageData, Split

__all__ = [
    "ImageData",
    "DatasetBundle",
    "Split",
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
    "ListFileError",
    "read_listfile",
    "read_coco_json",
    "CropRecipe",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
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
