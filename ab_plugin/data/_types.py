"""Dataset containers: :class:`ImageData` (one in-memory split) and :class:`DatasetBundle`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._imagefolder import ImageFolderIndex

__all__ = ["ImageData", "DatasetBundle", "Split"]


@dataclass
class ImageData:
    """One in-memory split of an image classification dataset.

    Attributes:
        images: uint8 ``[N, 3, H, W]`` images (values 0..255).
        targets: int64 ``[N]`` class labels in ``[0, C)``.
        classes: class names, ``classes[c]`` is the name of label ``c`` (``C = len(classes)``).
        groups: optional int64 ``[N]`` group label per sample (e.g. a sensitive attribute), in
            ``[0, len(group_names))``.
        group_names: names of the groups, required when ``groups`` is set.
    """

    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    groups: torch.Tensor | None = None
    group_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"ImageData.images must be a uint8 [N, C, H, W] tensor, got {self.images.dtype} "
                f"{tuple(self.images.shape)}: convert with (x * 255).round().to(torch.uint8)"
            )
        if self.targets.dim() != 1 or self.targets.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"ImageData.targets must be a 1-D tensor of {self.images.shape[0]} labels, "
                f"got shape {tuple(self.targets.shape)}"
            )
        if self.targets.dtype != torch.int64:
            self.targets = self.targets.long()
        if self.groups is not None:
            if self.groups.shape != self.targets.shape:
                raise ValueError(
                    f"ImageData.groups must have one label per sample ({self.targets.shape[0]}), "
                    f"got shape {tuple(self.groups.shape)}"
                )
            if self.groups.dtype != torch.int64:
                self.groups = self.groups.long()
            if self.group_names is None:
                n_groups = int(self.groups.max()) + 1 if self.groups.numel() else 0
                self.group_names = [str(i) for i in range(n_groups)]

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (``len(classes)``, also counting classes without samples)."""
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def class_counts(self) -> torch.Tensor:
        """int64 ``[C]``: number of samples per class."""
        return torch.bincount(self.targets.cpu(), minlength=self.num_classes)

    def group_counts(self) -> torch.Tensor | None:
        """int64 ``[G]`` samples per group, or ``None`` without group labels."""
        if self.groups is None:
            return None
        return torch.bincount(self.groups.cpu(), minlength=len(self.group_names or []))

    def subset(self, index: torch.Tensor) -> ImageData:
        """Samples selected by an int64 index ``[K]`` or a bool mask ``[N]``, in index order."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.to(self.targets.device)
        return ImageData(
            images=self.images[index.to(self.images.device)],
            targets=self.targets[index],
            classes=list(self.classes),
            groups=None if self.groups is None else self.groups[index.to(self.groups.device)],
            group_names=None if self.group_names is None else list(self.group_names),
        )

    def to(self, device: str | torch.device) -> ImageData:
        """A copy with all tensors on ``device`` (no copy when already there)."""
        return ImageData(
            images=self.images.to(device),
            targets=self.targets.to(device),
            classes=list(self.classes),
            groups=None if self.groups is None else self.groups.to(device),
            group_names=None if self.group_names is None else list(self.group_names),
        )

    @staticmethod
    def concat(a: ImageData, b: ImageData) -> ImageData:
        """Samples of ``a`` followed by those of ``b``; both need the same classes, image size and groups."""
        if list(a.classes) != list(b.classes):
            raise ValueError("ImageData.concat needs the same classes in the same order on both sides")
        if a.images.shape[1:] != b.images.shape[1:]:
            raise ValueError(
                f"ImageData.concat needs equal image shapes, got {tuple(a.images.shape[1:])} and "
                f"{tuple(b.images.shape[1:])}"
            )
        if (a.groups is None) != (b.groups is None) or a.group_names != b.group_names:
            raise ValueError(
                "ImageData.concat needs group labels with the same group_names on both sides, or none"
            )
        groups = None
        if a.groups is not None and b.groups is not None:
            groups = torch.cat([a.groups, b.groups.to(a.groups.device)])
        return ImageData(
            images=torch.cat([a.images, b.images.to(a.images.device)]),
            targets=torch.cat([a.targets, b.targets.to(a.targets.device)]),
            classes=list(a.classes),
            groups=groups,
            group_names=None if a.group_names is None else list(a.group_names),
        )


#: One split: decoded images in memory, or a file list streamed through DataLoader workers (list files).
Split = ImageData | ImageFolderIndex


@dataclass
class DatasetBundle:
    """A long-tailed training split, a test split and the normalisation to apply to both.

    Attributes:
        name: dataset name as given to :func:`create_dataset`.
        train: long-tailed training set.
        test: test set (balanced for the built-in datasets, as found for ImageFolder trees).
        mean, std: per-channel normalisation of images first scaled to ``[0, 1]``
            (see :func:`ab_plugin.data.normalize`).
        meta: free-form provenance (imbalance, profile, per-class counts, source path, ...).
        val: a validation split the dataset ships (ImageNet-LT's, Places-LT's): a search validates on it
            instead of splitting one off ``train``; ``None`` for the others.
    """

    name: str
    train: Split
    test: Split
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)
    val: Split | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return self.train.num_classes

    @property
    def classes(self) -> list[str]:
        """Class names, index = label."""
        return self.train.classes
