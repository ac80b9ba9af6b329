"""Training a linear classifier on fixed features: samplers, the MaxNorm projection and the loop.

Everything here works on tensors already computed (features ``[N, D]``, labels ``[N]``), so a stage-2 epoch
costs a matrix product, not a backbone pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SAMPLERS = ("instance", "class_balanced")


def sample_indices(labels: Tensor, num_classes: int, sampler: str, generator: torch.Generator) -> Tensor:
    """One epoch of ``N = len(labels)`` example indices ``[N]``.

    ``instance``: a permutation (every example once). ``class_balanced``: each draw picks a class uniformly
    among those with examples, then one of its examples uniformly (Kang et al. 2020's cRT sampling), so every
    class is drawn about ``N / C`` times whatever its size.
    """
    n = len(labels)
    if sampler == "instance":
        return torch.randperm(n, generator=generator)
    if sampler != "class_balanced":
        raise ValueError(f"unknown sampler {sampler!r}: choose from {', '.join(SAMPLERS)}")
    labels = labels.cpu()
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    present = [m for m in members if len(m)]
    cls = torch.randint(len(present), (n,), generator=generator)
    counts = torch.tensor([len(m) for m in present])
    within = (torch.rand(n, generator=generator, dtype=torch.float64) * counts[cls]).long()
    table = torch.cat(present)
    offsets = torch.cumsum(counts, 0) - counts
    return table[offsets[cls] + within]


@torch.no_grad()
def maxnorm_(weight: Tensor, radius: float) -> Tensor:
    """Project each class's weight row of ``weight`` ``[C, D]`` onto the L2 ball of ``radius`` (in place).

    Rows longer than ``radius`` are scaled to length ``radius``; the others are left untouched (the PGD step of
    Alshammari et al. 2022's weight balancing, with their τ = 1)."""
    norms = weight.norm(dim=1, keepdim=True)
    weight.mul_(torch.where(norms > radius, radius / norms, torch.ones_like(norms)))
    return weight


def relative_radius(weight: Tensor, thresh: float) -> float:
    """The MaxNorm radius ``min + thresh · (max − min)`` of ``weight``'s row norms, as Alshammari et al. set it
    once from the classifier stage 2 starts from (``thresh`` in [0, 1])."""
    norms = weight.detach().norm(dim=1)
    return float(norms.min() + thresh * (norms.max() - norms.min()))


def fit_classifier(
    classifier: nn.Linear,
    features: Tensor,
    labels: Tensor,
    loss: nn.Module,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    sampler: str = "instance",
    maxnorm_radius: float | None = None,
    seed: int = 0,
) -> nn.Linear:
    """Train ``classifier`` (in place, and returned) on fixed ``features`` ``[N, D]`` and ``labels`` ``[N]``.

    SGD with ``momentum`` and L2 ``weight_decay`` on weight and bias, the learning rate on a cosine from ``lr``
    to 0 over all steps, ``loss(logits [B, C], labels [B])`` (any
    :class:`~ab_plugin.losses.ParametricCrossEntropy`; its α is not trained here), batches drawn by
    ``sampler`` (:func:`sample_indices`). With ``maxnorm_radius`` every step is followed by :func:`maxnorm_`
    on the weight (projected gradient descent; the bias is not constrained, as in the reference code).
    The same ``seed`` gives the same classifier.
    """
    generator = torch.Generator().manual_seed(seed)
    params = [classifier.weight, *([classifier.bias] if classifier.bias is not None else [])]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(labels)
    per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * per_epoch
    step = 0
    for _ in range(epochs):
        order = sample_indices(labels, classifier.out_features, sampler, generator).to(features.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            with torch.enable_grad():
                value = loss(classifier(features[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                value.backward(inputs=params)
            opt.step()
            if maxnorm_radius is not None:
                maxnorm_(classifier.weight.data, maxnorm_radius)
            step += 1
    return classifier
