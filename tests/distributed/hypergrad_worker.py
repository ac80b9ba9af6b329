"""One hyper-step on fixed data, run alone (the union of the batches) or by each rank of ``torchrun`` (its shard).

``python hypergrad_worker.py OUT`` writes ``OUT/rank{r}.pt`` holding ``{engine: [grad per hparam]}`` for the
head engine (θ = the classifier, on features) and the cg / neumann engines (θ = every weight of a small CNN).
Every process builds the same data from a fixed seed; on N ranks each keeps its contiguous ``1/N`` of every
batch, so the union of the ranks' batches is what one process sees.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ab_plugin.distributed import check_same, is_distributed, process_group, rank, shard
from ab_plugin.hypergrad import FeatureProblem, ModelProblem, create_engine
from ab_plugin.losses import ParametricCrossEntropy
from ab_plugin.objectives import balanced_ce

C, D, B, HW = 4, 6, 8, 6  # classes, feature width, global batch, image side


def _loss() -> ParametricCrossEntropy:
    # class weights make the training loss a weighted mean Σwℓ / Σw, which is not a mean over the ranks
    gen = torch.Generator().manual_seed(1)
    loss = ParametricCrossEntropy(C, learn=("class_weight", "logit_bias", "logit_scale"))
    with torch.no_grad():
        for p in loss.hparameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return loss


def _mine(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    part = shard(len(tensors[0]))
    return tuple(t[part] for t in tensors)


def head_grads() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    clf = nn.Linear(D, C)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(C, D, generator=gen))
        clf.bias.copy_(torch.randn(C, generator=gen))
    train = [_mine(torch.randn(B, D, generator=gen), torch.randint(0, C, (B,), generator=gen)) for _ in range(2)]
    val = [_mine(torch.randn(3 * B, D, generator=gen), torch.arange(3 * B) % C)]
    loss = _loss()
    problem = FeatureProblem(clf, loss, balanced_ce, loss.hparameters(), train, val, weight_decay=5e-3)
    return create_engine("head", iters=20, tol=0.0)(problem)


def model_grads(engine: str, **options) -> list[torch.Tensor]:
    torch.manual_seed(0)  # BatchNorm would make a sample's output depend on its batch: none here
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, C))
    gen = torch.Generator().manual_seed(2)
    train = [_mine(torch.randn(B, 3, HW, HW, generator=gen), torch.randint(0, C, (B,), generator=gen))
             for _ in range(2)]
    val = [_mine(torch.randn(B, 3, HW, HW, generator=gen), torch.arange(B) % C) for _ in range(2)]
    loss = _loss()
    problem = ModelProblem(model, loss, balanced_ce, loss.hparameters(), train, val,
                           lambda x, y, m=None: (m or model)(x), lambda x, m=None: (m or model)(x), 5e-3)
    return create_engine(engine, **options)(problem)


def main(out: Path) -> None:
    with process_group(torch.device("cpu")):
        grads = {
            "head": head_grads(),
            "cg": model_grads("cg", iters=8, tol=0.0, damping=0.1),
            "neumann": model_grads("neumann", terms=4, step=0.5),
        }
        try:  # the guard the trainer runs before each checkpoint must notice α differing between ranks
            check_same([torch.tensor([float(rank())])], "α")
            guard = "silent"
        except RuntimeError:
            guard = "raised"
        torch.save({"distributed": is_distributed(), "grads": grads, "guard": guard}, out / f"rank{rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
