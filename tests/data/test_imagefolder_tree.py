"""ImageFolder trees as users make them, through the real loader and the real `ab-plugin` CLI: links out of a
class folder, trees that are already imbalanced, and trees with train/, val/ and test/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, one_line_error
from PIL import Image

from ab_plugin import AutoBalance, Config
from ab_plugin.data import ImageFolderError, create_dataset
from ab_plugin.data._imagefolder import scan_imagefolder

TINY = ["--backbone", "resnet20", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--quiet",
        "--no-retrain", "--compare", "", "--workers", "0"]


def _write(path: Path, red: int) -> None:
    """Noisy pixels (every channel varies, so the normalisation is finite) with red = ``red`` at (0, 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(red).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    arr[0, 0, 0] = red
    Image.fromarray(arr).save(path, format="PNG")


def _tree(root: Path, train: dict[str, int], splits: dict[str, int]) -> Path:
    """root/train/<class>/NN.png (red = 10 * class + file) and per class ``splits[name]`` images in each of the
    other splits (red = 100 + 50 * split index + class)."""
    for c, (name, n) in enumerate(train.items()):
        for i in range(n):
            _write(root / "train" / name / f"{i:02d}.png", 10 * c + i)
        for s, (split, k) in enumerate(splits.items()):
            for i in range(k):
                _write(root / split / name / f"{i:02d}.png", 100 + 50 * s + c)
    return root




# 5. links out of a class folder --------------------------------------------------------------------
@pytest.mark.parametrize("target,why", [("..", "a loop back into a folder that holds it"),
                                         ("../a", "a folder outside it"), (".", "a loop back")])
def test_a_folder_link_out_of_a_class_is_refused(tmp_path, target, why):
    root = _tree(tmp_path / "d", {"a": 4, "b": 4}, {"test": 2})
    (root / "train" / "b" / "loop").symlink_to(target)
    with pytest.raises(ImageFolderError, match=why):
        scan_imagefolder(root, "train")
    code, _, err = cli("search", "--dataset", f"imagefolder:{root}", "--imbalance", "1", *TINY,
                        "--out", str(tmp_path / "r"))
    one_line_error(code, err, str(root / "train" / "b" / "loop"), why, "labelled 'b'")
    assert not (tmp_path / "r").exists()


def test_links_that_stay_inside_the_class_and_linked_class_folders_are_followed(tmp_path):
    root = _tree(tmp_path / "d", {"a": 2, "b": 2}, {"test": 1})
    _write(root / "train" / "b" / "sub" / "x.png", 77)
    (root / "train" / "b" / "same").symlink_to("sub")  # inside b: its image counts twice, as b
    elsewhere = tmp_path / "pool" / "a"
    elsewhere.parent.mkdir()
    (root / "train" / "a").rename(elsewhere)
    (root / "train" / "a").symlink_to(elsewhere)  # a class folder that is itself a link
    (root / "train" / "b" / "one.png").symlink_to(elsewhere / "00.png")  # a file link: the user's choice
    idx = scan_imagefolder(root, "train")
    assert idx.class_counts().tolist() == [2, 5]
    assert sorted(p for p in idx.paths if p.startswith("train/b/")) == [
        "train/b/00.png", "train/b/01.png", "train/b/one.png", "train/b/same/x.png", "train/b/sub/x.png"]


# 13. an already imbalanced tree -----------------------------------------------------------------------
def test_an_imbalanced_tree_is_named_as_such_and_the_title_says_its_real_imbalance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short dataset name keeps the table title on one line
    _tree(Path("d"), {"a": 12, "b": 4}, {"test": 2})
    code, _, err = cli("search", "--dataset", "imagefolder:d", "--imbalance", "100", "--n-max", "10", *TINY,
                        "--format", "table", "--out", "r")
    assert code == 0, err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert any("train is already imbalanced (largest class 12 images, smallest 4: imbalance 3); it is used as "
               "it is and --imbalance 100 and --n-max 10 do not apply" in ln for ln in warning), err
    assert "imagefolder:d (imbalance 3, asked 100), resnet20" in err and "(imbalance 100)" not in err
    assert json.loads(Path("r/result.json").read_text())["class_counts"] == [12, 4]


def test_only_an_imbalanced_tree_asked_for_a_long_tail_gets_the_warning(tmp_path, recwarn):
    root = _tree(tmp_path / "d", {"a": 6, "b": 6}, {"test": 1})
    assert create_dataset(f"imagefolder:{root}", imbalance=3).train.class_counts().tolist() == [6, 2]
    root = _tree(tmp_path / "i", {"a": 5, "b": 2}, {"test": 1})
    assert create_dataset(f"imagefolder:{root}", imbalance=1).train.class_counts().tolist() == [5, 2]
    assert not [w for w in recwarn if "already imbalanced" in str(w.message)]
    with pytest.warns(UserWarning, match=r"smallest 2: imbalance 2.5\); it is used as it is and --imbalance 3 "
                                         r"does not apply"):
        b = create_dataset(f"imagefolder:{root}", imbalance=3)
    assert b.train.class_counts().tolist() == [5, 2]


# 14. train/, val/ and test/ ------------------------------------------------------------------------------
def test_val_folder_is_the_validation_split(tmp_path):
    root = _tree(tmp_path / "d", {"a": 6, "b": 3}, {"val": 2, "test": 3})
    b = create_dataset(f"imagefolder:{root}", imbalance=1)
    assert b.val is not None and b.val.class_counts().tolist() == [2, 2]
    assert b.val.images[:, 0, 0, 0].tolist() == [100, 100, 101, 101]  # val/'s own images
    assert b.test.class_counts().tolist() == [3, 3] and b.test.images[0, 0, 0, 0] == 150
    trainer, val = AutoBalance(Config(epochs=1, device="cpu", augment="none")).build(b)
    assert torch.equal(val.images, b.val.images)
    assert len(trainer.train_data) == 9  # nothing of train/ is split off for validation
    code, _, err = cli("search", "--dataset", f"imagefolder:{root}", "--imbalance", "1", *TINY,
                        "--out", str(tmp_path / "r"), "--format", "json")
    assert code == 0, err


def test_without_test_folder_val_stays_the_test_split(tmp_path):
    root = _tree(tmp_path / "d", {"a": 6, "b": 3}, {"val": 2})
    b = create_dataset(f"imagefolder:{root}", imbalance=1)
    assert b.val is None and b.test.class_counts().tolist() == [2, 2]
