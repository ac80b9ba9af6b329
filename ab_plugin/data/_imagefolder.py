"""ImageFolder trees (a directory or a .zip archive): indexing, group labels and threaded decoding."""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
import threading
import warnings
import zipfile
from bisect import bisect_left
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._recipe import CropRecipe

__all__ = [
    "IMG_EXTENSIONS",
    "ImageFolderError",
    "ImageFolderIndex",
    "FileSource",
    "open_source",
    "scan_imagefolder",
    "decode_images",
    "image_size_of",
    "warn_taken_as_is",
]

#: File extensions taken as images (case-insensitive), as in torchvision's ImageFolder.
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


class ImageFolderError(ValueError):
    """A malformed ImageFolder tree: missing folder, empty class, unreadable image, class mismatch."""


class FileSource:
    """Read-only files below a root: a directory or a zip archive (optionally with one top folder).

    Paths are POSIX paths relative to the root (in a directory, absolute paths work too). Zip handles are
    opened per thread and per process, so one source can be shared by a decoding thread pool and by
    DataLoader workers.
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.location = os.fspath(location)
        self.is_zip = os.path.isfile(self.location) and zipfile.is_zipfile(self.location)
        self._local = threading.local()
        self._prefix = ""
        self._files: list[str] | None = None
        if not self.is_zip and not os.path.isdir(self.location):
            raise ImageFolderError(
                f"image folder {self.location!r} not found (or not a directory / zip): pass a directory "
                "holding train/ and test/ (or val/) class folders, or a .zip of them"
            )
        if self.is_zip:
            names = [n for n in self._zip().namelist() if not n.endswith("/")]
            tops = {n.split("/", 1)[0] for n in names}
            if not any(n.split("/", 1)[0] in ("train", "test", "val") for n in names) and len(tops) == 1:
                self._prefix = tops.pop() + "/"  # archive with a single top folder
            self._files = sorted(n[len(self._prefix) :] for n in names if n.startswith(self._prefix))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_local"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _zip(self) -> zipfile.ZipFile:
        zf = getattr(self._local, "zf", None)
        if zf is None or getattr(self._local, "pid", None) != os.getpid():
            zf = zipfile.ZipFile(self.location)
            self._local.zf, self._local.pid = zf, os.getpid()
        return zf

    def _path(self, rel: str) -> str:
        return os.path.join(self.location, *rel.split("/")) if not os.path.isabs(rel) else rel

    def display(self, rel: str) -> str:
        """Human-readable location of ``rel`` for error messages."""
        if self.is_zip:
            return f"{self.location}:{self._prefix}{rel}"
        return self._path(rel)

    def _zip_below(self, rel: str) -> list[str]:
        """Zip members below folder ``rel`` (a contiguous range of the sorted member list)."""
        assert self._files is not None
        pre = rel.rstrip("/") + "/"
        lo = bisect_left(self._files, pre)
        hi = bisect_left(self._files, pre + "\U0010ffff", lo)
        return self._files[lo:hi]

    def isdir(self, rel: str) -> bool:
        if self.is_zip:
            return bool(self._zip_below(rel))
        return os.path.isdir(os.path.join(self.location, rel))

    def isfile(self, rel: str) -> bool:
        if self.is_zip:
            assert self._files is not None
            i = bisect_left(self._files, rel)
            return i < len(self._files) and self._files[i] == rel
        return os.path.isfile(self._path(rel))

    def subdirs(self, rel: str) -> list[str]:
        """Sorted names of the folders directly inside ``rel``."""
        if self.is_zip:
            n = len(rel.rstrip("/")) + 1
            return sorted({f[n:].split("/", 1)[0] for f in self._zip_below(rel) if "/" in f[n:]})
        base = os.path.join(self.location, rel)
        return sorted(e.name for e in os.scandir(base) if e.is_dir())

    def files_below(self, rel: str) -> list[str]:
        """All files below folder ``rel`` (recursive), as root-relative paths in ImageFolder order.

        The order is torchvision's ``sorted(os.walk(...))`` then sorted file names: by folder, then name.
        Links to folders are followed only while they stay inside ``rel`` (and never back up into a folder
        that holds them): a link out of a class folder would label another folder's images with this class,
        so it is an :class:`ImageFolderError` naming the link. Links to files are followed.
        """
        if self.is_zip:
            out = list(self._zip_below(rel))
        else:
            out = []
            base = os.path.join(self.location, rel)
            top = os.path.realpath(base)
            for root, dirs, fnames in os.walk(base, followlinks=True):
                for d in dirs:
                    link = os.path.join(root, d)
                    if os.path.islink(link):
                        self._check_folder_link(link, top, os.path.realpath(root), rel)
                sub = os.path.relpath(root, self.location).replace(os.sep, "/")
                out.extend(posixpath.join(sub, f) for f in fnames)
        return sorted(out, key=lambda p: (posixpath.dirname(p), posixpath.basename(p)))

    def _check_folder_link(self, link: str, top: str, here: str, rel: str) -> None:
        target = os.path.realpath(link)

        def inside(path: str, folder: str) -> bool:
            return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)

        if not inside(target, top) or inside(here, target):
            why = "a loop back into a folder that holds it" if inside(here, target) else "a folder outside it"
            raise ImageFolderError(
                f"{link} in {self.display(rel)!r} links to {why} ({target}): its images would be labelled "
                f"{posixpath.basename(rel)!r}; replace the link with the images it should add, or remove it"
            )

    def read(self, rel: str) -> bytes:
        if self.is_zip:
            return self._zip().read(self._prefix + rel)
        with open(self._path(rel), "rb") as fh:
            return fh.read()


def open_source(location: str | os.PathLike[str] | FileSource) -> FileSource:
    """A :class:`FileSource` for a directory or a zip path (returned unchanged if already one)."""
    return location if isinstance(location, FileSource) else FileSource(location)


@dataclass
class ImageFolderIndex:
    """File list of one split (an ImageFolder tree, a list file), before decoding: what streaming consumes.

    Attributes:
        source: where the files are.
        split: the split folder name (``train``, ``test`` or ``val``) or the list file it was read from.
        paths: ``N`` root-relative file paths (ImageFolder order, or the list file's).
        targets: int64 ``[N]`` labels.
        classes: class names (sorted class folders, or label numbers).
        groups: optional int64 ``[N]`` group labels from ``groups.csv``.
        group_names: sorted group names when ``groups`` is set.
        recipe: per-image crop recipe for streaming (:class:`CropRecipe`); ``None``: a plain resize.
    """

    source: FileSource
    split: str
    paths: list[str]
    targets: torch.Tensor
    classes: list[str]
    groups: torch.Tensor | None = None
    group_names: list[str] | None = None
    recipe: CropRecipe | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (also counting classes without samples)."""
        return len(self.classes)

    def class_counts(self) -> torch.Tensor:
        """int64 ``[C]`` samples per class."""
        return torch.bincount(self.targets, minlength=len(self.classes))

    def subset(self, index: torch.Tensor) -> ImageFolderIndex:
        """The samples at int64 ``index`` (or bool mask), in index order."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return ImageFolderIndex(
            source=self.source,
            split=self.split,
            paths=[self.paths[i] for i in index.tolist()],
            targets=self.targets[index],
            classes=list(self.classes),
            groups=None if self.groups is None else self.groups[index],
            group_names=self.group_names,
            recipe=self.recipe,
        )


def _read_groups_csv(source: FileSource) -> dict[str, str] | None:
    if not source.isfile("groups.csv"):
        return None
    text = source.read("groups.csv").decode("utf-8-sig")
    out: dict[str, str] = {}
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (lineno == 1 and [c.strip().lower() for c in row[:2]] == ["path", "group"]):
            continue
        if len(row) < 2:
            raise ImageFolderError(
                f"{source.display('groups.csv')} line {lineno}: expected 'relative/path.jpg,group_name'"
            )
        out[row[0].strip().replace("\\", "/").removeprefix("./")] = row[1].strip()
    return out


def scan_imagefolder(
    location: str | os.PathLike[str] | FileSource, split: str, *, classes: Sequence[str] | None = None
) -> ImageFolderIndex:
    """Index ``location/split/<class>/**/<image>`` without decoding anything.

    Args:
        location: directory or zip archive holding the split folders (and optionally ``groups.csv``
            with lines ``split/class/file.jpg,group_name``, header ``path,group``).
        split: split folder name, e.g. ``"train"``.
        classes: expected class names (e.g. those of the training split); a mismatch is an error.

    Raises:
        ImageFolderError: missing split folder, no class folders, a class folder without images,
            classes differing from ``classes``, samples missing from ``groups.csv``.
    """
    source = open_source(location)
    if not source.isdir(split):
        raise ImageFolderError(
            f"folder {source.display(split)!r} not found: an image folder needs {split}/<class>/<image> trees"
        )
    found = source.subdirs(split)
    if not found:
        raise ImageFolderError(f"folder {source.display(split)!r} has no class sub-folders")
    if classes is not None and list(classes) != found:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise ImageFolderError(
            f"classes of {source.display(split)!r} differ from the training classes "
            f"(missing: {missing or 'none'}, extra: {extra or 'none'}): "
            "give both splits the same class folders"
        )
    paths: list[str] = []
    targets: list[int] = []
    for c, name in enumerate(found):
        files = [p for p in source.files_below(f"{split}/{name}") if p.lower().endswith(IMG_EXTENSIONS)]
        if not files:
            raise ImageFolderError(
                f"class folder {source.display(f'{split}/{name}')!r} holds no images "
                f"({', '.join(IMG_EXTENSIONS)}): add images or remove the folder"
            )
        paths.extend(files)
        targets.extend([c] * len(files))
    index = ImageFolderIndex(source, split, paths, torch.tensor(targets, dtype=torch.int64), found)
    group_map = _read_groups_csv(source)
    if group_map is not None:
        names = [group_map.get(p) for p in paths]
        missing_paths = [p for p, g in zip(paths, names, strict=True) if g is None]
        if missing_paths:
            raise ImageFolderError(
                f"{source.display('groups.csv')} has no group for {len(missing_paths)} {split} images "
                f"(first: {missing_paths[0]}): add a 'path,group' line for every image"
            )
        group_names = sorted(set(group_map.values()))
        lut = {g: i for i, g in enumerate(group_names)}
        index.groups = torch.tensor([lut[g] for g in names if g is not None], dtype=torch.int64)
        index.group_names = group_names
    return index


def warn_taken_as_is(index: ImageFolderIndex, imbalance: float, n_max: int | None) -> None:
    """Say that an already imbalanced training tree is used as it is, with its real counts and ratio, when a
    long tail (``imbalance`` > 1 or ``n_max``) was asked for: those settings do not apply to it."""
    if imbalance <= 1 and n_max is None:
        return
    counts = index.class_counts()
    big, small = int(counts.max()), int(counts.min())
    asked = " and ".join([f"--imbalance {imbalance:g}"] * (imbalance > 1) + [f"--n-max {n_max}"] * (n_max is not None))
    warnings.warn(
        f"{index.source.display(index.split)} is already imbalanced (largest class {big} images, smallest "
        f"{small}: imbalance {big / max(small, 1):.4g}); it is used as it is and {asked} "
        f"{'do' if ' and ' in asked else 'does'} not apply",
        stacklevel=2,
    )


def _open_rgb(source: FileSource, rel: str, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image to uint8 ``[H, W, 3]``, resized (bilinear) to ``size = (H, W)`` if it differs."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source.read(rel))) as img:
            img = img.convert("RGB")
            if size is not None and (img.height, img.width) != tuple(size):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes one clear error
        raise _unreadable(source, rel, exc) from exc


def image_size_of(source: FileSource, rel: str) -> tuple[int, int]:
    """``(H, W)`` of one image, reading only its header."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source.read(rel))) as img:
            return img.height, img.width
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(source, rel, exc) from exc


def _unreadable(source: FileSource, rel: str, exc: Exception) -> ImageFolderError:
    """One line naming the file; PIL's own message names its in-memory buffer object, not the file."""
    if type(exc).__name__ == "UnidentifiedImageError":
        why = "not an image format PIL can decode (truncated, empty or not an image)"
    else:
        why = re.sub(r"\s*<[^<>]* at 0x[0-9a-f]+>", "", str(exc)).strip() or type(exc).__name__
    return ImageFolderError(f"cannot read image {source.display(rel)}: {why}; fix or remove it")


def decode_images(
    source: FileSource,
    paths: Sequence[str],
    size: tuple[int, int] | None = None,
    *,
    num_threads: int | None = None,
) -> torch.Tensor:
    """Decode images with a thread pool into one uint8 ``[N, 3, H, W]`` tensor.

    Args:
        source: where the files are.
        paths: ``N`` root-relative paths.
        size: ``(H, W)`` every image is resized to if it differs; default: the size of ``paths[0]``
            (so equally sized images are never resampled).
        num_threads: decoding threads (default: ``min(16, cpu_count)``).

    Raises:
        ImageFolderError: naming the first unreadable file.
    """
    n = len(paths)
    if size is None:
        size = image_size_of(source, paths[0]) if n else (0, 0)
    h, w = size
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    if n == 0:
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    threads = max(1, num_threads or min(16, os.cpu_count() or 1))
    chunk = max(64, -(-n // (threads * 8)))

    def work(start: int) -> None:
        for i in range(start, min(n, start + chunk)):
            out[i] = _open_rgb(source, paths[i], (h, w))

    if threads == 1 or n <= chunk:
        for s in range(0, n, chunk):
            work(s)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for fut in [pool.submit(work, s) for s in range(0, n, chunk)]:
                fut.result()
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
