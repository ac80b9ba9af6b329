"""Batch loaders: :class:`TensorLoader` (in-memory, on the device) and :class:`StreamingLoader`."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..distributed import shard as shard_rows
from ._imagefolder import (
    FileSource,
    ImageFolderError,
    ImageFolderIndex,
    _unreadable,
    image_size_of,
    scan_imagefolder,
)
from ._types import ImageData

__all__ = ["Batch", "TensorLoader", "StreamingLoader", "create_loader"]

#: ``(x uint8 [B, 3, H, W], y int64 [B], g int64 [B] or None)``, all on the loader's device.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class _EpochOrder:
    """Epoch / batch bookkeeping shared by the loaders, resumable bit-for-bit.

    Permutations come from a CPU ``torch.Generator`` seeded with ``seed``. ``pos`` counts the batches
    already handed out in the current epoch; the generator state at the start of the epoch is kept so
    that a resumed (or re-entered) epoch redraws the same permutation.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self.pos = 0
        self._epoch_state: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _roll(self) -> None:
        if self.pos >= len(self) and self.pos > 0:
            self.epoch += 1
            self.pos = 0
            self._epoch_state = None

    def begin(self) -> torch.Tensor:
        """int64 ``[N]`` sample order of the current epoch (continuing a partly consumed epoch)."""
        self._roll()
        if not self.shuffle:
            return torch.arange(self.n)
        if self.pos == 0 or self._epoch_state is None:
            self._epoch_state = self.generator.get_state()
        else:
            self.generator.set_state(self._epoch_state)
        return torch.randperm(self.n, generator=self.generator)

    def batches(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        """Index batches from ``pos`` to the end of the epoch; ``pos`` advances as they are handed out."""
        b = self.batch_size
        while self.pos < len(self):
            i = self.pos
            self.pos += 1
            yield order[i * b : (i + 1) * b]
        self._roll()

    def state_dict(self) -> dict[str, Any]:
        self._roll()
        return {
            "epoch": self.epoch,
            "batch": self.pos,
            "seed": self.seed,
            "generator": self.generator.get_state().clone(),
            "epoch_generator": None if self._epoch_state is None else self._epoch_state.clone(),
            "num_samples": self.n,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        n, b = int(d.get("num_samples", self.n)), int(d.get("batch_size", self.batch_size))
        if (n, b) != (self.n, self.batch_size):
            raise ValueError(
                f"loader state is for {n} samples in batches of {b}, this loader has {self.n} in batches "
                f"of {self.batch_size}: resume with the same data and batch size"
            )
        self.epoch, self.pos, self.seed = int(d["epoch"]), int(d["batch"]), int(d.get("seed", self.seed))
        self.generator.set_state(d["generator"])
        eg = d.get("epoch_generator")
        self._epoch_state = None if eg is None else eg.clone()


class TensorLoader:
    """Batches an :class:`ImageData` on a device without per-sample Python work (the fast path).

    The images (uint8), labels and groups are moved to ``device`` once; each batch is one
    ``index_select``. Augmentation and normalisation are left to the caller
    (:func:`random_crop_flip`, :func:`normalize`, per-class policies).

    Iteration semantics: a ``for`` loop runs to the end of the current epoch. Leaving it early (``break``,
    ``itertools.islice``) and iterating again *continues* the same epoch, so step-based loops can draw
    batches a few at a time (e.g. 10 validation batches per hyper-step) and still see every sample once
    per epoch. Only one iterator may be active at a time.

    With ``shard=(rank, world)`` (a multi-rank run) every rank draws the same global batches of ``batch_size``
    from the same seeded order and keeps its contiguous ``1/world`` of each, so the ranks' shards are
    disjoint, cover the batch, and their union in rank order is the single-process batch.

    Yields:
        ``(x, y, g)``: x uint8 ``[B, 3, H, W]``, y int64 ``[B]``, g int64 ``[B]`` or ``None`` without
        group labels, all on ``device``. The last batch is smaller unless ``drop_last``.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.device = torch.device(device)
        self.data = data.to(self.device)
        self.batch_size = int(batch_size)
        self.shard = shard
        self._order = _EpochOrder(len(data), self.batch_size, shuffle, drop_last, seed)

    @property
    def epoch(self) -> int:
        """Number of completed epochs."""
        self._order._roll()
        return self._order.epoch

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._order)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order.begin().to(self.device)
        d = self.data
        rank, world = self.shard
        for idx in self._order.batches(order):
            idx = idx[shard_rows(len(idx), rank, world)]
            g = None if d.groups is None else d.groups.index_select(0, idx)
            yield d.images.index_select(0, idx), d.targets.index_select(0, idx), g

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batch position and generator states; with :meth:`load_state_dict` a resumed run draws
        the same batches bit-for-bit, also from the middle of an epoch."""
        return self._order.state_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (same data size and batch size required)."""
        self._order.load_state_dict(d)


class _Resize:
    """Bilinear resize to ``(H, W)`` unless the image already has that size (a class, so workers can unpickle it)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, img: Any) -> Any:
        from PIL import Image

        if (img.height, img.width) == self.size:
            return img
        return img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)


class _FolderDataset(Dataset[tuple[torch.Tensor, int, int]]):
    def __init__(self, index: ImageFolderIndex, transform: Callable[[Any], Any]) -> None:
        self.index, self.transform = index, transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        from PIL import Image

        rel = self.index.paths[i]
        src = self.index.source
        try:
            with Image.open(io.BytesIO(src.read(rel))) as img:
                arr = np.array(self.transform(img.convert("RGB")), dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001
            raise _unreadable(src, rel, exc) from exc
        g = -1 if self.index.groups is None else int(self.index.groups[i])
        return torch.from_numpy(arr).permute(2, 0, 1), int(self.index.targets[i]), g


def _from_worker(e: ImageFolderError) -> ImageFolderError:
    """The one-line error a worker raised: it reaches this process as "Caught ImageFolderError in DataLoader
    worker process N." followed by the worker's traceback, whose last line ends with the original message."""
    lines = str(e).strip().splitlines()
    if len(lines) < 2:  # raised in this process (num_workers=0): already one line
        return e
    return ImageFolderError(lines[-1].partition("ImageFolderError: ")[2] or lines[-1])


class StreamingLoader:
    """The :class:`TensorLoader` contract for image files too big for memory (ImageFolder trees, list files).

    Decodes files in ``num_workers`` DataLoader worker processes (PIL, RGB). An index with a ``recipe``
    (:class:`CropRecipe`) gets its training transform (random resized crop + flip) with ``augment``, its
    evaluation one (resize + centre crop) without; any other is resized (bilinear) to ``image_size``,
    default the first image's size. Sample order, ``state_dict`` and the continue-the-epoch semantics are
    those of :class:`TensorLoader`.

    Args:
        source: a directory / zip holding ``split/<class>/...`` (see :func:`scan_imagefolder`), or an
            already built :class:`ImageFolderIndex` (e.g. long-tailed with ``long_tail_index``, or read
            from a list file).
        split: split folder when ``source`` is a path.
        num_workers: decoding processes (0: decode in this process).
        image_size: output ``(H, W)`` (or an int) of an index without a recipe.
        augment: apply the recipe's training transform (the recipe's random crops are drawn in the workers).
        shard: ``(rank, world)``: keep this rank's slice of every global batch, as :class:`TensorLoader` does.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | ImageFolderIndex,
        batch_size: int,
        *,
        split: str = "train",
        shuffle: bool = True,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        num_workers: int = 2,
        image_size: int | tuple[int, int] | None = None,
        augment: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.shard = shard
        if isinstance(source, ImageFolderIndex):
            self.index = source
        else:
            self.index = scan_imagefolder(FileSource(source), split)
        recipe = self.index.recipe
        transform: Callable[[Any], Any]
        if recipe is not None:
            size = (recipe.size, recipe.size)
            transform = recipe.train if augment else recipe.eval
        else:
            if image_size is None:
                size = image_size_of(self.index.source, self.index.paths[0])
            elif isinstance(image_size, int):
                size = (image_size, image_size)
            else:
                size = (int(image_size[0]), int(image_size[1]))
            transform = _Resize(size)
        self.image_size = size
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self._dataset = _FolderDataset(self.index, transform)
        self._order = _EpochOrder(len(self.index), self.batch_size, shuffle, drop_last, seed)

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order.begin()
        start = self._order.pos
        b = self.batch_size
        rank, world = self.shard
        plan = [batch[shard_rows(len(batch), rank, world)].tolist()
                for batch in (order[i * b : (i + 1) * b] for i in range(start, len(self._order)))]
        loader = DataLoader(
            self._dataset,
            batch_sampler=plan,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        has_groups = self.index.groups is not None
        batches = iter(loader)
        while True:
            try:
                x, y, g = next(batches)
            except StopIteration:
                break
            except ImageFolderError as e:
                raise _from_worker(e) from None
            self._order.pos += 1
            yield (
                x.to(self.device, non_blocking=True),
                y.to(self.device, non_blocking=True),
                g.to(self.device, non_blocking=True) if has_groups else None,
            )
        self._order._roll()

    def state_dict(self) -> dict[str, Any]:
        return self._order.state_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._order.load_state_dict(d)


def create_loader(
    data_or_path: ImageData | str | os.PathLike[str] | ImageFolderIndex,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 2,
    augment: bool = False,
    shard: tuple[int, int] = (0, 1),
    **streaming: Any,
) -> TensorLoader | StreamingLoader:
    """:class:`TensorLoader` for in-memory :class:`ImageData`, :class:`StreamingLoader` for a path or index.

    ``num_workers`` and ``augment`` only concern streamed files (in-memory images need no decoding, and
    the caller's policy augments them on the device), so one call serves either kind of split. ``shard``
    is ``(rank, world)`` of a multi-rank run (see :class:`TensorLoader`). Other ``streaming`` keywords
    (``split``, ``image_size``) go to :class:`StreamingLoader`.
    """
    if isinstance(data_or_path, ImageData):
        if streaming:
            raise TypeError(f"unexpected keywords for in-memory data: {sorted(streaming)}")
        return TensorLoader(
            data_or_path, batch_size, shuffle=shuffle, drop_last=drop_last, device=device, seed=seed, shard=shard
        )
    return StreamingLoader(data_or_path, batch_size, shuffle=shuffle, drop_last=drop_last, device=device, seed=seed,
                           num_workers=num_workers, augment=augment, shard=shard, **streaming)
