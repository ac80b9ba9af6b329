"""Long-tailed datasets, stratified splits and the in-memory tensor pipeline.

Public API (everything else lives in ``_``-prefixed modules):

- containers: :class:`ImageData` (uint8 ``[N, 3, H, W]`` images, int64 labels, optional groups),
  :class:`DatasetBundle` (train / test / normalisation); a :data:`Split` is an :class:`ImageData` or, for
  the list-file datasets, an :class:`ImageFolderIndex` (file paths, decoded batch by batch in DataLoader
  workers);
- long tails: :func:`long_tail_counts`, :func:`make_long_tailed`, :func:`split_per_class`;
- datasets: :func:`create_dataset`, :func:`list_datasets`, :func:`load_imagefolder` (``digits-lt``,
  ``digits-lt-groups``, ``cifar10-lt``, ``cifar100-lt``, ``imagefolder:PATH``, ``imagenet-lt:ROOT``,
  ``places-lt:ROOT``, ``inat2018:ROOT``, ``listfile:TRAIN,TEST[,VAL]``); your own with
  :func:`register_dataset`, whose builder takes one :class:`DatasetRequest`;
- errors: :class:`ImageFolderError`, :class:`ListFileError` (both ``ValueError``, naming file and line);
- loaders: :class:`TensorLoader` (fast, on the device), :func:`create_loader` (either kind of split);
- batched transforms: :func:`random_crop_flip`, :func:`normalize`.
"""

from ._datasets import DatasetRequest, create_dataset, list_datasets, load_imagefolder, register_dataset
from ._imagefolder import ImageFolderError, ImageFolderIndex
from ._listfile import ListFileError
from ._loader import TensorLoader, create_loader
from ._longtail import long_tail_counts, make_long_tailed, split_per_class
from ._transforms import normalize, random_crop_flip
from ._types import DatasetBundle, ImageData, Split

__all__ = [
    "DatasetBundle",
    "DatasetRequest",
    "ImageData",
    "ImageFolderError",
    "ImageFolderIndex",
    "ListFileError",
    "Split",
    "TensorLoader",
    "create_dataset",
    "create_loader",
    "list_datasets",
    "load_imagefolder",
    "long_tail_counts",
    "make_long_tailed",
    "normalize",
    "random_crop_flip",
    "register_dataset",
    "split_per_class",
]
