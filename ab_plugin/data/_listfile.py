"""Split list files (ImageNet-LT, Places-LT, any ``path label`` list) and COCO-style annotation files
(iNaturalist 2018), read into the :class:`ImageFolderIndex` that streaming consumes; nothing is decoded here.

Every problem is one :class:`ListFileError` line naming the file and the line (list files) or the entry
(JSON files, which are often a single line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from ._imagefolder import FileSource, ImageFolderError, ImageFolderIndex

__all__ = ["ListFileError", "read_listfile", "read_coco_json"]


class ListFileError(ImageFolderError):
    """A malformed list or annotation file, a label out of range or a missing image (file and line named)."""


def _read_text(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise ListFileError(f"{what} {path} not found: check the path (and the dataset's root folder)")
    with open(path, encoding="utf-8-sig") as fh:
        return fh.read()


def _check_classes(path: str, targets: torch.Tensor, num_classes: int) -> None:
    """Every class of a training list needs images: a class without any has no prior to balance."""
    empty = (torch.bincount(targets, minlength=num_classes) == 0).nonzero().flatten().tolist()
    if empty:
        raise ListFileError(f"{path}: class {empty[0]} has no images ({len(empty)} classes have none): labels "
                            f"must be 0..{num_classes - 1} with every class present")


def read_listfile(path: str | os.PathLike[str], *, num_classes: int | None = None,
                  check_files: bool = True) -> ImageFolderIndex:
    """Read a list file of ``relative/path.jpg label`` lines (blank lines skipped).

    Paths are relative to the list file's folder unless absolute; labels are integers ``0..C-1``.

    Args:
        path: the list file.
        num_classes: ``C`` of the training list this one must match (a test / validation list); ``None``
            (a training list): ``C`` is the largest label + 1, and every class must have an image.
        check_files: check that every image exists (one ``stat`` per line).

    Returns:
        An index whose ``classes`` are ``"0" .. "C-1"`` and ``split`` the list file's name.

    Raises:
        ListFileError: a missing file, a line without a label, a label out of range, a missing image.
    """
    path = os.fspath(path)
    root = os.path.dirname(os.path.abspath(path))
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    for lineno, line in enumerate(_read_text(path, "list file").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ListFileError(f"{path} line {lineno}: expected 'relative/path.jpg label', got {line.strip()!r:.80}")
        label = int(parts[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            valid = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise ListFileError(f"{path} line {lineno}: label {label} out of range ({valid})")
        paths.append(parts[0].replace("\\", "/"))
        labels.append(label)
        lines.append(lineno)
    if not paths:
        raise ListFileError(f"{path} lists no images: expected 'relative/path.jpg label' lines")
    source = FileSource(root)
    if check_files:
        for rel, lineno in zip(paths, lines, strict=True):
            if not source.isfile(rel):
                raise ListFileError(f"{path} line {lineno}: image {source.display(rel)} not found")
    targets = torch.tensor(labels, dtype=torch.int64)
    if num_classes is None:
        num_classes = int(targets.max()) + 1
        _check_classes(path, targets, num_classes)
    return ImageFolderIndex(source, os.path.basename(path), paths, targets, [str(c) for c in range(num_classes)])


def _entries(data: Any, key: str, fields: Sequence[str], path: str) -> list[dict[str, Any]]:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ListFileError(f"{path}: no {key!r} list (a COCO-style file has 'images', 'annotations', 'categories')")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or any(f not in item for f in fields):
            raise ListFileError(f"{path} {key}[{i}]: expected an object with {', '.join(map(repr, fields))}")
    return items


def read_coco_json(path: str | os.PathLike[str], *, category_ids: Sequence[int] | None = None,
                   check_files: bool = True) -> tuple[ImageFolderIndex, list[int]]:
    """Read a COCO-style classification file (iNaturalist's ``train2018.json`` / ``val2018.json``).

    ``images`` (``id``, ``file_name``) are taken in file order with the ``category_id`` of their annotation
    (``annotations``: ``image_id``, ``category_id``; one per image); ``file_name`` is relative to the JSON
    file's folder unless absolute. Labels number the ``categories`` (``id``, ``name``) by sorted id.

    Args:
        path: the JSON file.
        category_ids: the sorted category ids of the training file this one must match (the test file).
        check_files: check that every image exists.

    Returns:
        An index with ``classes`` = category names, and the category ids: label ``c`` is ``ids[c]`` (the
        ``c``-th smallest id of the training file), what the test file is read with.

    Raises:
        ListFileError: naming the file and the entry (``annotations[17]``) of the first problem.
    """
    path = os.fspath(path)
    try:
        data = json.loads(_read_text(path, "annotation file"))
    except json.JSONDecodeError as e:
        raise ListFileError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    categories = _entries(data, "categories", ("id",), path)
    images = _entries(data, "images", ("id", "file_name"), path)
    annotations = _entries(data, "annotations", ("image_id", "category_id"), path)
    names = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    ids = sorted(names) if category_ids is None else list(category_ids)
    label_of = {cid: i for i, cid in enumerate(ids)}
    image_rows = {im["id"]: i for i, im in enumerate(images)}
    labels = [-1] * len(images)
    for i, a in enumerate(annotations):
        if a["category_id"] not in label_of:
            raise ListFileError(f"{path} annotations[{i}]: category_id {a['category_id']!r} is not a category of "
                                "the training file")
        row = image_rows.get(a["image_id"])
        if row is None:
            raise ListFileError(f"{path} annotations[{i}]: image_id {a['image_id']!r} is not in 'images'")
        labels[row] = label_of[a["category_id"]]
    unlabelled = [i for i, y in enumerate(labels) if y < 0]
    if unlabelled:
        raise ListFileError(f"{path} images[{unlabelled[0]}]: no annotation gives this image a category "
                            f"({len(unlabelled)} images have none)")
    source = FileSource(os.path.dirname(os.path.abspath(path)))
    paths = [str(im["file_name"]).replace("\\", "/") for im in images]
    if check_files:
        for i, rel in enumerate(paths):
            if not source.isfile(rel):
                raise ListFileError(f"{path} images[{i}]: image {source.display(rel)} not found")
    targets = torch.tensor(labels, dtype=torch.int64)
    if category_ids is None:
        _check_classes(path, targets, len(ids))
    classes = [names.get(cid, str(cid)) for cid in ids]
    return ImageFolderIndex(source, os.path.basename(path), paths, targets, classes), ids
