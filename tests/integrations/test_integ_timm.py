"""timm integration with timm's real parts: create_model registry, optimizer / scheduler factories, Mixup,
ModelEmaV3, ClassificationTask."""

from __future__ import annotations

import copy

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
    assert all(t.ndim == 2 for _, t in crit._buffer)  # Mixup's soft targets reached the criterion
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
    callback.on_train_start(model)
    for x, y in TRAIN:
        out = task(callback.augment(x, y), y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        callback.on_batch_end(model, out["output"], y)
    assert callback.criterion.hyper_steps == len(TRAIN)
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(policy.hparameters(), start, strict=True))
