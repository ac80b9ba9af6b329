"""Implicit-function-theorem hypergradients on plain tensors.

``d L_val(θ*(α)) / dα = ∂_α L_val − (∂²_{αθ} ℓ_train) H⁻¹ ∇_θ L_val`` with ``H = ∇²_θ ℓ_train``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..distributed import all_reduce_sum_
from ._solvers import Solver, Vec, create_solver, dot

LossFn = Callable[[], torch.Tensor]


def _pieces(fn: LossFn | Sequence[LossFn]) -> list[LossFn]:
    return [fn] if callable(fn) else list(fn)


def _zeros_for_none(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> Vec:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like, strict=True)]


class _TrainGradients:
    """``∇_θ ℓ_train`` of each piece, either recomputed per use (lean) or kept with its graph (fast)."""

    def __init__(self, pieces: list[LossFn], params: Sequence[torch.Tensor], cache: bool, across_ranks: bool) -> None:
        self.pieces, self.params, self.cache, self.across_ranks = pieces, list(params), cache, across_ranks
        self._graphs: list[Vec] | None = None

    def __iter__(self):
        if self.cache:
            if self._graphs is None:
                self._graphs = [self._grad(p) for p in self.pieces]
            yield from self._graphs
        else:
            for p in self.pieces:
                yield self._grad(p)

    def _grad(self, piece: LossFn) -> Vec:
        g = torch.autograd.grad(piece(), self.params, create_graph=True, allow_unused=True)
        return _zeros_for_none(g, self.params)

    def hvp(self, u: Vec) -> Vec:
        total = [torch.zeros_like(t) for t in u]
        n = len(self.pieces)
        for g in self:
            if not any(t.requires_grad for t in g):
                continue  # a piece linear in θ has no curvature
            hv = torch.autograd.grad(dot(g, u), self.params, retain_graph=self.cache, allow_unused=True)
            total = [t + h.detach() / n for t, h in zip(total, _zeros_for_none(hv, u), strict=True)]
        if self.across_ranks:  # the solver's next iterate is nonlinear in this product: reduce it first
            all_reduce_sum_(total)
        return total

    def mixed(self, x: Vec, hparams: Sequence[torch.Tensor]) -> Vec:
        """``(∂²_{αθ} ℓ_train) x`` summed over pieces: ``∂_α (∇_θ ℓ · x)``."""
        total = [torch.zeros_like(h) for h in hparams]
        n = len(self.pieces)
        for i, g in enumerate(self):
            last = self.cache and i == len(self.pieces) - 1
            s = dot(g, x)
            if not s.requires_grad:
                continue
            ga = torch.autograd.grad(s, hparams, retain_graph=self.cache and not last, allow_unused=True)
            total = [t + a.detach() / n for t, a in zip(total, _zeros_for_none(ga, hparams), strict=True)]
        self._graphs = None
        if self.across_ranks:
            all_reduce_sum_(total)
        return total


def implicit_grad(
    train_loss: LossFn | Sequence[LossFn],
    val_loss: LossFn | Sequence[LossFn],
    params: Sequence[torch.Tensor],
    hparams: Sequence[torch.Tensor],
    solver: Solver | None = None,
    *,
    cache_graphs: bool = False,
    across_ranks: bool = False,
) -> list[torch.Tensor]:
    """Hypergradient ``dL_val(θ*(α))/dα`` by the implicit function theorem.

    Args:
        train_loss: zero-argument callable returning ``ℓ_train`` (a scalar built from ``params`` and
            ``hparams``), or a sequence of such callables whose mean is ``ℓ_train`` (one per batch:
            their graphs are built one at a time unless ``cache_graphs``).
        val_loss: the same for ``L_val``; it may depend on ``hparams`` directly (that term is added).
        params: inner variables ``θ`` (assumed at a minimum of ``ℓ_train``).
        hparams: outer variables ``α`` with ``requires_grad=True``.
        solver: ``solver(hvp, v) -> x`` approximately solving ``H x = v`` (see :func:`create_solver`);
            default: the paper's Neumann series with 5 terms and step 1.
        cache_graphs: keep each training piece's first-order graph for all Hessian products (fast,
            memory grows with the pieces) instead of rebuilding it per product.
        across_ranks: every piece is this rank's share of a loss over the union of all ranks' batches
            (:func:`~ab_plugin.distributed.union_share`): the validation gradient, every Hessian-vector
            product and the mixed product are summed across ranks before they are used, so each rank gets
            the union's hypergradient. Every rank must call with the same number of pieces.

    Returns:
        one gradient tensor per hparam, same shapes (identical on every rank with ``across_ranks``).
    """
    solver = solver or create_solver("neumann", terms=5, step=1.0)
    params, hparams = list(params), list(hparams)
    val_pieces = _pieces(val_loss)
    v = [torch.zeros_like(p) for p in params]
    direct = [torch.zeros_like(h) for h in hparams]
    for piece in val_pieces:
        g = torch.autograd.grad(piece(), params + hparams, allow_unused=True)
        g = _zeros_for_none(g, params + hparams)
        v = [a + b.detach() / len(val_pieces) for a, b in zip(v, g[: len(params)], strict=True)]
        direct = [a + b.detach() / len(val_pieces) for a, b in zip(direct, g[len(params) :], strict=True)]
    if across_ranks:
        all_reduce_sum_(v + direct)
    train = _TrainGradients(_pieces(train_loss), params, cache_graphs, across_ranks)
    x = solver(train.hvp, v)
    mixed = train.mixed(x, hparams)
    return [d - m for d, m in zip(direct, mixed, strict=True)]
