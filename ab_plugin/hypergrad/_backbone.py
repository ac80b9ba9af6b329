"""The backbone's response to the augmentation policy: the part of A's hypergradient the head engine misses.

The head engine solves ``H⁻¹ ∇_θ L_val`` for θ = the classifier only, so the policy A reaches the
validation loss only through how the classifier would refit to the features of augmented images; how the
backbone would learn from those images is left out, although that is where augmentation acts. This
term adds it with the backbone block of the inverse Hessian approximated by ``step · I`` (the lower
learning rate times the steps taken under A, as in DARTS and in the paper's one-step unroll):

``- step · (∂²_{Aθ} ℓ_train) ∇_θ L_val``, θ = the backbone's weights.

The mixed product is the directional derivative of ``∇_A ℓ_train`` along ``u = ∇_θ L_val``, taken by
central differences in weight space: two forward / backward passes from the loss to A, no double
backward through the network and no Hessian-vector product (one HVP through ResNet-32 costs about
8 training steps; this costs about 2, plus 1 for ``u``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["backbone_policy_grad"]


def backbone_policy_grad(
    train_loss: Callable[[], Tensor],
    val_loss: Callable[[], Tensor],
    params: Sequence[Tensor],
    policy_params: Sequence[Tensor],
    step: float,
    eps: float = 0.01,
) -> list[Tensor]:
    """``-step · (∂²_{Aθ} ℓ_train) ∇_θ L_val`` by central differences of ``∇_A ℓ_train`` along ``∇_θ L_val``.

    Args:
        train_loss: zero-argument callable, ``ℓ_train`` of augmented training images (scalar); it must
            replay the same augmentation draws on every call and depend on ``params`` and ``policy_params``.
        val_loss: zero-argument callable, ``L_val`` (scalar) as a function of ``params``.
        params: backbone weights θ (changed in place during the call, restored bit for bit).
        policy_params: the policy's raw parameters A (``requires_grad=True``).
        step: the backbone's inverse-curvature stand-in, e.g. learning rate x lower steps per hyper-step.
        eps: finite-difference radius in weight space, relative: θ ± (eps / ‖u‖) u.

    Returns:
        one tensor per ``policy_params`` entry (same shapes); zeros when ``∇_θ L_val`` vanishes.
    """
    params, policy_params = list(params), list(policy_params)
    u = [torch.zeros_like(p) if g is None else g.detach()
         for p, g in zip(params, torch.autograd.grad(val_loss(), params, allow_unused=True), strict=True)]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in u))
    if not bool(norm > 0):
        return [torch.zeros_like(a) for a in policy_params]
    r = float(eps / norm)
    saved = [p.detach().clone() for p in params]

    def grad_at(sign: float) -> list[Tensor]:
        with torch.no_grad():
            for p, s, d in zip(params, saved, u, strict=True):
                p.copy_(s).add_(d, alpha=sign * r)
        g = torch.autograd.grad(train_loss(), policy_params, allow_unused=True)
        return [torch.zeros_like(a) if x is None else x.detach() for a, x in zip(policy_params, g, strict=True)]

    try:
        plus, minus = grad_at(1.0), grad_at(-1.0)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    return [-step * (a - b) / (2.0 * r) for a, b in zip(plus, minus, strict=True)]
