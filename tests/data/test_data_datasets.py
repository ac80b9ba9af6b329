"""Dataset builders: embedded digits, CIFAR errors, ImageFolder trees and zips, real CIFAR-10 JPEGs."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ab_plugin.data import ImageFolderError, create_dataset, list_datasets, long_tail_counts, split_per_class
from ab_plugin.data._datasets import _digits_rgb32, long_tail_index
from ab_plugin.data._imagefolder import scan_imagefolder

CIFAR_ZIP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-jpg.zip"


# ---------------------------------------------------------------------------------------------- digits


def test_digits_lt_builds_offline_fast_and_long_tailed() -> None:
    _digits_rgb32.cache_clear()
    t0 = time.perf_counter()
    b = create_dataset("digits-lt")
    assert time.perf_counter() - t0 < 2.0  # ~0.03 s: no sklearn import, no network
    assert b.train.images.dtype == torch.uint8 and b.train.images.shape[1:] == (3, 32, 32)
    assert b.train.targets.dtype == torch.int64 and b.classes == [str(i) for i in range(10)]
    counts = b.train.class_counts().tolist()
    assert counts == long_tail_counts(144, 10, 100) == [144, 87, 52, 32, 19, 12, 7, 5, 3, 2]
    assert b.test.class_counts().tolist() == [30] * 10
    assert b.train.groups is None
    img = b.train.images.float()
    assert torch.equal(img[:, 0], img[:, 1]) and img.max() > 200 and img.min() == 0  # grey as RGB, 0..255
    assert all(0.1 < m < 0.6 for m in b.mean) and all(0.1 < s < 0.6 for s in b.std)
    # train and test are disjoint: no test image appears in the training set
    train_set = {bytes(x.numpy()) for x in b.train.images}
    assert not any(bytes(x.numpy()) in train_set for x in b.test.images[:50])


def test_digits_lt_every_class_splittable_even_at_extreme_imbalance() -> None:
    b = create_dataset("digits-lt", imbalance=1000)
    assert int(b.train.class_counts().min()) == 2
    train, val = split_per_class(b.train, 0.2)
    assert (train.class_counts() >= 1).all() and (val.class_counts() >= 1).all()
    assert create_dataset("digits-lt", imbalance=1).train.class_counts().tolist() == [144] * 10
    assert create_dataset("digits-lt", image_size=16).train.images.shape[2:] == (16, 16)
    with pytest.raises(ValueError, match="lower n_max"):
        create_dataset("digits-lt", n_max=1000)


def test_digits_lt_groups() -> None:
    b = create_dataset("digits-lt-groups")
    assert b.train.group_names == ["original", "inverted"] == b.test.group_names
    frac_train = b.train.groups.float().mean().item()
    assert 0.05 < frac_train < 0.15
    assert b.test.groups.float().mean().item() == 0.5
    assert (b.test.group_counts() == torch.tensor([150, 150])).all()
    for split in (b.train, b.test):  # group 1 is colour-inverted: bright background corner
        corner = split.images[:, 0, 0, 0]
        assert (corner[split.groups == 1] == 255).all() and (corner[split.groups == 0] == 0).all()
    plain = create_dataset("digits-lt")
    assert torch.equal(plain.train.targets, b.train.targets)


def test_unknown_dataset_and_missing_cifar(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist-lt'.*digits-lt.*imagefolder"):
        create_dataset("mnist-lt")
    assert {"digits-lt", "digits-lt-groups", "cifar10-lt", "cifar100-lt"} <= set(list_datasets())
    with pytest.raises(ValueError, match=r"CIFAR-10 not found in .*: pass --download or --data-dir"):
        create_dataset("cifar10-lt", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"CIFAR-100 not found"):
        create_dataset("cifar100-lt", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="imbalance must be >= 1"):
        create_dataset("imagefolder:" + str(tmp_path), imbalance=0.5)


# ----------------------------------------------------------------------------------------- ImageFolder


def _write(path: Path, value: int, size: tuple[int, int] = (6, 6), fmt: str = "PNG") -> None:
    """A solid image whose red channel is ``value`` (green = 7, blue = 200)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[0], size[1], 3), dtype=np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = value, 7, 200
    Image.fromarray(arr).save(path, format=fmt)


def _tree(root: Path, train: dict[str, int], test: int = 2) -> Path:
    """root/train/<class>/NN.png with red = 10 * class index + file index; root/test likewise."""
    for c, (name, n) in enumerate(train.items()):
        for i in range(n):
            _write(root / "train" / name / f"{i:02d}.png", 10 * c + i)
        for i in range(test):
            _write(root / "test" / name / f"{i:02d}.png", 100 + 10 * c + i)
    return root


def _red(images: torch.Tensor) -> list[int]:
    return images[:, 0, 0, 0].tolist()


def test_imagefolder_balanced_tree_is_long_tailed_keeping_first_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree", {"cat": 6, "ant": 6, "bee": 6})
    b = create_dataset(f"imagefolder:{root}", imbalance=3)
    assert b.classes == ["ant", "bee", "cat"]  # sorted folder names
    assert b.train.class_counts().tolist() == long_tail_counts(6, 3, 3) == [6, 4, 2]
    # classes sorted: ant (written as c=1), bee (c=2), cat (c=0); first files kept
    assert _red(b.train.images) == [10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 0, 1]
    assert b.train.images.shape == (12, 3, 6, 6) and b.train.images[0, 1, 0, 0] == 7
    assert b.test.class_counts().tolist() == [2, 2, 2] and _red(b.test.images)[:2] == [110, 111]
    assert create_dataset(f"imagefolder:{root}", imbalance=1).train.class_counts().tolist() == [6, 6, 6]
    small = create_dataset(f"imagefolder:{root}", imbalance=2, n_max=4)
    assert small.train.class_counts().tolist() == [4, 3, 2]
    assert abs(b.mean[2] - 200 / 255) < 1e-3 and b.std[2] < 1e-3
    with pytest.raises(ValueError, match="lower n_max"):
        create_dataset(f"imagefolder:{root}", n_max=7)


def test_imagefolder_imbalanced_tree_jpeg_val_and_resize(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for c, n in enumerate([5, 3]):
        for i in range(n):
            _write(root / "train" / f"k{c}" / f"{i}.jpg", 100, fmt="JPEG")
        _write(root / "val" / f"k{c}" / "x.jpg", 50, size=(9, 12), fmt="JPEG")  # other size, 'val' split
    _write(root / "train" / "k1" / "sub" / "z.png", 100, size=(3, 3))  # nested, different size
    (root / "train" / "k1" / "notes.txt").write_text("not an image")
    b = create_dataset("imagefolder", data_dir=str(root))  # already imbalanced: taken as it is
    assert b.train.class_counts().tolist() == [5, 4]
    assert b.train.images.shape[2:] == (6, 6) and b.test.images.shape == (2, 3, 6, 6)
    assert abs(int(b.train.images[-1, 0, 3, 3]) - 100) <= 3  # JPEG is lossy
    assert create_dataset("imagefolder", data_dir=str(root), image_size=4).train.images.shape[2:] == (4, 4)


def test_imagefolder_groups_csv_and_zip(tmp_path: Path) -> None:
    root = _tree(tmp_path / "g", {"a": 3, "b": 3}, test=2)
    lines = ["path,group"]
    for split in ("train", "test"):
        for p in sorted((root / split).rglob("*.png")):
            rel = p.relative_to(root).as_posix()
            lines.append(f"{rel},{'dark' if p.stem == '01' else 'light'}")
    (root / "groups.csv").write_text("\n".join(lines) + "\n")
    b = create_dataset(f"imagefolder:{root}", imbalance=1)
    assert b.train.group_names == ["dark", "light"] == b.test.group_names
    assert b.train.groups.tolist() == [1, 0, 1, 1, 0, 1] and b.test.groups.tolist() == [1, 0, 1, 0]
    # the same tree as a zip archive with one top folder
    archive = tmp_path / "g.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, "top/" + p.relative_to(root).as_posix())
    z = create_dataset(f"imagefolder:{archive}", imbalance=1)
    assert torch.equal(z.train.images, b.train.images) and torch.equal(z.train.groups, b.train.groups)
    assert torch.equal(z.test.images, b.test.images) and z.classes == b.classes
    # a sample without a group line is an error naming it
    (root / "groups.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ImageFolderError, match=r"no group for 1 test images \(first: test/b/01.png\)"):
        create_dataset(f"imagefolder:{root}", imbalance=1)


def test_imagefolder_errors_name_the_culprit(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"image folder '{missing}' not found"):
        create_dataset(f"imagefolder:{missing}")
    root = _tree(tmp_path / "e", {"a": 2, "b": 2})
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "readme.md").write_text("x")
    with pytest.raises(ImageFolderError, match=r"class folder '.*train/empty' holds no images"):
        create_dataset(f"imagefolder:{root}")
    (root / "train" / "empty" / "readme.md").unlink()
    (root / "train" / "empty").rmdir()
    (root / "train" / "b" / "01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageFolderError, match=r"cannot read image .*train/b/01.png"):
        create_dataset(f"imagefolder:{root}", imbalance=1)
    _write(root / "train" / "b" / "01.png", 5)
    _write(root / "test" / "c" / "00.png", 5)
    mismatch = r"differ from the training classes \(missing: none, extra: \['c'\]\)"
    with pytest.raises(ImageFolderError, match=mismatch):
        create_dataset(f"imagefolder:{root}", imbalance=1)
    for p in (root / "test").rglob("*.png"):
        p.unlink()
    for d in sorted((root / "test").iterdir()):
        d.rmdir()
    (root / "test").rmdir()
    with pytest.raises(ImageFolderError, match=r"folder '.*test' not found"):
        create_dataset(f"imagefolder:{root}", imbalance=1)


# ------------------------------------------------------------------------------------ real CIFAR-10 JPEG


@pytest.mark.skipif(not CIFAR_ZIP.is_file(), reason=f"{CIFAR_ZIP} not present")
def test_real_cifar10_jpeg_archive(tmp_path: Path) -> None:
    # index the whole archive without decoding: CIFAR-10-LT counts of BENCHMARKS.md
    train = scan_imagefolder(CIFAR_ZIP, "train")
    assert train.classes[:3] == ["airplane", "automobile", "bird"] and len(train.classes) == 10
    assert train.class_counts().tolist() == [5000] * 10
    lt, counts = long_tail_index(train, 100, "exp", 1000)
    assert counts == [1000, 600, 360, 216, 130, 78, 47, 28, 17, 10] and len(lt) == 2486
    assert lt.paths[0] == "train/airplane/0000.jpg" and lt.paths[1000] == "train/automobile/0000.jpg"
    assert lt.paths[999] == "train/airplane/0999.jpg"
    # decode a small extracted part: a tiny ImageFolder of 2 classes
    with zipfile.ZipFile(CIFAR_ZIP) as zf:
        for cls in ("airplane", "cat"):
            for i in range(4):
                zf.extract(f"train/{cls}/{i:04d}.jpg", tmp_path)
            zf.extract(f"test/{cls}/0000.jpg", tmp_path)
    b = create_dataset(f"imagefolder:{tmp_path}", imbalance=2)
    assert b.train.class_counts().tolist() == [4, 2] and b.train.images.shape[1:] == (3, 32, 32)
    ref = np.asarray(Image.open(tmp_path / "train" / "cat" / "0001.jpg").convert("RGB"))
    assert torch.equal(b.train.images[5].permute(1, 2, 0), torch.from_numpy(ref.copy()))


def test_datasets_use_the_registry_idiom():
    from ab_plugin._registry import Registry
    from ab_plugin.data import _datasets, create_dataset, list_datasets, register_dataset

    assert isinstance(_datasets._DATASETS, Registry)
    assert list_datasets() == ["digits-lt", "digits-lt-groups", "cifar10-lt", "cifar100-lt", "imagefolder",
                               "imagenet-lt", "places-lt", "inat2018", "listfile"]
    with pytest.raises(ValueError, match="unknown dataset 'mnist': choose from 'digits-lt'"):
        create_dataset("mnist")
    with pytest.raises(ValueError, match="takes no ':' argument"):
        create_dataset("digits-lt:3")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("digits-lt")(lambda **kw: None)


def test_a_registered_builder_gets_one_frozen_request():
    import dataclasses

    from ab_plugin.data import DatasetRequest, _datasets, register_dataset

    seen = []

    @register_dataset("toy-request")
    def build(request):
        seen.append(request)
        return "bundle"

    try:
        got = create_dataset("toy-request", imbalance=5, profile="step", n_max=7, download=True, image_size=12)
        create_dataset("toy-request")
    finally:
        del _datasets._DATASETS._factories["toy-request"]
    assert got == "bundle"
    assert seen == [DatasetRequest(data_dir=None, imbalance=5, profile="step", n_max=7, download=True,
                                   image_size=(12, 12)), DatasetRequest()]
    assert "seed" not in {f.name for f in dataclasses.fields(DatasetRequest)}  # the datasets are deterministic
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].n_max = 1
