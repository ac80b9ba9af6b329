"""Linear solvers for ``H x = v`` on lists of tensors, given only the product ``u -> H u``.

A solver is any callable ``solver(hvp, v) -> x`` (torchopt's shape); :func:`create_solver` binds the
options of a named one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from .._registry import Registry

Vec = list[torch.Tensor]
HVP = Callable[[Vec], Vec]
Solver = Callable[[HVP, Vec], Vec]


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def axpy(alpha: float | torch.Tensor, x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> Vec:
    """``alpha * x + y``."""
    return [alpha * a + b for a, b in zip(x, y, strict=True)]


def neumann(hvp: HVP, v: Vec, terms: int = 5, step: float = 1.0) -> Vec:
    """``H⁻¹ v ≈ η Σ_{k=0..K} (I − η H)^k v`` (converges when ``η ‖H‖ < 2`` and ``H ≻ 0``)."""
    p = [t.clone() for t in v]
    acc = [t.clone() for t in v]
    for _ in range(terms):
        hp = hvp(p)
        p = axpy(-step, hp, p)
        acc = [a + b for a, b in zip(acc, p, strict=True)]
    return [step * a for a in acc]


def conjugate_gradient(hvp: HVP, v: Vec, iters: int = 20, tol: float = 1e-10, damping: float = 0.0) -> Vec:
    """Solve ``(H + λ I) x = v`` by conjugate gradients from ``x = 0``; stops at relative residual ``tol``."""
    x = [torch.zeros_like(t) for t in v]
    r = [t.clone() for t in v]
    p = [t.clone() for t in v]
    rs = dot(r, r)
    stop = tol * tol * rs
    for _ in range(iters):
        if rs <= stop:
            break
        hp = hvp(p)
        if damping:
            hp = axpy(damping, p, hp)
        curv = dot(p, hp)
        if curv <= 0:  # non-convex direction: keep what we have rather than diverge
            break
        a = rs / curv
        x = axpy(a, p, x)
        r = axpy(-a, hp, r)
        rs_new = dot(r, r)
        p = axpy(rs_new / rs, p, r)
        rs = rs_new
    return x


SOLVERS: Registry[Vec] = Registry("linear solver")
SOLVERS.register("neumann", neumann)
SOLVERS.register("cg", conjugate_gradient)


def create_solver(name: str, **options) -> Solver:
    """``neumann`` (``terms``, ``step``) or ``cg`` (``iters``, ``tol``, ``damping``) with its options bound."""
    return functools.partial(SOLVERS.get(name), **options)
