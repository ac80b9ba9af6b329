"""Shared fixtures: small synthetic long-tailed image data and a tiny timm-style CNN."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from ab_plugin.data import DatasetBundle, ImageData

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


class TinyNet(nn.Module):
    """A timm-shaped small CNN: forward_features / forward_head / get_classifier."""

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, width
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def float_blobs(counts, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images ``[N, 3, size, size]`` around a random centre per class, and labels ``[N]``."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    centers = torch.randn(len(counts), 3, 1, 1, generator=g)
    return centers[ys] + 1.5 * torch.randn(len(ys), 3, size, size, generator=g), ys


def blobs(counts, size=8, seed=0, noise=60.0, groups=False) -> ImageData:
    """Class c: a noisy image of a class colour (learnable, but noisy enough that the tail suffers)."""
    g = torch.Generator().manual_seed(seed)
    imgs, ys = [], []
    for c, n in enumerate(counts):
        base = torch.full((3, size, size), 80.0)
        for ch in range(3):  # a distinct colour per class (binary code of c + 1)
            base[ch] += 45.0 * (((c + 1) >> ch) & 1)
        x = base + noise * torch.randn(n, 3, size, size, generator=g)
        imgs.append(x.clamp(0, 255).to(torch.uint8))
        ys.append(torch.full((n,), c))
    images, targets = torch.cat(imgs), torch.cat(ys)
    grp = (torch.arange(len(targets)) % 5 == 0).long() if groups else None
    return ImageData(images, targets, [f"c{i}" for i in range(len(counts))], grp,
                     ["major", "minor"] if groups else None)


@pytest.fixture
def tiny_bundle() -> DatasetBundle:
    train = blobs([160, 60, 20, 8], seed=0)
    test = blobs([60, 60, 60, 60], seed=1)
    return DatasetBundle("blobs", train, test, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture
def tiny_net():
    return TinyNet


def write_list_tree(root: Path, counts, *, prefix: str = "ImageNet_LT", eval_per_class: int = 2,
                    size: int = 20) -> Path:
    """A tiny list-file dataset in ``root``: ``PREFIX_{train,val,test}.txt`` (``split/nCLASS/i.JPEG label``
    lines) and the JPEGs they name, ``counts[c]`` training and ``eval_per_class`` val / test images per class,
    each a class colour with noise (``size`` pixels square). Returns ``root``."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, per_class in (("train", counts), ("val", [eval_per_class] * len(counts)),
                             ("test", [eval_per_class] * len(counts))):
        lines = []
        for c, n in enumerate(per_class):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = torch.tensor([60.0 + 60 * ((c + 1 >> ch) & 1) for ch in range(3)]).view(1, 1, 3)
            for i in range(n):
                x = (colour + 30 * torch.randn(size, size, 3, generator=g)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(x.numpy()).save(folder / f"{i}.JPEG", format="JPEG")
                lines.append(f"{split}/n{c:08d}/{i}.JPEG {c}")
        (root / f"{prefix}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def cli(*args: str) -> tuple[int, str, str]:
    """``ab-plugin ARGS`` through click's runner: exit code, stdout, stderr."""
    from click.testing import CliRunner

    from ab_plugin.cli import main

    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def one_line_error(code: int, stderr: str, *needles: str) -> str:
    """Exit code 2, no traceback, one ``error:`` line (the last; only ``warning:`` lines before it) holding every
    needle; returns that line."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert code == 2, stderr
    assert "Traceback" not in stderr and lines[-1].startswith("error: "), stderr
    assert all(ln.startswith("warning: ") for ln in lines[:-1]), stderr
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]
