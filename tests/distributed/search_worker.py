"""A short search through the Python API, run alone or by each rank of ``torchrun``: ``OUT/rank{r}.pt`` holds α.

The network has no BatchNorm and augmentation is off (unless a second argument names a kind), so the only
difference between 1 and N ranks left is the order of floating-point sums: the α of the two runs must agree to
rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ab_plugin import AutoBalance, Config
from ab_plugin.distributed import process_group, rank
from ab_plugin.runs import load_bundle


class Net(nn.Module):
    """timm-shaped: ``forward_features`` / ``forward_head`` / ``get_classifier``, no normalisation layers."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Tanh(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Tanh())
        self.fc = nn.Linear(16, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def main(out: Path, augment: str = "none") -> None:
    cfg = Config(epochs=2, batch_size=32, interval=2, upper_start=0.0, augment=augment, device="cpu", seed=0)
    with process_group(torch.device("cpu")):
        bundle = load_bundle(cfg)
        torch.manual_seed(0)
        result = AutoBalance(cfg).fit(bundle, model=Net(bundle.train.num_classes))
        levels = [h.get("augmentation_levels") for h in result.history]  # with --augment cuda
        torch.save({"alpha": result.alpha, "hyper_steps": result.hyper_steps, "levels": levels},
                   out / f"rank{rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
