"""Exported per-class policies in ordinary pipelines (a real ImageFolder tree, torchvision v2 and timm's
create_loader, through the label-passing SampleTransformDataset), and README's timm train.py lines on a loop
built from the functions train.py uses."""

from __future__ import annotations

import subprocess
import sys
from argparse import Namespace

import pytest
import torch
from PIL import Image
from timm.data import Mixup, create_dataset, create_loader
from timm.models import create_model, load_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import CheckpointSaver
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

import ab_plugin.models  # noqa: F401  (what `--device-modules ab_plugin.models` imports in timm's train.py)
from ab_plugin.integrations import AutoBalanceCriterion, AutoBalanceTask, SampleTransformDataset
from ab_plugin.policies import ClassPolicy, PerClassTransformV2

COUNTS = {"cat": 8, "dog": 4, "emu": 2}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _write_tree(root, counts, seed):
    g = torch.Generator().manual_seed(seed)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            base = torch.tensor([70.0 + 60 * c, 180.0 - 50 * c, 120.0])[:, None, None]
            img = (base + 30 * torch.randn(3, 32, 32, generator=g)).clamp(0, 255).to(torch.uint8)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    _write_tree(root / "train", COUNTS, 0)
    _write_tree(root / "val", dict.fromkeys(COUNTS, 3), 1)
    return root


def _brighten_class_zero():
    """A fixed policy: class 0 always gets a strong brightness change, the other classes never."""
    policy = ClassPolicy(len(COUNTS), ops=("brightness",), learnable=False, crop_flip=False, init_magnitude=0.9)
    with torch.no_grad():
        policy.probability_logit.fill_(-30.0)
        policy.probability_logit[0] = 30.0
    return policy


def test_policy_in_a_torchvision_v2_pipeline_around_imagefolder(tree):
    to_input = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    policy = v2.Compose([v2.ToImage(), PerClassTransformV2(_brighten_class_zero()), *to_input[1:]])
    folder = ImageFolder(tree / "train")
    augmented = SampleTransformDataset(folder, transforms=policy)
    plain = SampleTransformDataset(folder, transform=v2.Compose(to_input))
    assert len(augmented) == sum(COUNTS.values())
    seen = set()
    for i in range(len(folder)):
        (x, y), (x0, y0) = augmented[i], plain[i]
        assert y == y0 == folder.targets[i] and x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x, x0) == (y != 0), (i, y)  # only class 0's policy changes pixels
        seen.add(y)
    assert seen == {0, 1, 2}
    batch_x, batch_y = next(iter(torch.utils.data.DataLoader(augmented, batch_size=5)))
    assert batch_x.shape == (5, 3, 32, 32) and batch_y.dtype == torch.int64


def _timm_loader(dataset, is_training, **kwargs):
    return create_loader(dataset, input_size=(3, 32, 32), batch_size=4, is_training=is_training, no_aug=True,
                         mean=MEAN, std=STD, crop_pct=1.0, use_prefetcher=False, num_workers=0,
                         persistent_workers=False, device=torch.device("cpu"), **kwargs)


def test_policy_in_timms_create_loader_through_the_wrapper(tree):
    dataset = create_dataset("", root=str(tree), split="train", is_training=True)
    wrapped = SampleTransformDataset(dataset, transforms=PerClassTransformV2(_brighten_class_zero()))
    loader = _timm_loader(wrapped, is_training=False)
    assert wrapped.transform is not None  # create_loader installed its own image transform on the wrapper
    plain = _timm_loader(create_dataset("", root=str(tree), split="train"), is_training=False)
    (x, y), (x0, y0) = next(iter(loader)), next(iter(plain))  # no shuffle: the same samples
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and torch.equal(y, y0)
    changed = (x - x0).flatten(1).abs().amax(1) > 1e-3
    assert torch.equal(changed, y == 0) and bool(changed.any())


def test_device_modules_import_registers_the_cifar_resnets_for_train_py():
    code = ("import importlib, timm; before = timm.is_model('resnet32_cifar'); "
            "importlib.import_module('ab_plugin.models'); "  # what train.py does for each --device-modules name
            "m = timm.create_model('resnet32_cifar', num_classes=3, **{'normed_head': True}); "  # --model-kwargs
            "print(before, timm.is_model('resnet32_cifar'), type(m.fc).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True", "NormedLinear"], out.stderr[-2000:]


def test_readme_train_py_lines_on_a_loop_from_timms_functions(tree, tmp_path):
    args = Namespace(opt="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, sched="cosine", epochs=2,
                     warmup_epochs=0, min_lr=0.0, decay_epochs=1, decay_rate=0.1, warmup_lr=1e-4,
                     cooldown_epochs=0, patience_epochs=1)
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", num_classes=len(COUNTS), drop_path_rate=0.1, widths=(4, 8, 8))
    dataset_train = create_dataset("", root=str(tree), split="train", is_training=True)
    dataset_eval = create_dataset("", root=str(tree), split="val")
    policy = PerClassTransformV2(_brighten_class_zero())  # an exported policy, per sample, before timm's transform
    loader_train = _timm_loader(SampleTransformDataset(dataset_train, transforms=policy), is_training=True)
    loader_eval = _timm_loader(dataset_eval, is_training=False)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                   updates_per_epoch=len(loader_train))
    mixup_fn = Mixup(mixup_alpha=0.4, label_smoothing=0.1, num_classes=len(COUNTS))

    # README, edit 1: the criterion (after train.py's "setup loss function" block)
    counts = torch.bincount(torch.tensor([t for _, t in dataset_train.reader.samples]))
    train_loss_fn = AutoBalanceCriterion(counts, auto_step=False, interval=1, upper_lr=0.05).attach(model,
                                                                                                    loader_eval)
    assert counts.tolist() == list(COUNTS.values())
    start = list(train_loss_fn.alpha["logit_bias"])

    # README, edit 2: AutoBalanceTask where train.py builds its ClassificationTask
    task = AutoBalanceTask(model=model, criterion=train_loss_fn, verbose=False)
    model_ema = task.setup_ema(decay=0.8)  # train.py's --model-ema
    saver = CheckpointSaver(model=model, optimizer=optimizer, checkpoint_dir=str(tmp_path),
                            recovery_dir=str(tmp_path), max_history=1, task=task)
    num_updates = 0
    for epoch in range(num_epochs):  # train.py's train_one_epoch, reduced to its update sequence
        task.get_trainable_module().train()
        for input, target in loader_train:
            input, target = mixup_fn(input, target)
            loss = task(input, target)["loss"]
            loss.backward()
            optimizer.step()
            num_updates += 1
            optimizer.zero_grad()
            task.update_ema(step=num_updates)
            task.criterion.step()  # README, edit 3: the AutoBalance hyper-step, after the optimizer step
            lr_scheduler.step_update(num_updates=num_updates)
        lr_scheduler.step(epoch + 1)
        saver.save_checkpoint(epoch, metric=float(loss.detach()))

    assert train_loss_fn.hyper_steps == num_updates == num_epochs * len(loader_train)
    assert train_loss_fn.alpha["logit_bias"] != start
    restored = create_model("resnet20_cifar", num_classes=len(COUNTS), widths=(4, 8, 8))
    load_checkpoint(restored, str(tmp_path / "last.pth.tar"), use_ema=True)
    for (k, a), b in zip(model_ema.module.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not torch.equal(restored.fc.weight, model.fc.weight)  # the EMA weights, not the live ones
