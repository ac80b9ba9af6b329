"""A timm training loop (``train.py``-shaped) with AutoBalance plugged in through its callback.

    python examples/timm_loop.py                       # under a minute on 2 idle CPU cores
    python examples/timm_loop.py --quick               # a few seconds (smoke test)
    python examples/timm_loop.py --checkpoint ck.pt    # save every epoch; add --resume to continue

Everything but the loss comes from timm: ``timm.create_model`` (the CIFAR ResNets that ab-plugin registers),
``resolve_data_config`` + ``create_transform`` (per-sample transforms on tensors), ``Mixup`` / CutMix with
soft targets, ``create_optimizer_v2``, ``create_scheduler_v2``, ``ModelEmaV3`` and
``timm.task.ClassificationTask(model, criterion)``. AutoBalance adds three calls: build the callback, use
``callback.criterion`` as the task's criterion, call ``callback.on_batch_end`` after the optimizer step
(and keep ``callback.state_dict()`` in the checkpoint). Data: the embedded ``digits-lt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch
from timm.data import Mixup, create_transform, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import Compose, ConvertImageDtype

import ab_plugin  # noqa: F401  (registers resnet20_cifar ... resnet110_cifar in timm)
from ab_plugin.data import create_dataset, split_per_class
from ab_plugin.integrations import AutoBalanceTimmCallback, SampleTransformDataset, evaluate_metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="1 epoch of 2 small steps (smoke test)")
    p.add_argument("--model", default="resnet20_cifar")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.2, help="mixup alpha (0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    p.add_argument("--ema-decay", type=float, default=0.9)
    p.add_argument("--interval", type=int, default=2)
    p.add_argument("--checkpoint", type=Path, default=None, help="save a resumable checkpoint every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    epochs, max_steps = (1, 2) if args.quick else (args.epochs, None)
    interval, batch_size = (1, 16) if args.quick else (args.interval, args.batch_size)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    t0 = time.perf_counter()

    bundle = create_dataset("digits-lt")
    train, val = split_per_class(bundle.train, val_fraction=0.2, seed=args.seed)
    test = bundle.test.subset(torch.arange(0, len(bundle.test), 5)) if args.quick else bundle.test
    num_classes = bundle.num_classes

    # model and data config from timm (mean / std / size come from the model's pretrained_cfg)
    model = timm.create_model(args.model, num_classes=num_classes, drop_rate=0.1).to(device)
    data_config = resolve_data_config(model=model)
    to_float = ConvertImageDtype(torch.float32)  # uint8 [3, H, W] -> float in [0, 1]; timm's transforms take it
    train_tf = Compose([to_float, create_transform(**data_config, is_training=True, scale=(0.75, 1.0),
                                                   ratio=(0.9, 1.1), hflip=0.0, color_jitter=0.2)])
    eval_tf = Compose([to_float, create_transform(**data_config)])

    def preprocessed(data):  # deterministic eval transform: apply it once
        return TensorDataset(torch.stack([eval_tf(img) for img in data.images]), data.targets)

    train_set = SampleTransformDataset(TensorDataset(train.images, train.targets), transform=train_tf)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(preprocessed(val), batch_size=256)
    test_loader = DataLoader(preprocessed(test), batch_size=256)

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=0.1,
                         num_classes=num_classes)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=args.lr, weight_decay=5e-4, momentum=0.9)
    updates_per_epoch = max_steps or len(loader)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=1,
                                       warmup_lr=args.lr * 0.1, step_on_epochs=False,
                                       updates_per_epoch=updates_per_epoch)
    ema = ModelEmaV3(model, decay=args.ema_decay)

    # AutoBalance: the callback owns the self-tuning criterion, which the timm task uses as its loss
    callback = AutoBalanceTimmCallback(train.class_counts(), val_loader=val_loader, init="la", interval=interval,
                                       val_batches=None, upper_lr=0.05)
    task = ClassificationTask(model, callback.criterion, device=device, verbose=False)

    start_epoch, num_updates = 0, 0
    if args.resume and args.checkpoint is not None and args.checkpoint.is_file():
        ck = torch.load(args.checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(ck["state_dict"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        ema.module.load_state_dict(ck["state_dict_ema"])
        callback.load_state_dict(ck["autobalance"])  # α, the upper optimizer, counters
        start_epoch, num_updates = ck["epoch"], ck["num_updates"]
        print(f"resumed at epoch {start_epoch} with hyper-steps {callback.criterion.hyper_steps}")
    start = torch.tensor(callback.criterion.alpha["logit_bias"])

    callback.on_train_start(model)
    for epoch in range(start_epoch, epochs):
        model.train()
        for step, (x, y) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            x, y = x.to(device), y.to(device)
            if mixup_fn is not None:
                x, y = mixup_fn(x, y)  # y: soft targets [B, C]
            out = task(x, y)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            num_updates += 1
            ema.update(model, step=num_updates)
            callback.on_batch_end(model, out["output"], y)  # hyper-step on α when due
            scheduler.step_update(num_updates=num_updates)
        scheduler.step(epoch + 1)
        m = evaluate_metrics(ema.module, test_loader, num_classes)
        record = callback.on_epoch_end(epoch, {"test_balanced_error": m.balanced_error})
        print(f"epoch {epoch + 1}/{epochs}: loss {float(out['loss'].detach()):.3f}  EMA test balanced error "
              f"{m.balanced_error:.3f}  hyper-steps {record['hyper_steps']}", flush=True)
        if args.checkpoint is not None:
            # timm's checkpoint keys: timm's load_checkpoint(model, path, use_ema=True) finds the EMA weights
            torch.save({"state_dict": model.state_dict(), "state_dict_ema": ema.module.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "autobalance": callback.state_dict(), "epoch": epoch + 1, "num_updates": num_updates},
                       args.checkpoint)
    callback.on_train_end()
    m = evaluate_metrics(ema.module, test_loader, num_classes)

    moved = float((torch.tensor(callback.criterion.alpha["logit_bias"]) - start).abs().max())
    seconds = time.perf_counter() - t0
    print(f"done: EMA test balanced error {m.balanced_error:.3f}, hyper-steps {callback.criterion.hyper_steps}, "
          f"alpha moved {moved:.4f}, {seconds:.1f}s")
    return {"balanced_error": m.balanced_error, "alpha_moved": moved, "seconds": seconds}


if __name__ == "__main__":
    main()
