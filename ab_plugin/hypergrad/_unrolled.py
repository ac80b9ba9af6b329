"""Hypergradients through ``K`` differentiable optimiser steps, with ``higher``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

# `higher` rewrites these optimisers' updates differentiably; AdamW's decoupled decay is not among
# the ones it differentiates correctly with current torch.
_SUPPORTED = (torch.optim.SGD, torch.optim.Adam)


def check_unrollable(optimizer: torch.optim.Optimizer) -> None:
    if type(optimizer) is torch.optim.AdamW or not isinstance(optimizer, _SUPPORTED):
        raise ValueError(
            f"the unrolled engine cannot differentiate {type(optimizer).__name__}: "
            "use SGD (with or without momentum) or Adam, or an implicit engine (--engine head|cg|neumann)"
        )


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
