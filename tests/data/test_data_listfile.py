"""List-file datasets (ImageNet-LT, Places-LT, iNaturalist 2018, listfile:): tiny trees in tmp_path, streamed
with the crop recipe; every malformed input is one ListFileError naming the file and the line (or entry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_list_tree
from PIL import Image

from ab_plugin.data import ImageFolderError, ImageFolderIndex, ListFileError, create_dataset, split_per_class
from ab_plugin.data._listfile import read_listfile
from ab_plugin.data._loader import StreamingLoader
from ab_plugin.data._recipe import IMAGENET_MEAN, CropRecipe

COUNTS = [6, 3, 2]


@pytest.fixture(scope="module")
def imagenet_lt(tmp_path_factory) -> Path:
    return write_list_tree(tmp_path_factory.mktemp("inet"), COUNTS)


def test_imagenet_lt_reads_its_three_lists_and_streams_the_crop_recipe(imagenet_lt):
    b = create_dataset(f"imagenet-lt:{imagenet_lt}", image_size=16)
    assert isinstance(b.train, ImageFolderIndex) and isinstance(b.val, ImageFolderIndex)
    assert b.train.class_counts().tolist() == COUNTS  # already long-tailed: kept as listed
    assert b.meta["train_counts"] == COUNTS and b.num_classes == 3 and b.classes == ["0", "1", "2"]
    assert len(b.val) == len(b.test) == 6 and b.test.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert b.mean == IMAGENET_MEAN and b.train.recipe == CropRecipe(size=16) == b.test.recipe
    assert b.train.paths[0] == "train/n00000000/0.JPEG"
    assert create_dataset(f"imagenet-lt:{imagenet_lt}").train.recipe.size == 224  # the default recipe

    x, y, g = next(iter(StreamingLoader(b.test, 6, shuffle=False, num_workers=0)))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.uint8 and g is None
    with Image.open(imagenet_lt / b.test.paths[0]) as img:  # evaluation: resize 18 then centre crop 16
        ref = torch.from_numpy(np.array(CropRecipe(size=16).eval(img.convert("RGB"))))
    assert torch.equal(x[0], ref.permute(2, 0, 1)) and y.tolist() == b.test.targets.tolist()

    torch.manual_seed(0)
    crops = [next(iter(StreamingLoader(b.test, 6, shuffle=False, num_workers=0, augment=True)))[0] for _ in range(2)]
    assert crops[0].shape == (6, 3, 16, 16) and not torch.equal(crops[0], crops[1])  # random crops and flips


def test_a_worker_process_decodes_the_same_evaluation_batch(imagenet_lt):
    test = create_dataset(f"imagenet-lt:{imagenet_lt}", image_size=16).test
    here = next(iter(StreamingLoader(test, 6, shuffle=False, num_workers=0)))[0]
    worker = next(iter(StreamingLoader(test, 6, shuffle=False, num_workers=1)))[0]
    assert torch.equal(here, worker)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_undecodable_image_is_one_line_naming_it_also_from_a_worker(tmp_path, workers):
    root = write_list_tree(tmp_path, [2, 1], size=8)
    (root / "test/n00000001/0.JPEG").write_bytes(b"not a jpeg")
    test = create_dataset(f"imagenet-lt:{root}", image_size=8).test
    with pytest.raises(ImageFolderError) as e:
        list(StreamingLoader(test, 4, shuffle=False, num_workers=workers))
    assert str(e.value) == (f"cannot read image {root / 'test/n00000001/0.JPEG'}: not an image format PIL can "
                            "decode (truncated, empty or not an image); fix or remove it")


def test_places_lt_uses_its_own_file_names(tmp_path):
    write_list_tree(tmp_path, [4, 2], prefix="Places_LT")
    b = create_dataset(f"places-lt:{tmp_path}", image_size=16)
    assert b.train.class_counts().tolist() == [4, 2] and b.train.split == "Places_LT_train.txt"
    with pytest.raises(ListFileError, match="ImageNet_LT_train.txt not found"):
        create_dataset(f"imagenet-lt:{tmp_path}")


def _rewrite(path: Path, lineno: int, text: str | None) -> None:
    lines = path.read_text().splitlines()
    if text is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("file", "lineno", "text", "message"), [
    ("test", 3, "test/n00000001/0.JPEG 3", "ImageNet_LT_test.txt line 3: label 3 out of range (0..2)"),
    ("train", 2, "train/n00000000/1.JPEG -1", "ImageNet_LT_train.txt line 2: label -1 out of range (>= 0)"),
    ("val", 5, "val/n00000002/9.JPEG 2", "ImageNet_LT_val.txt line 5: image "),
    ("train", 4, "train/n00000000/3.JPEG", "ImageNet_LT_train.txt line 4: expected 'relative/path.jpg label'"),
])
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, file, lineno, text, message):
    root = write_list_tree(tmp_path, COUNTS)
    _rewrite(root / f"ImageNet_LT_{file}.txt", lineno, text)
    with pytest.raises(ListFileError) as e:
        create_dataset(f"imagenet-lt:{root}")
    assert message in str(e.value) and "\n" not in str(e.value)
    if "image " in message:
        assert str(root / "val/n00000002/9.JPEG") + " not found" in str(e.value)


def test_a_training_class_without_images_is_refused(tmp_path):
    root = write_list_tree(tmp_path, COUNTS)
    for lineno in (7, 8, 9):  # class 1's lines, relabelled as class 2
        _rewrite(root / "ImageNet_LT_train.txt", lineno, f"train/n00000001/{lineno - 7}.JPEG 2")
    with pytest.raises(ListFileError, match=r"ImageNet_LT_train.txt: class 1 has no images \(1 classes"):
        create_dataset(f"imagenet-lt:{root}")


def test_a_missing_list_is_named(tmp_path):
    root = write_list_tree(tmp_path, COUNTS)
    (root / "ImageNet_LT_val.txt").unlink()
    with pytest.raises(ListFileError, match=r"list file .*ImageNet_LT_val.txt not found"):
        create_dataset(f"imagenet-lt:{root}")


def test_listfile_takes_paths_relative_to_each_list_or_absolute(tmp_path):
    root = write_list_tree(tmp_path / "data", [5, 5])  # balanced: long-tailed like an ImageFolder tree
    lists = tmp_path / "lists"
    lists.mkdir()
    train = (root / "ImageNet_LT_train.txt").read_text().splitlines()
    (lists / "train.txt").write_text("\n".join(f"../data/{ln}" for ln in train) + "\n\n")  # relative, blank line
    (lists / "test.txt").write_text("".join(f"{root}/{ln}\n" for ln in
                                            (root / "ImageNet_LT_test.txt").read_text().splitlines()))  # absolute
    spec = f"listfile:{lists / 'train.txt'},{lists / 'test.txt'}"
    b = create_dataset(spec, imbalance=5, image_size=8)
    assert b.val is None and b.train.class_counts().tolist() == [5, 1] and len(b.test) == 4
    assert b.name == spec and b.test.paths[0] == f"{root}/test/n00000000/0.JPEG"
    x = next(iter(StreamingLoader(b.test, 4, shuffle=False, num_workers=0)))[0]
    assert x.shape == (4, 3, 8, 8)
    with_val = create_dataset(f"{spec},{root / 'ImageNet_LT_val.txt'}", imbalance=1)
    assert with_val.val is not None and with_val.train.class_counts().tolist() == [5, 5]
    with pytest.raises(ValueError, match="listfile takes TRAIN.txt,TEST.txt"):
        create_dataset(f"listfile:{lists / 'train.txt'}")


def _write_inat(root: Path, images: dict[str, list[tuple[str, int]]], categories: list[int]) -> None:
    """``images[split]``: (file_name, category_id) pairs; a JPEG is written for each."""
    for split, items in images.items():
        data = {"categories": [{"id": c, "name": f"species{c}"} for c in categories], "images": [],
                "annotations": []}
        for i, (name, cat) in enumerate(items):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 12), (40 * (cat % 6), 90, 160)).save(root / name)
            data["images"].append({"id": 100 + i, "file_name": name})
            data["annotations"].append({"id": i, "image_id": 100 + i, "category_id": cat})
        (root / f"{split}2018.json").write_text(json.dumps(data))


def test_inat2018_reads_coco_json_and_tests_on_val2018(tmp_path):
    train = [(f"train_val2018/Plantae/{c}/{i}.jpg", c) for c, n in ((9, 4), (2, 3), (5, 2)) for i in range(n)]
    val = [(f"train_val2018/Plantae/{c}/v{c}.jpg", c) for c in (5, 9, 2)]
    _write_inat(tmp_path, {"train": train, "val": val}, categories=[9, 2, 5])
    b = create_dataset(f"inat2018:{tmp_path}", image_size=8)
    assert b.classes == ["species2", "species5", "species9"]  # labels number the categories by sorted id
    assert b.train.class_counts().tolist() == [3, 2, 4] and b.test.targets.tolist() == [1, 2, 0]
    assert b.val is None  # the search splits its validation off train, on the file list
    fit, held = split_per_class(b.train, 0.34, seed=0)
    assert held.class_counts().tolist() == [1, 1, 1] and held.recipe == b.train.recipe
    assert isinstance(fit, ImageFolderIndex) and len(fit) + len(held) == len(b.train)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["annotations"][1].update(category_id=7), "val2018.json annotations[1]: category_id 7 is not"),
    (lambda d: d["annotations"][0].update(image_id=5), "val2018.json annotations[0]: image_id 5 is not in"),
    (lambda d: d["images"][2].update(file_name="nowhere.jpg"), "val2018.json images[2]: image "),
    (lambda d: d.pop("categories"), "val2018.json: no 'categories' list"),
])
def test_a_bad_inat_entry_is_one_error_naming_file_and_entry(tmp_path, edit, message):
    _write_inat(tmp_path, {"train": [("a/0.jpg", 1), ("a/1.jpg", 2)], "val": [("b/0.jpg", 1), ("b/1.jpg", 2),
                                                                           ("b/2.jpg", 2)]}, categories=[1, 2])
    data = json.loads((tmp_path / "val2018.json").read_text())
    edit(data)
    (tmp_path / "val2018.json").write_text(json.dumps(data))
    with pytest.raises(ListFileError) as e:
        create_dataset(f"inat2018:{tmp_path}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_invalid_json_names_its_line(tmp_path):
    (tmp_path / "train2018.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(ListFileError, match=r"train2018.json line 2: not valid JSON"):
        create_dataset(f"inat2018:{tmp_path}")


def test_read_listfile_can_skip_the_existence_check(tmp_path):
    (tmp_path / "l.txt").write_text("a/x.jpg 1\nb/y.jpg 0\n")
    index = read_listfile(tmp_path / "l.txt", check_files=False)
    assert index.paths == ["a/x.jpg", "b/y.jpg"] and index.num_classes == 2
    with pytest.raises(ListFileError, match=r"l.txt line 1: image .*a/x.jpg not found"):
        read_listfile(tmp_path / "l.txt")
