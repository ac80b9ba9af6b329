"""timm integration with timm's real parts: create_model registry, optimizer / scheduler factories, Mixup,
ModelEmaV3, ClassificationTask."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import float_blobs
from timm.data import Mixup
from timm.models import load_checkpoint, resume_checkpoint
from timm.task import ClassificationTask
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset

import ab_plugin  # noqa: F401  (registers resnet20_cifar)
from ab_plugin.integrations import AutoBalanceTimmCallback, train_timm

C = 4
COUNTS = [40, 20, 8, 4]


X, Y = float_blobs(COUNTS, 0)
XV, YV = float_blobs([6, 6, 6, 6], 1)
TRAIN = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=False, drop_last=True)  # 4 steps per epoch
VAL = DataLoader(TensorDataset(XV, YV), batch_size=24)


def resnet(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("resnet20_cifar", num_classes=C, widths=(4, 8, 8))


def test_train_timm_with_mixup_ema_and_task_moves_alpha_and_trains_the_model():
    model = resnet()
    w0 = copy.deepcopy(model.state_dict())
    mixup = dict(mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    run = train_timm(model, TRAIN, VAL, COUNTS, epochs=2, lr=0.05, mixup=mixup, ema_decay=0.9,
                     criterion_options={"interval": 2, "upper_lr": 0.05}, eval_loader=VAL)
    crit = run.criterion
    assert crit.steps == 8 and crit.hyper_steps == 4
    assert max(abs(v) for v in crit.alpha["logit_bias"]) > 1e-3  # neutral init: l = 0
    assert not torch.equal(model.fc.weight, w0["fc.weight"])
    assert all(t.ndim == 2 for t in crit.core.targets)  # Mixup's soft targets reached the criterion
    assert isinstance(run.ema, ModelEmaV3) and not torch.equal(run.ema.module.fc.weight, model.fc.weight)
    assert [r["epoch"] for r in run.history] == [1, 2] and "balanced_error" in run.history[-1]
    assert isinstance(run.task, ClassificationTask) and run.task.criterion is crit
    assert not crit.is_attached  # on_train_end removed the hooks


def test_timm_run_checkpoint_uses_timms_keys(tmp_path):
    run = train_timm(resnet(), TRAIN, VAL, COUNTS, epochs=1, ema_decay=0.5, criterion_options={"interval": 2})
    path = tmp_path / "run.pth"
    torch.save(run.state_dict(), path)
    ema_only = resnet(seed=7)
    load_checkpoint(ema_only, str(path), use_ema=True)  # timm reads state_dict_ema / model_ema
    assert all(torch.equal(a, b) for a, b in zip(ema_only.state_dict().values(),
                                                 run.ema.module.state_dict().values(), strict=True))
    assert not torch.equal(ema_only.fc.weight, run.model.fc.weight)
    live = resnet(seed=7)
    optimizer = timm.optim.create_optimizer_v2(live, opt="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    assert resume_checkpoint(live, str(path), optimizer=optimizer, log_info=False) == 1  # the next epoch
    assert torch.equal(live.fc.weight, run.model.fc.weight)
    assert optimizer.state_dict()["state"].keys() == run.optimizer.state_dict()["state"].keys()


def test_resumed_timm_run_continues_with_the_same_alpha():
    opts = {"interval": 3, "upper_lr": 0.05}  # hyper-steps straddle the epoch boundary
    full = train_timm(resnet(), TRAIN, VAL, COUNTS, epochs=2, criterion_options=opts)
    half = train_timm(resnet(), TRAIN, VAL, COUNTS, epochs=2, stop_after=1, criterion_options=opts)
    saved = copy.deepcopy(half.state_dict())
    assert saved["autobalance"]["criterion"]["_extra_state"]["steps"] == 4
    resumed = train_timm(resnet(seed=99), TRAIN, VAL, COUNTS, epochs=2, criterion_options=opts, resume=saved)
    assert resumed.epoch == 2 and resumed.criterion.hyper_steps == full.criterion.hyper_steps == 2
    for k in full.criterion.alpha:
        a, b = torch.tensor(full.criterion.alpha[k]), torch.tensor(resumed.criterion.alpha[k])
        assert torch.allclose(a, b, atol=1e-5), k
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v.float(), resumed.model.state_dict()[k].float(), atol=1e-5), k


def test_callback_in_a_hand_written_timm_loop_never_touches_model_grads():
    model = resnet()
    callback = AutoBalanceTimmCallback(COUNTS, val_loader=VAL, interval=1)
    task = ClassificationTask(model, callback.criterion, verbose=False)
    ema = ModelEmaV3(model, decay=0.5)  # created before attach: a plain copy
    mixup = Mixup(mixup_alpha=0.4, label_smoothing=0.0, num_classes=C)
    opt = timm.optim.create_optimizer_v2(model, opt="sgd", lr=0.05)
    callback.on_train_start(model)
    for step, (x, y) in enumerate(TRAIN):
        xm, ym = mixup(x, y)
        out = task(xm, ym)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        ema.update(model, step=step)
        grads = [p.grad.clone() for p in model.parameters()]
        norm = callback.on_batch_end(model, out["output"], ym)
        assert norm is not None  # interval 1: a hyper-step after every optimizer step
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    assert callback.criterion.hyper_steps == len(TRAIN)
    state = callback.state_dict()
    other = AutoBalanceTimmCallback(COUNTS, interval=1)
    other.load_state_dict(state)
    assert other.criterion.alpha == callback.criterion.alpha and other.criterion.hyper_steps == len(TRAIN)


def test_callback_learns_a_policy_from_the_batches_it_augments():
    from ab_plugin.policies import ClassPolicy

    model = resnet()
    policy = ClassPolicy(C, ("translate", "saturation"), init_probability=0.3, init_magnitude=0.3)
    start = [p.detach().clone() for p in policy.hparameters()]
    callback = AutoBalanceTimmCallback(COUNTS, val_loader=VAL, interval=1, policy=policy,
                                       pixel_mean=[0.5] * 3, pixel_std=[0.25] * 3)
    task = ClassificationTask(model, callback.criterion, verbose=False)
    opt = timm.optim.create_optimizer_v2(model, opt="sgd", lr=0.05)
    callback.on_train_start(model, optimizer=opt)
    for x, y in TRAIN:
        out = task(callback.augment(x, y), y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        callback.on_batch_end(model, out["output"], y)
    assert callback.criterion.hyper_steps == len(TRAIN)
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(policy.hparameters(), start, strict=True))


def _train_py_epoch(task, loader, optimizer, num_updates: int) -> int:
    """``train_one_epoch`` of timm's current ``train.py`` (>= 1.0.27), reduced to its structure: the loss comes
    from ``task(input, target)`` (there is no ``loss_fn`` argument), and after ``num_updates += 1`` the EMA update
    and, README's edit, ``task.criterion.step()``."""
    task.get_trainable_module().train()
    for x, y in loader:
        output = task(x, y)
        output["loss"].backward()
        optimizer.step()
        num_updates += 1
        optimizer.zero_grad()
        task.update_ema(step=num_updates)
        task.criterion.step()  # README's edit to train.py
    return num_updates


def _train_py_setup(tmp_path, seed: int = 0):
    """``main()`` of timm's ``train.py`` with README's edits: the criterion after the loss block, AutoBalanceTask in
    place of ClassificationTask, the optimizer, a CheckpointSaver given the task."""
    from timm.optim import create_optimizer_v2
    from timm.utils import CheckpointSaver

    from ab_plugin.integrations import AutoBalanceCriterion, AutoBalanceTask

    model = resnet(seed)
    train_loss_fn = AutoBalanceCriterion(COUNTS, auto_step=False, interval=2, upper_lr=0.05).attach(model, VAL)
    task = AutoBalanceTask(model, criterion=train_loss_fn, verbose=False)
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt="sgd", lr=0.05, weight_decay=5e-4)
    saver = CheckpointSaver(model=model, optimizer=optimizer, checkpoint_dir=str(tmp_path),
                            recovery_dir=str(tmp_path), task=task)
    return task, optimizer, saver


def test_train_py_edits_learn_alpha_and_timms_resume_restores_it(tmp_path):
    from timm.task import resume_task_checkpoint

    task, optimizer, saver = _train_py_setup(tmp_path)
    crit = task.criterion
    start = copy.deepcopy(crit.alpha)
    updates = _train_py_epoch(task, TRAIN, optimizer, 0)
    saver.save_checkpoint(epoch=0, metric=1.0)
    assert crit.hyper_steps == updates // 2 == 2 and crit.alpha != start
    checkpoint = torch.load(tmp_path / "last.pth.tar", map_location="cpu", weights_only=True)  # timm's own loader
    assert "autobalance" in checkpoint["task_state"]

    resumed, optimizer2, _ = _train_py_setup(tmp_path / "resumed", seed=1)
    resume_epoch = resume_task_checkpoint(resumed, str(tmp_path / "last.pth.tar"), optimizer=optimizer2)
    assert resume_epoch == 1
    assert resumed.criterion.alpha == crit.alpha and resumed.criterion.steps == crit.steps
    # both continue with the same α steps: the next epoch is the same run
    _train_py_epoch(task, TRAIN, optimizer, updates)
    _train_py_epoch(resumed, TRAIN, optimizer2, updates)
    assert resumed.criterion.alpha == crit.alpha


def test_a_checkpoint_without_autobalance_state_is_refused(tmp_path):
    task, _, _ = _train_py_setup(tmp_path)
    with pytest.raises(ValueError, match="no AutoBalance state"):
        task.load_task_state({"other": 1})
    task.load_task_state(None, strict=False)  # a plain checkpoint loaded leniently keeps α's init
