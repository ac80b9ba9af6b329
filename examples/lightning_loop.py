"""Lightning: a LightningModule trained with ``AutoBalanceCallback`` (needs ``pip install 'ab-plugin[lightning]'``).

    python examples/lightning_loop.py                          # under a minute on 2 idle CPU cores
    python examples/lightning_loop.py --quick                  # a few seconds (smoke test)
    python examples/lightning_loop.py --ckpt-dir ck            # checkpoints (α included) in ck/
    python examples/lightning_loop.py --ckpt-dir ck --resume   # continue from ck/last.ckpt, same α

The module is ordinary: it computes its training loss with ``self.criterion``. The callback replaces that
attribute with its self-tuning criterion during ``fit`` (a plain attribute, so the module's ``state_dict``
is unchanged), takes the hyper-steps on α in ``on_train_batch_end`` and stores α, the upper optimizer's
state and its counters in the checkpoint's callback state. Validation batches for the hyper-steps come from
the trainer's validation dataloader. Data: the embedded ``digits-lt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning.pytorch as L
import timm
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ab_plugin  # noqa: F401  (registers resnet20_cifar ... resnet110_cifar in timm)
from ab_plugin.data import create_dataset, normalize, random_crop_flip, split_per_class
from ab_plugin.integrations import AutoBalanceCallback, evaluate_metrics


class LitClassifier(L.LightningModule):
    """A plain classifier; ``self.criterion`` is swapped for AutoBalance's by the callback during fit."""

    def __init__(self, backbone: str, num_classes: int, lr: float, epochs: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = timm.create_model(backbone, num_classes=num_classes)
        self.criterion: nn.Module = nn.CrossEntropyLoss()
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # uint8 images: augment and normalise on the device
        x = normalize(random_crop_flip(x).float().div(255.0), self.mean, self.std)
        loss = self.criterion(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.net.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.hparams.epochs)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="1 epoch of 2 small steps (smoke test)")
    p.add_argument("--backbone", default="resnet20_cifar")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--interval", type=int, default=2)
    p.add_argument("--ckpt-dir", type=Path, default=None)
    p.add_argument("--resume", action="store_true", help="continue from --ckpt-dir/last.ckpt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    epochs, max_steps = (1, 2) if args.quick else (args.epochs, None)
    interval, batch_size = (1, 16) if args.quick else (args.interval, args.batch_size)
    L.seed_everything(args.seed, verbose=False)
    t0 = time.perf_counter()

    bundle = create_dataset("digits-lt")
    train, val = split_per_class(bundle.train, val_fraction=0.2, seed=args.seed)
    test = bundle.test.subset(torch.arange(0, len(bundle.test), 5)) if args.quick else bundle.test
    mean, std = bundle.mean, bundle.std

    def prepared(data):  # normalised float tensors, what the network takes (validation / test)
        return TensorDataset(normalize(data.images, mean, std), data.targets)

    train_loader = DataLoader(TensorDataset(train.images, train.targets), batch_size=batch_size, shuffle=True,
                              drop_last=True)
    val_loader = DataLoader(prepared(val), batch_size=256)

    module = LitClassifier(args.backbone, bundle.num_classes, args.lr, epochs, mean, std)
    callback = AutoBalanceCallback(train.class_counts(), init="la", interval=interval, val_batches=None,
                                   upper_lr=0.05)
    callbacks: list[L.Callback] = [callback]
    if args.ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=args.ckpt_dir, save_last=True))
    trainer = L.Trainer(max_epochs=epochs, accelerator=args.accelerator, devices=1, callbacks=callbacks,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=args.ckpt_dir is not None, num_sanity_val_steps=0,
                        limit_train_batches=max_steps or 1.0, limit_val_batches=1 if args.quick else 1.0)
    ckpt = str(args.ckpt_dir / "last.ckpt") if args.resume and args.ckpt_dir is not None else None
    start = torch.tensor(callback.criterion.alpha["logit_bias"])
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt)

    m = evaluate_metrics(module.net, DataLoader(prepared(test), batch_size=256), bundle.num_classes)
    crit = callback.criterion
    moved = float((torch.tensor(crit.alpha["logit_bias"]) - start).abs().max())
    seconds = time.perf_counter() - t0
    bias = ", ".join(f"{v:+.2f}" for v in crit.alpha["logit_bias"])
    print(f"logit bias [{bias}]")
    print(f"done: test balanced error {m.balanced_error:.3f}, hyper-steps {crit.hyper_steps}, "
          f"alpha moved {moved:.4f}, {seconds:.1f}s")
    return {"balanced_error": m.balanced_error, "alpha_moved": moved, "seconds": seconds}


if __name__ == "__main__":
    main()
