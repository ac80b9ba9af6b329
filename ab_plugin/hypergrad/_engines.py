"""Hypergradient engines used by the bilevel search.

An engine maps a problem to one gradient per hyperparameter. There are two kinds of problem, and an
engine reads every field of the kind it declares (``engine.problem``):

- :class:`FeatureProblem` (``head``): θ is the classifier, on features the training loop already
  computed; no backward pass through the backbone.
- :class:`ModelProblem` (``neumann``, ``cg``, ``unrolled``): θ is every trainable weight; the engine
  runs the model on input batches.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .._registry import Registry
from ..distributed import is_distributed, union_share, world_size
from ..losses._functional import to_soft_targets
from ._implicit import implicit_grad
from ._solvers import Solver, create_solver
from ._unrolled import unrolled_grad

Batch = tuple[torch.Tensor, ...]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Objective = Callable[..., torch.Tensor]


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in a lower precision (mixed-precision outputs); float32 / float64 as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@dataclass
class FeatureProblem:
    """One hyper-step with θ = the classifier's weights.

    ``train``: ``(features [B, D], targets [B] or [B, C])`` pairs, detached except where a batch carries
    the graph from learned augmentation parameters to its features; ``val``: ``(features [B, D], y [B])``
    or ``(features, y, groups)``. ``weight_decay``: the L2 coefficient the lower optimizer applies to
    every classifier parameter, bias included.
    """

    classifier: nn.Module
    loss: LossFn
    objective: Objective
    hparams: list[torch.Tensor]
    train: list[Batch]
    val: list[Batch]
    weight_decay: float


@dataclass
class ModelProblem:
    """One hyper-step with θ = all trainable weights of ``model``.

    ``train``: ``(x, y)`` input batches; ``val``: ``(x, y)`` or ``(x, y, groups)``.
    ``train_forward(x, y, model=None)`` augments, preprocesses and runs the model (or the given functional
    copy of it); ``val_forward(x, model=None)`` runs it without augmentation. ``optimizer`` is the lower
    optimizer (read by the unrolled engine, never stepped).
    """

    model: nn.Module
    loss: LossFn
    objective: Objective
    hparams: list[torch.Tensor]
    train: list[Batch]
    val: list[Batch]
    train_forward: Callable[..., torch.Tensor]
    val_forward: Callable[..., torch.Tensor]
    weight_decay: float
    optimizer: torch.optim.Optimizer | None = None


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """Forward passes inside do not move BatchNorm running statistics (momentum 0)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved, strict=True):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


def _l2(params: list[torch.Tensor]) -> torch.Tensor:
    return sum((p * p).sum() for p in params)


def _weight_decay_share(wd: float, params: list[torch.Tensor]) -> torch.Tensor:
    """This rank's equal part of ``½ wd ‖θ‖²`` (θ is the same on every rank and the ranks' gradients are summed)."""
    return 0.5 * wd * _l2(params) / world_size()


def _cat_val(batches: list[Batch], outputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Concatenated ``(outputs, y, groups | None)`` of validation batches."""
    y = torch.cat([b[1] for b in batches])
    g = torch.cat([b[2] for b in batches]) if len(batches[0]) > 2 else None
    return torch.cat(outputs), y, g


class HypergradEngine:
    """Base: ``engine(problem) -> list of gradients`` (one per ``problem.hparams``)."""

    name = "base"
    problem: type = ModelProblem

    def __call__(self, problem) -> list[torch.Tensor]:
        raise NotImplementedError


class HeadEngine(HypergradEngine):
    """Implicit hypergradient with θ = the classifier's weights, solved on cached features.

    α touches only the logits, so the classifier alone carries the first-order coupling between α and
    the validation loss; restricting θ to it gives a small, strictly convex inner problem (its weight
    decay covers the bias too, as the lower SGD's does) that needs no backward pass through the backbone,
    except through a training batch whose features carry a graph to learned augmentation parameters.
    """

    name = "head"
    problem = FeatureProblem

    def __init__(self, solver: Solver | None = None) -> None:
        # the weight decay already makes the Hessian positive definite, so no damping is needed
        self.solver = solver or create_solver("cg", iters=30, tol=1e-6)

    def __call__(self, problem: FeatureProblem) -> list[torch.Tensor]:
        if not problem.train or not problem.val:
            raise ValueError("the head engine needs training and validation features")
        clf = problem.classifier
        params = [p for p in clf.parameters() if p.requires_grad]
        wd = problem.weight_decay
        feats = full_precision(torch.cat([b[0] for b in problem.train]))
        targets = [b[1] for b in problem.train]
        if any(t.ndim == 2 for t in targets):  # mixup batches beside hard-label ones: all soft
            n = next(t.shape[1] for t in targets if t.ndim == 2)
            targets = [to_soft_targets(t, n) for t in targets]
        labels = torch.cat(targets)
        vf, vy, vg = _cat_val(problem.val, [full_precision(b[0]) for b in problem.val])
        # on several ranks each holds a shard of the features: the losses are those of the union
        loss, objective, ranks = union_share(problem.loss), union_share(problem.objective), is_distributed()
        return implicit_grad(
            lambda: loss(clf(feats), labels) + _weight_decay_share(wd, params),
            lambda: objective(clf(vf), vy, vg),
            params, problem.hparams, self.solver, cache_graphs=True, across_ranks=ranks,
        )


class ImplicitEngine(HypergradEngine):
    """The paper's engine: θ = all trainable weights, ``H⁻¹ v`` by the given solver (Neumann or CG).

    Training pieces are rebuilt one batch at a time per Hessian product, so only one batch graph is
    alive at once.
    """

    problem = ModelProblem

    def __init__(self, solver: Solver, name: str = "implicit", cache_graphs: bool = False) -> None:
        self.solver, self.name, self.cache_graphs = solver, name, cache_graphs

    def __call__(self, problem: ModelProblem) -> list[torch.Tensor]:
        model = problem.model
        params = [p for p in model.parameters() if p.requires_grad]
        wd = problem.weight_decay
        # on several ranks batch k is the union of the ranks' k-th batches
        loss, objective, ranks = union_share(problem.loss), union_share(problem.objective), is_distributed()

        def train_piece(batch: Batch) -> Callable[[], torch.Tensor]:
            x, y = batch[:2]
            return lambda: loss(problem.train_forward(x, y), y) + _weight_decay_share(wd, params)

        def val_piece(batch: Batch) -> Callable[[], torch.Tensor]:
            x, y, *g = batch
            return lambda: objective(problem.val_forward(x), y, g[0] if g else None)

        val = [_in_mode(model, False, val_piece(b)) for b in problem.val]
        train = [_in_mode(model, True, train_piece(b)) for b in problem.train]
        with frozen_norm_stats(model):
            return implicit_grad(train, val, params, problem.hparams, self.solver, cache_graphs=self.cache_graphs,
                                 across_ranks=ranks)


def _in_mode(model: nn.Module, training: bool, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        prev = model.training
        model.train(training)
        try:
            return fn()
        finally:
            model.train(prev)

    return run


class UnrolledEngine(HypergradEngine):
    """Differentiate the validation objective through ``steps`` optimiser updates (``higher``)."""

    name = "unrolled"
    problem = ModelProblem

    def __init__(self, steps: int = 1) -> None:
        self.steps = steps

    def __call__(self, problem: ModelProblem) -> list[torch.Tensor]:
        if problem.optimizer is None:
            raise ValueError("the unrolled engine needs the lower-level optimizer")
        batches = problem.train

        def train_loss(fmodel: nn.Module, k: int) -> torch.Tensor:
            x, y = batches[k % len(batches)][:2]
            return problem.loss(problem.train_forward(x, y, fmodel), y)

        def val_loss(fmodel: nn.Module) -> torch.Tensor:
            outs, y, g = _cat_val(problem.val, [problem.val_forward(b[0], fmodel) for b in problem.val])
            return problem.objective(outs, y, g)

        with frozen_norm_stats(problem.model):
            return unrolled_grad(problem.model, problem.optimizer, train_loss, val_loss, problem.hparams, self.steps)


ENGINES: Registry[HypergradEngine] = Registry("hypergradient engine")


@ENGINES.register("head")
def _head(iters: int = 30, tol: float = 1e-6, damping: float = 0.0) -> HypergradEngine:
    return HeadEngine(create_solver("cg", iters=iters, tol=tol, damping=damping))


@ENGINES.register("neumann")
def _neumann(terms: int = 5, step: float = 1.0, cache_graphs: bool = False) -> HypergradEngine:
    return ImplicitEngine(create_solver("neumann", terms=terms, step=step), "neumann", cache_graphs)


@ENGINES.register("cg")
def _cg(iters: int = 10, tol: float = 1e-10, damping: float = 1e-3, cache_graphs: bool = False) -> HypergradEngine:
    return ImplicitEngine(create_solver("cg", iters=iters, tol=tol, damping=damping), "cg", cache_graphs)


ENGINES.register("unrolled", UnrolledEngine)


def create_engine(name: str, **options) -> HypergradEngine:
    """An engine by name with its options (``head``: iters, tol, damping; ``neumann``: terms, step;
    ``cg``: iters, tol, damping; ``unrolled``: steps)."""
    factory = ENGINES.get(name)
    try:  # only a mismatch with the factory's signature is the caller's mistake; its own errors propagate
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise ValueError(f"bad options {options} for engine {name!r}: {e}") from None
    return factory(**options)


def list_engines() -> list[str]:
    return ENGINES.names()


def uses_features(engine: object) -> bool:
    """Whether ``engine`` solves a :class:`FeatureProblem` (the classifier on features the loop captured, with the
    batch's own targets) rather than re-running the model on input batches with fresh random draws. Only such an
    engine sees the mix a mixup / CutMix batch was trained on."""
    return getattr(engine, "problem", ModelProblem) is FeatureProblem

