"""``AutoBalanceCallback`` under Lightning's DDP strategy (2 CPU processes, gloo): each rank saves its α.

``python lightning_worker.py OUT`` writes ``OUT/rank{r}.pt``: ``{"start": α, "alpha": α after fit, "hyper_steps": n}``.
Lightning starts the second process itself (its ``ddp`` strategy re-runs this script) and gives each rank its
shard of the training batches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ab_plugin.integrations import AutoBalanceCallback

COUNTS = [40, 20, 8, 4]


def _blobs(counts: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.randn(len(y), 3, 8, 8, generator=gen) + y[:, None, None, None].float()
    return x, y


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, len(COUNTS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class Lit(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = Net()
        self.criterion = nn.CrossEntropyLoss()  # the callback swaps it for AutoBalance during fit

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main(out: Path) -> None:
    x, y = _blobs(COUNTS, 0)
    val = DataLoader(TensorDataset(*_blobs([6, 6, 6, 6], 1)), batch_size=12)
    callback = AutoBalanceCallback(COUNTS, interval=2, upper_lr=0.05, val_loader=val, val_batches=None)
    start = callback.criterion.alpha
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", callbacks=[callback],
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=out)
    trainer.fit(Lit(), DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, drop_last=True))
    torch.save({"start": start, "alpha": callback.criterion.alpha, "hyper_steps": callback.criterion.upper.steps},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
