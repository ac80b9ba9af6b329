"""torchvision integration: a torchvision model in the reference-shaped loop, per-class policies in v2 pipelines
and collate functions, v2 MixUp / CutMix soft targets."""

from __future__ import annotations

import copy

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2

from ab_plugin.integrations import (
    AutoBalanceCriterion,
    PerClassCollate,
    SampleTransformDataset,
    evaluate,
    train_one_epoch,
)
from ab_plugin.policies import ClassPolicy, PerClassTransform, PerClassTransformV2

C = 4
COUNTS = [32, 16, 8, 8]
MEAN, STD = [0.5] * 3, [0.25] * 3


def images(counts, seed: int, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    ys = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    base = torch.tensor([[60.0, 120, 180], [180, 60, 120], [120, 180, 60], [90, 90, 200]])[ys][:, :, None, None]
    x = (base + 40 * torch.randn(len(ys), 3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
    return x, ys


X, Y = images(COUNTS, 0)
XV, YV = images([4, 4, 4, 4], 1)
POLICY = ClassPolicy(C, ops=("translate", "brightness"), learnable=False, crop_flip=True, init_probability=0.5)
NORM = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
VAL = DataLoader(SampleTransformDataset(TensorDataset(XV, YV), transform=NORM), batch_size=16)


def tv_model(seed: int = 0):
    torch.manual_seed(seed)
    return torchvision.models.get_model("shufflenet_v2_x0_5", num_classes=C)  # split_model finds its `fc`


def test_reference_loop_with_v2_policy_pipeline_and_mixup_cutmix():
    model = tv_model()
    w0 = model.fc.weight.detach().clone()
    pipeline = v2.Compose([PerClassTransformV2(POLICY), NORM])
    train_set = SampleTransformDataset(TensorDataset(X, Y), transforms=pipeline)
    image, label = train_set[0]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 16) and int(label) == 0
    mix = v2.RandomChoice([v2.MixUp(num_classes=C), v2.CutMix(num_classes=C)])
    loader = DataLoader(train_set, batch_size=16, shuffle=True, drop_last=True, collate_fn=PerClassCollate(mix=mix))
    criterion = AutoBalanceCriterion(COUNTS, interval=1, val_batches=None, upper_lr=0.05).attach(model, VAL)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stats = train_one_epoch(model, criterion, optimizer, loader, "cpu", 0)
    assert stats["steps"] == 4 and criterion.hyper_steps == 4
    assert all(t.ndim == 2 for t in criterion.core.targets)  # v2 MixUp / CutMix soft targets
    assert max(abs(v) for v in criterion.alpha["logit_bias"]) > 1e-3
    assert not torch.equal(model.fc.weight, w0)
    steps = criterion.steps
    ev = evaluate(model, criterion, VAL, "cpu", C)  # inference_mode calls are not training steps
    assert criterion.steps == steps
    assert 0 <= ev["balanced_error"] <= 1 and len(ev["per_class_error"]) == C


def test_batched_policy_in_the_collate_fn():
    collate = PerClassCollate(PerClassTransform(POLICY), mean=MEAN, std=STD)
    loader = DataLoader(TensorDataset(X, Y), batch_size=8, collate_fn=collate)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 16, 16) and y.dtype == torch.int64
    plain = (X[:8].float() / 255 - 0.5) / 0.25
    assert not torch.allclose(x, plain)  # augmented, then normalised
    assert abs(float(x.mean()) - float(plain.mean())) < 1.0


def test_torchvision_model_grads_equal_plain_loss_grads():
    model = tv_model()
    criterion = AutoBalanceCriterion(COUNTS, interval=2, upper_lr=0.05).attach(model, VAL)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = NORM(X[:16]), Y[:16]
    for _ in range(3):
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    twin = copy.deepcopy(model)
    loss = criterion(model(x), y)  # the 4th call takes a hyper-step inside
    assert criterion.hyper_steps == 2
    optimizer.zero_grad()
    loss.backward()
    ref = criterion.loss(twin(x), y)  # the same α, α frozen: an ordinary loss
    ref.backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
