"""Hypergradients through ``K`` differentiable optimiser steps, with ``higher``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

# `higher` maps optimisers by exact type and re-implements only the update rules below; every other
# setting that changes the update is read by torch but ignored by `higher`, which would silently
# differentiate a different optimiser. Implementation switches (foreach, fused, capturable,
# differentiable) leave the update unchanged and are accepted.
_SUPPORTED = (torch.optim.SGD, torch.optim.Adam)
_IGNORED_BY_HIGHER = {
    "maximize": "maximize=True",
    "decoupled_weight_decay": "decoupled_weight_decay=True (AdamW's decay)",
}
_ALTERNATIVES = (
    "use SGD (momentum, dampening, nesterov, weight decay) or Adam (amsgrad, L2 weight decay), "
    "or an implicit engine (--engine head|cg|neumann)"
)


def check_unrollable(optimizer: torch.optim.Optimizer) -> None:
    """Raise a one-line ``ValueError`` unless ``higher`` differentiates ``optimizer``'s update exactly.

    Accepted: ``torch.optim.SGD`` (any momentum, dampening, nesterov, L2 weight decay) and
    ``torch.optim.Adam`` (L2 weight decay, amsgrad; ``higher`` adds ``eps`` before the bias correction of
    the second moment, a relative difference of order ``eps / sqrt(v)``). Refused: other types
    (subclasses such as AdamW included) and ``maximize`` / ``decoupled_weight_decay`` in any group.
    """
    name = type(optimizer).__name__
    if type(optimizer) not in _SUPPORTED:
        raise ValueError(f"the unrolled engine cannot differentiate {name}: {_ALTERNATIVES}")
    for group in optimizer.param_groups:
        for key, what in _IGNORED_BY_HIGHER.items():
            if group.get(key, False):
                raise ValueError(f"the unrolled engine cannot differentiate {name} with {what}: {_ALTERNATIVES}")


def unrolled_grad(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loss: Callable[[nn.Module, int], torch.Tensor],
    val_loss: Callable[[nn.Module], torch.Tensor],
    hparams: Sequence[torch.Tensor],
    steps: int = 1,
) -> list[torch.Tensor]:
    """``d L_val(θ_K(α)) / dα`` where ``θ_K`` is ``steps`` differentiable updates from the current ``θ``.

    ``train_loss(fmodel, k)`` is step ``k``'s loss (a function of ``hparams``); ``val_loss(fmodel)``
    the validation loss at ``θ_K``. The model's parameters, buffers and the optimiser's state are left
    untouched (the unroll works on copies).
    """
    import higher

    check_unrollable(optimizer)
    hparams = list(hparams)
    saved_buffers = {k: b.clone() for k, b in model.named_buffers()}
    try:
        with higher.innerloop_ctx(model, optimizer, copy_initial_weights=True, track_higher_grads=True) as (
            fmodel,
            diffopt,
        ):
            for k in range(steps):
                diffopt.step(train_loss(fmodel, k))
            grads = torch.autograd.grad(val_loss(fmodel), hparams, allow_unused=True)
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(saved_buffers[k])
    return [torch.zeros_like(h) if g is None else g.detach() for g, h in zip(grads, hparams, strict=True)]
