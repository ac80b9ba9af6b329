"""Pretrained backbones (``--pretrained-file``). Every checkpoint here is written by the test itself: nothing is
downloaded."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import cli, one_line_error

from ab_plugin import Config
from ab_plugin.models import create_backbone
from ab_plugin.search import build_model

QUICK = ["--backbone", "resnet20", "--epochs", "1", "--batch-size", "64", "--interval", "2", "--upper-start", "0",
         "--device", "cpu", "--quiet", "--no-retrain", "--compare", ""]



def _save(model: torch.nn.Module, path, how: str = "plain") -> dict[str, torch.Tensor]:
    """``model``'s weights (perturbed so they differ from any fresh initialisation) saved at ``path`` as a plain
    state dict or under a ``state_dict`` / ``model`` key; returns the saved state."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.mul_(1 + 0.1 * torch.rand_like(t)).add_(0.01 * torch.rand_like(t))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state if how == "plain" else {how: state, "epoch": 3}, path)
    return state


def _backbone_equal(model: torch.nn.Module, state: dict[str, torch.Tensor], head: str) -> None:
    own = model.state_dict()
    body = [k for k in state if not k.startswith(head + ".")]
    assert body and all(torch.equal(own[k], state[k]) for k in body)


@pytest.mark.parametrize("how", ["plain", "state_dict", "model"])
def test_cifar_resnet_loads_a_checkpoint_with_a_fresh_classifier(tmp_path, how):
    path = tmp_path / "r20.pth"
    state = _save(create_backbone("resnet20", 7), path, how)
    torch.manual_seed(5)
    fresh = create_backbone("resnet20", 10)
    torch.manual_seed(5)
    model = create_backbone("resnet20", 10, pretrained_file=str(path))
    _backbone_equal(model, state, "fc")
    # the classifier is the one a fresh model of the dataset's 10 classes gets, not the checkpoint's 7-way one
    assert model.fc.weight.shape == (10, 64)
    assert torch.equal(model.fc.weight, fresh.fc.weight) and torch.equal(model.fc.bias, fresh.fc.bias)
    # the same class count: still re-initialised, the checkpoint's classifier is skipped
    model7 = create_backbone("resnet20", 7, pretrained_file=str(path))
    assert not torch.equal(model7.fc.weight, state["fc.weight"])


def test_timm_model_loads_a_checkpoint_through_timm(tmp_path):
    assert "test_resnet" in timm.list_models("test_*")
    path = tmp_path / "test_resnet.pth"
    src = timm.create_model("test_resnet", num_classes=1000)
    state = _save(src, path)
    head = src.pretrained_cfg["classifier"]
    model = build_model(Config(backbone="test_resnet", pretrained_file=str(path)), 4, "ce")
    _backbone_equal(model, state, head)
    assert model.get_classifier().out_features == 4
    assert model.pretrained_cfg["file"] == str(path)  # loaded the timm way (pretrained_cfg_overlay)
    # LDAM's cosine head on top of the pretrained body
    normed = build_model(Config(backbone="test_resnet", pretrained_file=str(path)), 4, "ldam")
    _backbone_equal(normed, state, head)


def _search_cli(tmp_path, *extra):
    return cli("search", *QUICK, *extra, "--out", str(tmp_path / "run"))


def test_missing_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.pth"
    code, _, err = _search_cli(tmp_path, "--pretrained-file", str(missing))
    one_line_error(code, err, str(missing), "no such file")


@pytest.mark.parametrize("source, target", [("resnet32", "resnet20"), ("test_resnet", "resnet20"),
                                            ("resnet20", "test_resnet")])
def test_wrong_architecture_is_a_one_line_error(tmp_path, source, target):
    path = tmp_path / f"{source}.pth"
    _save(create_backbone(source, 10), path)
    code, _, err = cli("search", *QUICK[2:], "--backbone", target, "--pretrained-file", str(path),
                       "--out", str(tmp_path / "run"))
    one_line_error(code, err, str(path), "does not fit")


def test_not_a_checkpoint_and_pretrained_cifar_without_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    code, _, err = _search_cli(tmp_path, "--pretrained-file", str(junk))
    one_line_error(code, err, str(junk))
    code, _, err = _search_cli(tmp_path, "--pretrained")
    one_line_error(code, err, "--pretrained-file")
