"""The real `ab-plugin` CLI on a tiny ImageNet-LT-format tree (list files + JPEGs, streamed through the crop
recipe): many / medium / few-shot accuracy in result.json and `evaluate`; bad lists fail before any run folder."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import write_list_tree

from ab_plugin import Config
from ab_plugin.cli import main
from ab_plugin.data import create_dataset
from ab_plugin.search import AutoBalance

COUNTS = [101, 40, 20, 5]  # one many-shot, two medium-shot, one few-shot class
TINY = ["--backbone", "resnet20", "--epochs", "1", "--batch-size", "32", "--image-size", "16", "--workers", "0",
        "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_list_tree(tmp_path_factory.mktemp("imagenet_lt"), COUNTS)


def _cli(*args: str):
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_search_and_evaluate_report_many_medium_few_from_the_training_counts(root, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _cli("search", "--dataset", f"imagenet-lt:{root}", *TINY, "--out", str(out),
                             "--no-retrain", "--compare", "", "--format", "json")
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["class_counts"] == COUNTS and json.loads(stdout)["test_metrics"] == result["test_metrics"]
    acc = [1 - e for e in result["test_metrics"]["per_class_error"]]
    shots = result["test_metrics"]["shot_accuracy"]
    assert shots == pytest.approx({"many": acc[0], "medium": (acc[1] + acc[2]) / 2, "few": acc[3]})
    code, stdout, err = _cli("evaluate", str(out), "--format", "json")
    assert code == 0, err
    assert json.loads(stdout)["test_metrics"] == result["test_metrics"]  # the same model, the same numbers


def test_the_search_validates_on_the_val_list(root):
    bundle = create_dataset(f"imagenet-lt:{root}", image_size=16)
    _, val = AutoBalance(Config(backbone="resnet20", device="cpu")).build(bundle)
    assert val is bundle.val and len(val) == 8


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda r: (r / "ImageNet_LT_test.txt").write_text("test/n00000000/0.JPEG 0\ntest/n00000000/1.JPEG 4\n"),
     "ImageNet_LT_test.txt line 2: label 4 out of range (0..1)"),
    (lambda r: (r / "ImageNet_LT_val.txt").write_text("\nval/n00000001/7.JPEG 1\n"),
     "ImageNet_LT_val.txt line 2: image "),
    (lambda r: (r / "ImageNet_LT_train.txt").unlink(), "ImageNet_LT_train.txt not found"),
])
def test_a_bad_list_is_one_line_before_any_run_folder(tmp_path, spoil, message):
    root = write_list_tree(tmp_path / "data", [3, 2], eval_per_class=1, size=8)
    spoil(root)
    out = tmp_path / "run"
    code, _, err = _cli("search", "--dataset", f"imagenet-lt:{root}", *TINY, "--out", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()
