"""Dataset builders: embedded digits, CIFAR-10/100-LT, ImageFolder(-LT) trees, list files (ImageNet-LT,
Places-LT, iNaturalist 2018, ``listfile:``); ``create_dataset``."""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._registry import Registry
from ._imagefolder import (
    FileSource,
    ImageFolderError,
    ImageFolderIndex,
    decode_images,
    image_size_of,
    scan_imagefolder,
    warn_taken_as_is,
)
from ._listfile import read_coco_json, read_listfile
from ._longtail import _rank_within_class, long_tail_counts, make_long_tailed
from ._recipe import IMAGENET_MEAN, IMAGENET_STD, CropRecipe
from ._transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ._types import DatasetBundle, ImageData

__all__ = [
    "DatasetRequest",
    "create_dataset",
    "list_datasets",
    "register_dataset",
    "load_imagefolder",
    "long_tail_index",
    "channel_stats",
    "DIGITS_TEST_PER_CLASS",
]

#: Test images per class of ``digits-lt`` (the last ones of each class in scikit-learn's order).
DIGITS_TEST_PER_CLASS = 30
_IMAGEFOLDER = "imagefolder"
_LISTFILE = "listfile"
#: List-file benchmarks: name -> prefix of the ``PREFIX_train.txt`` / ``_val.txt`` / ``_test.txt`` in ROOT.
_LIST_BENCHMARKS = {"imagenet-lt": "ImageNet_LT", "places-lt": "Places_LT"}
_INAT = "inat2018"
#: Datasets whose name takes a path (``name:PATH``); the others take no argument.
_TAKES_PATH = (_IMAGEFOLDER, *_LIST_BENCHMARKS, _INAT, _LISTFILE)


@dataclass(frozen=True)
class DatasetRequest:
    """What :func:`create_dataset` asks a registered builder for (see :func:`create_dataset` for each field).

    ``data_dir`` is the path of a ``name:PATH`` spec when one was given; ``image_size`` is ``(H, W)`` or
    ``None`` (keep the native size; the list-file datasets: a ``crop_size`` crop, default 224 pixels).
    """

    data_dir: str | None = None
    imbalance: float = 100.0
    profile: str = "exp"
    n_max: int | None = None
    download: bool = False
    image_size: tuple[int, int] | None = None
    crop_size: int | None = None


#: A registered dataset builder: ``builder(request) -> DatasetBundle``.
DatasetBuilder = Callable[[DatasetRequest], DatasetBundle]

_DATASETS: Registry[DatasetBundle] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering ``builder(request: DatasetRequest) -> DatasetBundle`` under ``name`` for
    :func:`create_dataset`."""
    return _DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`create_dataset`; ``imagefolder``, the list-file datasets and ``listfile`` take a
    path (``imagefolder:PATH``)."""
    return _DATASETS.names()


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images scaled to ``[0, 1]`` (chunked, float64)."""
    n, c = images.shape[:2]
    if n == 0:
        return (0.5,) * c, (0.25,) * c
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, n, chunk):
        x = images[i : i + chunk].to(torch.float64).div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        s2 += x.square().sum(dim=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = s / count
    std = (s2 / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _rgb3(stats: tuple[float, ...]) -> tuple[float, float, float]:
    return float(stats[0]), float(stats[1]), float(stats[2])


def _lt_meta(counts: list[int], imbalance: float, profile: str, **extra: Any) -> dict[str, Any]:
    return {"train_counts": list(counts), "imbalance": imbalance, "profile": profile, **extra}


# ---------------------------------------------------------------------------------------------- digits


def _load_digits_array() -> tuple[np.ndarray, np.ndarray]:
    """The embedded 8x8 digits: ``[1797, 8, 8]`` floats 0..16 and int64 labels ``[1797]``.

    ``digits.csv.gz`` beside this module is scikit-learn's file, unchanged (BSD-3, credit and licence in
    ``digits.NOTICE``): one row per image, 64 pixel values then the label.
    """
    with importlib.resources.files(__package__).joinpath("digits.csv.gz").open("rb") as raw:
        with gzip.open(raw, "rt") as fh:
            data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_rgb32() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as uint8 ``[1797, 3, 32, 32]`` (0..16 to 0..255, bilinear x4, grey to RGB), int64 ``[1797]``."""
    images, target = _load_digits_array()
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)  # [N, 1, 8, 8]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, torch.as_tensor(target, dtype=torch.int64)


def _digits_split(
    imbalance: float, profile: str, n_max: int | None
) -> tuple[ImageData, ImageData, list[int]]:
    images, targets = _digits_rgb32()
    full = ImageData(images, targets, [str(i) for i in range(10)])
    # test = the last DIGITS_TEST_PER_CLASS samples of each class, train = the rest (dataset order)
    counts = full.class_counts()
    rank_from_end = counts[targets] - 1 - _rank_within_class(targets)
    is_test = rank_from_end < DIGITS_TEST_PER_CLASS
    train_all = full.subset(~is_test)
    test = full.subset(is_test)
    available = int(train_all.class_counts().min())  # 144
    head = available if n_max is None else int(n_max)
    lt = long_tail_counts(head, 10, imbalance, profile)
    lt = [max(2, n) for n in lt]  # every class keeps >= 2 so that a per-class 80/20 split works
    return make_long_tailed(train_all, lt), test, lt


@register_dataset("digits-lt")
def _build_digits_lt(req: DatasetRequest) -> DatasetBundle:
    """Embedded, offline: scikit-learn's 8x8 digits as 32x32 RGB; 30 test images per class (balanced).

    Training counts with the defaults (``n_max = 144``, the smallest per-class training count,
    ``imbalance = 100``, ``exp``): ``[144, 87, 52, 32, 19, 12, 7, 5, 3, 2]`` (363 images); every class
    keeps at least 2 images.
    """
    train, test, counts = _digits_split(req.imbalance, req.profile, req.n_max)
    train, test = _maybe_resize(train, req.image_size), _maybe_resize(test, req.image_size)
    mean, std = channel_stats(train.images)
    return DatasetBundle(
        "digits-lt",
        train,
        test,
        _rgb3(mean),
        _rgb3(std),
        _lt_meta(counts, req.imbalance, req.profile, source="sklearn.datasets.load_digits"),
    )


def _digit_groups(data: ImageData, minority_every: int, minority_offset: int) -> ImageData:
    """Group 1 (``inverted``): samples whose rank within their class ``r`` has
    ``r % minority_every == minority_offset``; their images are colour-inverted."""
    rank = _rank_within_class(data.targets)
    groups = (rank % minority_every == minority_offset).long()
    images = data.images.clone()
    inv = groups.bool()
    images[inv] = 255 - images[inv]
    return ImageData(images, data.targets.clone(), list(data.classes), groups, ["original", "inverted"])


@register_dataset("digits-lt-groups")
def _build_digits_lt_groups(req: DatasetRequest) -> DatasetBundle:
    """``digits-lt`` plus a binary group: group 1 (``inverted``) images are colour-inverted.

    Group 1 is rare in training (the samples of rank 5, 15, 25, ... within each class: 35 of 363 images,
    9.6 %, none in the 3 smallest classes) and half of the test set (every second image of each class).
    """
    train, test, counts = _digits_split(req.imbalance, req.profile, req.n_max)
    train, test = _digit_groups(train, 10, 5), _digit_groups(test, 2, 1)
    train, test = _maybe_resize(train, req.image_size), _maybe_resize(test, req.image_size)
    mean, std = channel_stats(train.images)
    return DatasetBundle(
        "digits-lt-groups",
        train,
        test,
        _rgb3(mean),
        _rgb3(std),
        _lt_meta(
            counts,
            req.imbalance,
            req.profile,
            source="sklearn.datasets.load_digits",
            groups="1 = colour-inverted; ~10% of train, 50% of test",
        ),
    )


def _maybe_resize(data: ImageData, size: tuple[int, int] | None) -> ImageData:
    if size is None or data.image_size == tuple(size):
        return data
    x = F.interpolate(data.images.float(), size=tuple(size), mode="bilinear", align_corners=False)
    images = x.round_().clamp_(0, 255).to(torch.uint8)
    return ImageData(images, data.targets, data.classes, data.groups, data.group_names)


# ----------------------------------------------------------------------------------------------- CIFAR


def _is_imagefolder(path: str) -> bool:
    is_zip = os.path.isfile(path) and path.lower().endswith(".zip")
    return is_zip or os.path.isdir(os.path.join(path, "train"))


def _cifar(which: int, req: DatasetRequest) -> DatasetBundle:
    name = f"cifar{which}-lt"
    pretty = f"CIFAR-{which}"
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if which == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    head = req.n_max if req.n_max is not None else (5000 if which == 10 else 500)
    root = os.path.expanduser(req.data_dir) if req.data_dir is not None else "data"
    if _is_imagefolder(root):  # e.g. the CIFAR-10 JPEG archive or its extracted tree
        bundle = load_imagefolder(
            root,
            imbalance=req.imbalance,
            profile=req.profile,
            n_max=head,
            image_size=req.image_size,
            name=name,
            force_long_tail=True,
        )
        bundle.mean, bundle.std = mean, std
        return bundle
    import torchvision

    cls = torchvision.datasets.CIFAR10 if which == 10 else torchvision.datasets.CIFAR100
    try:
        tr = cls(root=root, train=True, download=req.download)
        te = cls(root=root, train=False, download=req.download)
    except RuntimeError as exc:
        msg = f"{pretty} not found in {root}: pass --download or --data-dir pointing at it"
        raise ValueError(msg) from exc

    def convert(ds: Any) -> ImageData:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return ImageData(images, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))

    train, test = convert(tr), convert(te)
    counts = long_tail_counts(head, train.num_classes, req.imbalance, req.profile)
    train = make_long_tailed(train, counts)
    train, test = _maybe_resize(train, req.image_size), _maybe_resize(test, req.image_size)
    return DatasetBundle(name, train, test, mean, std, _lt_meta(counts, req.imbalance, req.profile, source=root))


@register_dataset("cifar10-lt")
def _build_cifar10_lt(req: DatasetRequest) -> DatasetBundle:
    """CIFAR-10-LT (``n_max`` 5000 by default) from torchvision's binary release in ``data_dir``, or
    from an ImageFolder tree / zip (e.g. ``cifar10-jpg.zip``) when ``data_dir`` is one."""
    return _cifar(10, req)


@register_dataset("cifar100-lt")
def _build_cifar100_lt(req: DatasetRequest) -> DatasetBundle:
    """CIFAR-100-LT (``n_max`` 500 by default), as :func:`_build_cifar10_lt`."""
    return _cifar(100, req)


# ----------------------------------------------------------------------------------------- ImageFolder


def long_tail_index(
    index: ImageFolderIndex, imbalance: float, profile: str, n_max: int | None, *, force: bool = False
) -> tuple[ImageFolderIndex, list[int]]:
    """Long-tail a training index before decoding.

    A balanced tree (all classes the same size) is cut to ``long_tail_counts(n_max or that size, C,
    imbalance, profile)`` (the first files of each class); an already imbalanced tree is taken as it is
    (with a warning naming its counts when a long tail was asked for), unless ``force``.
    """
    have = index.class_counts()
    balanced = bool((have == have[0]).all())
    if not balanced and not force:
        warn_taken_as_is(index, imbalance, n_max)
        return index, have.tolist()
    head = int(n_max) if n_max is not None else int(have.max())
    counts = long_tail_counts(head, len(index.classes), imbalance, profile)
    short = [c for c, k in enumerate(counts) if k > int(have[c])]
    if short:
        c = short[0]
        raise ImageFolderError(
            f"class {index.classes[c]!r} of {index.source.display(index.split)!r} has {int(have[c])} images "
            f"but the long tail asks {counts[c]}: lower n_max"
        )
    want = torch.as_tensor(counts)
    keep = _rank_within_class(index.targets) < want[index.targets]
    return index.subset(keep), counts


def _decode(index: ImageFolderIndex, size: tuple[int, int] | None, num_threads: int | None) -> ImageData:
    images = decode_images(index.source, index.paths, size, num_threads=num_threads)
    return ImageData(images, index.targets.clone(), list(index.classes), index.groups, index.group_names)


def load_imagefolder(
    location: str | os.PathLike[str],
    *,
    imbalance: float = 100.0,
    profile: str = "exp",
    n_max: int | None = None,
    image_size: tuple[int, int] | None = None,
    name: str | None = None,
    num_threads: int | None = None,
    force_long_tail: bool = False,
) -> DatasetBundle:
    """Load ``location/train`` and ``location/test`` (or ``val``) ImageFolder trees into memory; with all three,
    ``val`` is the validation split (``bundle.val``).

    ``location`` is a directory or a zip archive of one. The training tree is long-tailed *before*
    decoding (see :func:`long_tail_index`), so only kept files are decoded (thread pool, PIL, RGB).
    Images keep their size unless they differ: then all are resized (bilinear) to ``image_size``,
    default the size of the first training image. Optional ``groups.csv`` (``path,group`` lines,
    root-relative paths) sets group labels. ``mean``/``std`` are computed on the (long-tailed) training set.

    Raises:
        ImageFolderError (a ValueError): missing folder, empty class folder, unreadable image (named),
            test classes differing from training classes.
    """
    source = FileSource(location)
    train_idx = scan_imagefolder(source, "train")
    test_split = "test" if source.isdir("test") else "val" if source.isdir("val") else "test"
    test_idx = scan_imagefolder(source, test_split, classes=train_idx.classes)
    val_idx = scan_imagefolder(source, "val", classes=train_idx.classes) if test_split == "test" and source.isdir(
        "val") else None  # train/, val/ and test/: val/ is the search's validation split, as in timm
    if imbalance > 1 or n_max is not None or force_long_tail:
        train_idx, counts = long_tail_index(train_idx, imbalance, profile, n_max, force=force_long_tail)
    else:
        counts = train_idx.class_counts().tolist()
    if image_size is None and len(train_idx):
        image_size = image_size_of(source, train_idx.paths[0])
    train = _decode(train_idx, image_size, num_threads)
    test = _decode(test_idx, image_size, num_threads)
    val = _decode(val_idx, image_size, num_threads) if val_idx is not None else None
    mean, std = channel_stats(train.images)
    label = name or f"{_IMAGEFOLDER}:{os.fspath(location)}"
    meta = _lt_meta(counts, imbalance, profile, source=os.fspath(location), test_split=test_split)
    return DatasetBundle(label, train, test, _rgb3(mean), _rgb3(std), meta, val=val)


@register_dataset(_IMAGEFOLDER)
def _build_imagefolder(req: DatasetRequest) -> DatasetBundle:
    if not req.data_dir:
        raise ValueError("imagefolder needs a path: use 'imagefolder:PATH' or pass data_dir=PATH")
    long_tail_counts(1, 1, req.imbalance, req.profile)  # validate the arguments before touching the disk
    return load_imagefolder(os.path.expanduser(req.data_dir), imbalance=req.imbalance, profile=req.profile,
                            n_max=req.n_max, image_size=req.image_size, name=f"{_IMAGEFOLDER}:{req.data_dir}")


# ------------------------------------------------------------------------------------------ list files


def _need_path(kind: str, data_dir: str | None, what: str) -> str:
    if not data_dir:
        raise ValueError(f"{kind} needs a path: use '{kind}:{what}' (or pass data_dir={what})")
    return os.path.expanduser(data_dir)


def _streamed(name: str, train: ImageFolderIndex, test: ImageFolderIndex, val: ImageFolderIndex | None,
              req: DatasetRequest, *, source: str) -> DatasetBundle:
    """A bundle of file lists, decoded batch by batch in DataLoader workers with the 224-pixel recipe (crop
    ``image_size`` if given, else ``crop_size``, else 224) and normalised with the ImageNet statistics. A
    balanced training list is long-tailed as an ImageFolder tree is (:func:`long_tail_index`); an imbalanced
    one is kept."""
    imbalance, profile, image_size = req.imbalance, req.profile, req.image_size
    if image_size is not None and image_size[0] != image_size[1]:
        raise ValueError(f"{name}: the crop recipe makes square images, got image_size {image_size}")
    recipe = CropRecipe(size=image_size[0] if image_size is not None else req.crop_size or CropRecipe.size)
    if imbalance > 1 or req.n_max is not None:
        train, counts = long_tail_index(train, imbalance, profile, req.n_max)
    else:
        counts = train.class_counts().tolist()
    for split in (train, test, val):
        if split is not None:
            split.recipe = recipe
    meta = _lt_meta(counts, imbalance, profile, source=source, recipe=f"{recipe.size}px crop")
    return DatasetBundle(name, train, test, IMAGENET_MEAN, IMAGENET_STD, meta, val=val)


def _build_list_benchmark(kind: str, prefix: str, req: DatasetRequest) -> DatasetBundle:
    """ImageNet-LT / Places-LT: ``ROOT/PREFIX_{train,val,test}.txt`` with ROOT-relative image paths; the search
    validates on the val list."""
    root = _need_path(kind, req.data_dir, "ROOT")
    train, val, test = (os.path.join(root, f"{prefix}_{s}.txt") for s in ("train", "val", "test"))
    train_idx = read_listfile(train)
    val_idx = read_listfile(val, num_classes=train_idx.num_classes)
    test_idx = read_listfile(test, num_classes=train_idx.num_classes)
    return _streamed(f"{kind}:{req.data_dir}", train_idx, test_idx, val_idx, req, source=root)


for _name, _prefix in _LIST_BENCHMARKS.items():
    register_dataset(_name)(functools.partial(_build_list_benchmark, _name, _prefix))


@register_dataset(_INAT)
def _build_inat2018(req: DatasetRequest) -> DatasetBundle:
    """iNaturalist 2018: ``ROOT/train2018.json`` and ``ROOT/val2018.json`` (COCO-style). It has no public test
    labels, so val2018 is the test set, as in the literature; the search splits its validation off train."""
    root = _need_path(_INAT, req.data_dir, "ROOT")
    train, category_ids = read_coco_json(os.path.join(root, "train2018.json"))
    test, _ = read_coco_json(os.path.join(root, "val2018.json"), category_ids=category_ids)
    return _streamed(f"{_INAT}:{req.data_dir}", train, test, None, req, source=root)


@register_dataset(_LISTFILE)
def _build_listfile(req: DatasetRequest) -> DatasetBundle:
    """``listfile:TRAIN.txt,TEST.txt[,VAL.txt]``: any ``path label`` lists (see :func:`read_listfile`); with a
    VAL list the search validates on it, without one it splits its validation off TRAIN."""
    spec = _need_path(_LISTFILE, req.data_dir, "TRAIN.txt,TEST.txt")
    files = [os.path.expanduser(f.strip()) for f in spec.split(",")]
    if len(files) not in (2, 3) or not all(files):
        raise ValueError(f"listfile takes TRAIN.txt,TEST.txt or TRAIN.txt,TEST.txt,VAL.txt, got {req.data_dir!r}")
    train = read_listfile(files[0])
    test, *val = (read_listfile(f, num_classes=train.num_classes) for f in files[1:])
    return _streamed(f"{_LISTFILE}:{req.data_dir}", train, test, val[0] if val else None, req, source=files[0])


# ------------------------------------------------------------------------------------------- factory


def _as_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def create_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    imbalance: float = 100.0,
    profile: str = "exp",
    n_max: int | None = None,
    download: bool = False,
    image_size: int | tuple[int, int] | None = None,
    crop_size: int | None = None,
) -> DatasetBundle:
    """Build a long-tailed dataset by name.

    Names (see :func:`list_datasets`):

    - ``digits-lt``: embedded (scikit-learn digits, no network), 32x32 RGB, balanced 300-image test set.
    - ``digits-lt-groups``: ``digits-lt`` with a rare colour-inverted group (``groups`` set).
    - ``cifar10-lt`` / ``cifar100-lt``: torchvision's CIFAR in ``data_dir`` (default ``./data``; an
      ImageFolder tree or zip such as ``cifar10-jpg.zip`` also works), ``n_max`` 5000 / 500 by default.
    - ``imagefolder:PATH`` (or ``imagefolder`` with ``data_dir=PATH``): ``PATH/train`` and ``PATH/test``
      (or ``val``) class folders, a directory or a zip; a balanced training tree is long-tailed with
      ``long_tail_counts(n_max or its class size, C, imbalance, profile)``, an imbalanced one is kept.
    - ``imagenet-lt:ROOT`` / ``places-lt:ROOT``: ``ROOT/ImageNet_LT_{train,val,test}.txt`` (``Places_LT_...``),
      lines ``relative/path.JPEG label``; the search validates on the val list.
    - ``inat2018:ROOT``: ``ROOT/train2018.json`` and ``ROOT/val2018.json`` (the test set, as in the literature).
    - ``listfile:TRAIN.txt,TEST.txt[,VAL.txt]``: any such lists (paths relative to each list's folder).

    The list-file datasets are not decoded here: their splits are :class:`ImageFolderIndex` file lists
    that the loaders decode in DataLoader workers with the 224-pixel recipe (:class:`CropRecipe`); a
    missing file, a label out of range or a missing image is a :class:`ListFileError` naming file and line.

    Args:
        imbalance: ``rho = n_max / n_min`` (>= 1; 1 keeps the tree balanced).
        profile: ``exp``, ``exp_floor`` or ``step`` (see :func:`long_tail_counts`).
        n_max: head-class count (default: dataset-specific, see above).
        download: allow torchvision to download CIFAR (never done otherwise).
        image_size: ``(H, W)`` or an int: resize every image to it (default: keep the native size); for
            the list-file datasets, the crop size (default ``crop_size``).
        crop_size: the list-file datasets' crop size (pixels, square) when ``image_size`` is not given
            (default 224); the other datasets ignore it.

    Raises:
        ValueError: unknown name (listing the known ones), missing data, bad long-tail arguments.
    """
    kind, path = _DATASETS.split(name)
    if path is not None and kind not in _TAKES_PATH:
        takers = ", ".join(f"{k}:PATH" for k in _TAKES_PATH)
        raise ValueError(f"dataset {kind!r} takes no ':' argument (only {takers} do), got {name!r}")
    request = DatasetRequest(data_dir=path or data_dir, imbalance=imbalance, profile=profile, n_max=n_max,
                             download=download, image_size=_as_size(image_size),
                             crop_size=crop_size)
    return _DATASETS.create(kind, request)
