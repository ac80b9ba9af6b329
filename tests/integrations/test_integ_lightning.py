"""Lightning integration with a real Trainer: α moves, the callback's criterion is wired in and taken out again,
checkpoints carry α and the upper optimizer, and ``fit(ckpt_path=...)`` continues with the same α."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from conftest import float_blobs  # noqa: E402

from ab_plugin.integrations import AutoBalanceCallback  # noqa: E402

C = 4
COUNTS = [40, 20, 8, 4]


X, Y = float_blobs(COUNTS, 0)
XV, YV = float_blobs([6, 6, 6, 6], 1)


def loaders():
    return (DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=False, drop_last=True),  # 4 steps / epoch
            DataLoader(TensorDataset(XV, YV), batch_size=24))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, C)

    def forward(self, x):
        return self.fc(self.body(x))


class Lit(pl.LightningModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = Net()
        self.criterion = nn.CrossEntropyLoss()  # the callback swaps it for AutoBalance during fit
        self.used: list[type] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.used.append(type(self.criterion))
        return self.criterion(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.criterion(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class AlphaAtStart(pl.Callback):
    def __init__(self, ab: AutoBalanceCallback) -> None:
        self.ab, self.alpha = ab, None

    def on_train_start(self, trainer, pl_module):
        self.alpha = copy.deepcopy(self.ab.criterion.alpha)


def trainer(max_epochs: int, callbacks, tmp_path=None, **kw):
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      enable_checkpointing=False, default_root_dir=tmp_path, **kw)


def ab_callback(**kw):
    return AutoBalanceCallback(COUNTS, **{"interval": 3, "upper_lr": 0.05, "val_batches": None, **kw})


def test_fit_moves_alpha_with_the_callbacks_criterion_and_restores_the_module(tmp_path):
    train_dl, val_dl = loaders()
    cb = ab_callback()  # no val_loader: the trainer's validation dataloader is used
    module = Lit()
    w0 = module.net.fc.weight.detach().clone()
    keys = set(module.state_dict())
    trainer(2, [cb], tmp_path).fit(module, train_dl, val_dl)
    crit = cb.criterion
    assert set(module.used) == {type(crit)} and len(module.used) == 8
    assert crit.steps == 8 and crit.hyper_steps == 2
    assert max(abs(v) for v in crit.alpha["logit_bias"]) > 1e-3
    assert not torch.equal(module.net.fc.weight, w0)
    assert isinstance(module.criterion, nn.CrossEntropyLoss)  # teardown put the original back
    assert set(module.state_dict()) == keys  # α never entered the module's state_dict
    assert not crit.is_attached


def test_checkpoint_resume_continues_with_the_same_alpha(tmp_path):
    train_dl, val_dl = loaders()
    full_cb = ab_callback(val_loader=val_dl)
    trainer(2, [full_cb], tmp_path).fit(Lit(), train_dl)

    first_cb = ab_callback(val_loader=val_dl)
    t1 = trainer(1, [first_cb], tmp_path)
    t1.fit(Lit(), train_dl)
    ckpt = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["callbacks"]["AutoBalanceCallback"]
    assert saved["criterion"]["_extra_state"]["bilevel"]["upper"]["steps"] == first_cb.criterion.hyper_steps == 1

    resumed_cb = ab_callback(val_loader=val_dl)  # fresh callback and module (other init)
    probe = AlphaAtStart(resumed_cb)
    trainer(2, [resumed_cb, probe], tmp_path).fit(Lit(seed=5), train_dl, ckpt_path=ckpt)
    assert probe.alpha == first_cb.criterion.alpha  # restored before training resumed
    crit, ref = resumed_cb.criterion, full_cb.criterion
    assert crit.steps == ref.steps == 8 and crit.hyper_steps == ref.hyper_steps == 2
    for k in ref.alpha:
        assert torch.allclose(torch.tensor(ref.alpha[k]), torch.tensor(crit.alpha[k]), atol=1e-5), k


def test_criterion_assigned_in_the_module_and_explicit_model_attr(tmp_path):
    train_dl, val_dl = loaders()
    cb = AutoBalanceCallback(COUNTS, val_loader=val_dl, model_attr="net", criterion_attr=None, interval=2)

    class Own(Lit):
        def __init__(self) -> None:
            super().__init__()
            self.criterion = cb.criterion  # pattern 2: a submodule, saved with the module too

    module = Own()
    trainer(1, [cb], tmp_path).fit(module, train_dl)
    assert module.criterion is cb.criterion and cb.criterion.hyper_steps == 2
    assert "criterion._extra_state" in module.state_dict()
    assert all(not p.requires_grad for p in cb.criterion.parameters())  # in self.parameters(), never trained


def test_fit_learns_a_policy_beside_alpha(tmp_path):
    from ab_plugin.policies import ClassPolicy

    train_dl, val_dl = loaders()
    policy = ClassPolicy(C, ("rotate", "contrast"), init_probability=0.3, init_magnitude=0.3)
    start = [p.detach().clone() for p in policy.hparameters()]
    cb = ab_callback(val_loader=val_dl, policy=policy, pixel_mean=[0.5] * 3, pixel_std=[0.25] * 3)
    x0, seen = X.clone(), []

    class Seeing(Lit):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0].clone())
            return super().training_step(batch, batch_idx)

    trainer(2, [cb], tmp_path).fit(Seeing(), train_dl)
    assert cb.criterion.hyper_steps == 2
    assert not any(torch.equal(s, X[16 * (i % 4) : 16 * (i % 4) + 16]) for i, s in enumerate(seen))  # augmented
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(policy.hparameters(), start, strict=True))
    assert torch.equal(X, x0)  # the loader's data is never written


class OtherLoss(Lit):
    """Trains with its own ``loss_fn``: the callback's criterion (injected as ``criterion``) is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.loss_fn = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self.net(x), y)


def test_a_module_that_never_calls_the_criterion_is_warned_once(tmp_path):
    train_dl, val_dl = loaders()
    with pytest.warns(RuntimeWarning, match="did not call the callback's criterion") as caught:
        trainer(1, [ab_callback()], tmp_path).fit(OtherLoss(), train_dl, val_dl)
    assert sum("did not call the callback's criterion" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        trainer(1, [ab_callback()], tmp_path).fit(Lit(), *loaders())
    assert not [w for w in quiet if "did not call the callback's criterion" in str(w.message)]
