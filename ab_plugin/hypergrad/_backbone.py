"""The backbone's response to the augmentation policy: the part of A's hypergradient the head engine misses.

The head engine solves ``H⁻¹ ∇_θ L_val`` for θ = the classifier only, so the policy A reaches the
validation loss only through how the classifier would refit to the features of augmented images; how the
backbone would learn from those images is left out, although that is where augmentation acts. This
term adds it with the backbone block of the inverse Hessian approximated by ``step · I`` (the lower
learning rate times the steps taken under A, as in DARTS and in the paper's one-step unroll):

``- step · (∂²_{Aθ} ℓ_train) ∇_θ L_val``, θ = the backbone's weights.

The mixed product is taken exactly, by double backward: ``∇_A (∇_θ ℓ_train · u)`` with ``u = ∇_θ L_val``
held fixed. A central difference of ``∇_A ℓ_train`` in weight space is cheaper (no double backward) but
wrong on ReLU networks: a weight perturbation of any size flips some ReLUs, and the jumps of ``∇_A ℓ`` at
the kinks do not vanish as the radius shrinks (on ResNet-20 it was 15-280x too large, at cosine -0.3 with
the exact product, for radii 1e-2 to 1e-5; ``benchmarks/policy_hypergrad.py``).
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
) -> list[Tensor]:
    """``-step · (∂²_{Aθ} ℓ_train) ∇_θ L_val``, the mixed product by double backward.

    Args:
        train_loss: zero-argument callable, ``ℓ_train`` of augmented training images (scalar), depending on
            ``params`` and ``policy_params``.
        val_loss: zero-argument callable, ``L_val`` (scalar) as a function of ``params``.
        params: backbone weights θ (left unchanged).
        policy_params: the policy's raw parameters A (``requires_grad=True``).
        step: the backbone's inverse-curvature stand-in, e.g. learning rate x lower steps per hyper-step.

    Returns:
        one tensor per ``policy_params`` entry (same shapes); zeros where A does not reach ``ℓ_train``.
    """
    params, policy_params = list(params), list(policy_params)
    u = torch.autograd.grad(val_loss(), params, allow_unused=True)
    g = torch.autograd.grad(train_loss(), params, create_graph=True, allow_unused=True)
    dot = sum(((a * b.detach()).sum() for a, b in zip(g, u, strict=True) if a is not None and b is not None),
              torch.zeros(()))
    if not dot.requires_grad:
        return [torch.zeros_like(a) for a in policy_params]
    mixed = torch.autograd.grad(dot, policy_params, allow_unused=True)
    return [torch.zeros_like(a) if m is None else -step * m.detach() for a, m in zip(policy_params, mixed, strict=True)]
