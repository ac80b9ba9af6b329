"""Pretrained backbones (``--pretrained-file``) and the fine-tuning controls (``--freeze-backbone``,
``--backbone-lr-scale``). Every checkpoint here is written by the test itself: nothing is downloaded."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import cli, one_line_error

from ab_plugin import AutoBalance, Config
from ab_plugin.callbacks import TrainerCallback
from ab_plugin.io import load_checkpoint
from ab_plugin.models import create_backbone
from ab_plugin.schedule import lr_at
from ab_plugin.search import build_model, retrain, train_baseline

QUICK = ["--backbone", "resnet20", "--epochs", "1", "--batch-size", "64", "--interval", "2", "--upper-start", "0",
         "--device", "cpu", "--quiet", "--no-retrain", "--compare", ""]
TINY = dict(dataset="blobs", epochs=2, batch_size=32, lr=0.05, warmup_epochs=1, upper_start=0.0, interval=2,
            hyper_batches=2, device="cpu", channels_last=False, augment="none", seed=0)


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


def test_frozen_backbone_stays_bit_identical_through_a_search(tmp_path):
    path = tmp_path / "r20.pth"
    state = _save(create_backbone("resnet20", 10), path)
    code, _, err = _search_cli(tmp_path, "--pretrained-file", str(path), "--freeze-backbone", "--epochs", "2")
    assert code == 0, err
    trained = load_checkpoint(tmp_path / "run" / "search" / "checkpoint.pt")["model"]
    body = [k for k in state if not k.startswith("fc.")]
    # weights and BatchNorm running statistics (eval mode all along) as loaded
    assert all(torch.equal(trained[k], state[k]) for k in body)
    torch.manual_seed(0)
    start = create_backbone("resnet20", 10)  # the classifier the run started from (seed 0)
    assert not torch.equal(trained["fc.weight"], start.fc.weight)


class _Groups(TrainerCallback):
    def __init__(self) -> None:
        self.lrs: list[tuple[int, list[float]]] = []
        self.trainer = None

    def on_step_end(self, trainer, step, loss):
        self.trainer = trainer
        self.lrs.append((step, [g["lr"] for g in trainer.optimizer.param_groups]))


def _run(kind: str, cfg: Config, bundle, cb: _Groups) -> None:
    if kind == "search":
        AutoBalance(cfg).fit(bundle, callbacks=[cb])
    elif kind == "retrain":
        retrain({"logit_bias": [0.0] * 4}, bundle, cfg, callbacks=[cb])
    else:
        train_baseline("la", bundle, cfg, callbacks=[cb])


@pytest.mark.parametrize("kind", ["search", "retrain", "baseline"])
def test_backbone_lr_scale_reaches_the_optimizer(tiny_bundle, kind):
    cfg = Config(**TINY, backbone="resnet20", backbone_lr_scale=0.25)
    cb = _Groups()
    _run(kind, cfg, tiny_bundle, cb)
    groups = cb.trainer.optimizer.param_groups
    assert len(groups) == 2
    head = {id(p) for p in cb.trainer.model.get_classifier().parameters()}
    assert {id(p) for p in groups[0]["params"]} == head
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(cb.trainer.model.parameters()))
    spe = cb.trainer.steps_per_epoch
    assert len({lrs[0] for _, lrs in cb.lrs}) > 2  # warm-up and decay: the lr moves, the ratio stays
    for step, (head_lr, body_lr) in cb.lrs:
        assert head_lr == lr_at(step - 1, spe, cfg)
        assert body_lr == pytest.approx(0.25 * head_lr, rel=1e-12, abs=0)


@pytest.mark.parametrize("kind", ["search", "retrain", "baseline"])
def test_freeze_backbone_trains_only_the_classifier(tiny_bundle, kind):
    # a frozen backbone's run is a stage-2 run on features computed once (tests/stage2 counts its forward
    # passes): no loop, no optimizer groups; what it must keep is the backbone as loaded, the classifier trained
    cfg = Config(**TINY, backbone="resnet20", freeze_backbone=True, stage2_hyper_steps=2)
    torch.manual_seed(0)
    model = create_backbone("resnet20", 4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    if kind == "search":
        AutoBalance(cfg).fit(tiny_bundle, model=model)
    elif kind == "retrain":
        retrain({"logit_bias": [0.0] * 4}, tiny_bundle, cfg, model=model)
    else:
        train_baseline("la", tiny_bundle, cfg, model=model)
    head = {id(p) for p in model.get_classifier().parameters()}
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    model.train()  # the backbone's BatchNorm layers stay in eval mode
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    end = model.state_dict()
    assert all(torch.equal(end[k], start[k]) for k in start if not k.startswith("fc."))
    assert not torch.equal(end["fc.weight"], start["fc.weight"])


def test_freeze_backbone_refuses_a_learned_policy():
    # features computed once carry no augmentation: a learned policy would have nothing to learn from
    with pytest.raises(ValueError, match="--freeze-backbone"):
        Config(**TINY, freeze_backbone=True).replace(augment="learned").validate()


def test_defaults_keep_one_parameter_group(tiny_bundle):
    cb = _Groups()
    _run("baseline", Config(**TINY, backbone="resnet20"), tiny_bundle, cb)
    (group,) = cb.trainer.optimizer.param_groups
    assert "lr_scale" not in group
    assert len(group["params"]) == len(list(cb.trainer.model.parameters()))


def test_backbone_lr_scale_range():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="--backbone-lr-scale"):
            Config(backbone_lr_scale=bad).validate()


# ----------------------------------------------------------------------------- what the network is fed

MEAN, STD = (0.11, 0.22, 0.33), (0.3, 0.4, 0.5)  # none of the dataset's, ImageNet's or test_resnet's own (0.5s)


def _overlaid_test_resnet(path, num_classes: int = 4) -> torch.nn.Module:
    """test_resnet loaded from ``path`` the timm way with a pretrained cfg whose mean / std are MEAN / STD."""
    return timm.create_model("test_resnet", pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay=dict(file=str(path), mean=MEAN, std=STD))


@pytest.mark.parametrize("kind", ["search", "retrain", "baseline"])
def test_pretrained_timm_model_is_fed_as_it_was_pretrained(tmp_path, tiny_bundle, kind):
    path = tmp_path / "test_resnet.pth"
    _save(timm.create_model("test_resnet", num_classes=1000), path)
    cfg = Config(**TINY, backbone="test_resnet", pretrained_file=str(path)).replace(epochs=1)
    cb = _Groups()
    model = _overlaid_test_resnet(path)
    if kind == "search":
        AutoBalance(cfg).fit(tiny_bundle, callbacks=[cb], model=model)
    elif kind == "retrain":
        retrain({"logit_bias": [0.0] * 4}, tiny_bundle, cfg, callbacks=[cb], model=model)
    else:
        train_baseline("la", tiny_bundle, cfg, callbacks=[cb], model=model)
    assert (cb.trainer.mean, cb.trainer.std) == (MEAN, STD)


def test_normalization_order(tmp_path, tiny_bundle):
    from ab_plugin.inputs import normalization

    path = tmp_path / "test_resnet.pth"
    _save(timm.create_model("test_resnet", num_classes=1000), path)
    model = _overlaid_test_resnet(path)
    pretrained = Config(backbone="test_resnet", pretrained_file=str(path))
    data = (tiny_bundle.mean, tiny_bundle.std)
    assert normalization(pretrained, model, tiny_bundle) == (MEAN, STD)
    # the user's values win, each on its own
    assert normalization(pretrained.replace(mean="0.4,0.5,0.6"), model, tiny_bundle) == ((0.4, 0.5, 0.6), STD)
    assert normalization(pretrained.replace(std=[0.2] * 3), model, tiny_bundle) == (MEAN, (0.2, 0.2, 0.2))
    # not pretrained: the model's cfg says nothing about its (random) weights
    assert normalization(Config(backbone="test_resnet"), model, tiny_bundle) == data
    # a CIFAR ResNet from a file keeps the dataset's (its pretrained cfg holds generic CIFAR statistics)
    r20 = tmp_path / "r20.pth"
    _save(create_backbone("resnet20", 10), r20)
    cifar = create_backbone("resnet20", 4, pretrained_file=str(r20))
    assert normalization(Config(backbone="resnet20", pretrained_file=str(r20)), cifar, tiny_bundle) == data


def test_list_file_crop_follows_the_pretrained_input_size(tmp_path):
    from conftest import write_list_tree

    from ab_plugin.runs import load_bundle

    write_list_tree(tmp_path, [3, 2], size=8)
    ck = tmp_path / "test_resnet.pth"
    _save(timm.create_model("test_resnet", num_classes=1000), ck)
    r20 = tmp_path / "r20.pth"
    _save(create_backbone("resnet20", 10), r20)
    size = timm.models.get_pretrained_cfg("test_resnet").input_size[-1]
    assert size != 224  # else the test could not tell the model's size from the default
    base = Config(dataset=f"imagenet-lt:{tmp_path}", imbalance=1.0)
    cases = [(base.replace(backbone="test_resnet", pretrained_file=str(ck)), size),
             (base.replace(backbone="test_resnet", pretrained_file=str(ck), image_size=96), 96),  # the user's wins
             (base.replace(backbone="test_resnet"), 224),
             (base.replace(backbone="resnet20", pretrained_file=str(r20)), 224)]
    for cfg, want in cases:
        bundle = load_bundle(cfg)
        assert bundle.train.recipe.size == bundle.test.recipe.size == want, cfg


def test_mean_std_options(tmp_path):
    for bad, needle in (("--mean", "3 values"), ("--std", "> 0")):
        value = "0.5,0.5" if bad == "--mean" else "0.5,0,0.5"
        code, _, err = _search_cli(tmp_path, bad, value)
        one_line_error(code, err, bad)
        assert needle in err
    code, _, err = _search_cli(tmp_path, "--mean", "a,b,c")
    one_line_error(code, err, "comma list of numbers")
