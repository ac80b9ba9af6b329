"""Hypergradient engines used by the bilevel search, behind one call signature.

An engine maps a :class:`HyperProblem` (the current model, loss, data and hyperparameters) to one
gradient per hyperparameter. ``head`` restricts θ to the classifier (features come from forward
passes the training already does), ``neumann`` / ``cg`` are the paper's implicit engines over all
weights, ``unrolled`` differentiates through a few optimiser steps with ``higher``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..losses import to_soft_targets
from ._implicit import implicit_grad
from ._unrolled import unrolled_grad

Batch = tuple[torch.Tensor, ...]


@dataclass
class HyperProblem:
    """Everything an engine may need for one hyper-step.

    ``train_batches`` / ``val_batches``: lists of ``(x uint8 [B,3,H,W], y [B], (groups [B]))`` on the
    device. ``train_forward(x, y, model=None)`` augments, normalises and runs the model (or the given
    functional copy of it); ``val_forward(x, model=None)`` runs it without augmentation.
    ``features`` / ``classifier`` split the model (``classifier(features(x)) == model(x)``);
    ``train_features`` / ``val_features`` are detached ``(features [B, D], y[, groups])`` already
    computed by the training loop (head engine).
    """

    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    hparams: list[torch.Tensor]
    objective: Callable[..., torch.Tensor]
    train_batches: list[Batch]
    val_batches: list[Batch]
    train_forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    val_forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None
    weight_decay: float = 0.0
    classifier: nn.Module | None = None
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    augment_features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    train_features: list[Batch] = field(default_factory=list)
    val_features: list[Batch] = field(default_factory=list)
    augment_learned: bool = False


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


def _val_piece(problem: HyperProblem, batch: Batch) -> Callable[[], torch.Tensor]:
    x, y, *g = batch
    return lambda: problem.objective(problem.val_forward(x), y, g[0] if g else None)


class HypergradEngine:
    """Base: ``engine(problem) -> list of gradients`` (one per ``problem.hparams``)."""

    name = "base"
    needs_features = False

    def __call__(self, problem: HyperProblem) -> list[torch.Tensor]:
        raise NotImplementedError


class HeadEngine(HypergradEngine):
    """Implicit hypergradient with θ = the classifier's weights, solved by CG on cached features.

    α touches only the logits, so the classifier alone carries the first-order coupling between α
    and the validation loss; restricting θ to it gives a small, convex inner problem that needs no
    backward pass through the backbone (except through the augmentation when it is learned).
    """

    name = "head"
    needs_features = True

    def __init__(self, iters: int = 30, damping: float = 1e-3, tol: float = 1e-6) -> None:
        self.iters, self.damping, self.tol = iters, damping, tol

    def __call__(self, problem: HyperProblem) -> list[torch.Tensor]:
        if problem.classifier is None or not problem.train_features or not problem.val_features:
            raise ValueError("the head engine needs the classifier and cached train/validation features")
        clf = problem.classifier
        params = [p for p in clf.parameters() if p.requires_grad]
        weights = [p for p in params if p.ndim > 1]
        wd = problem.weight_decay
        feats = torch.cat([b[0] for b in problem.train_features]).float()
        targets = [b[1] for b in problem.train_features]
        if any(t.ndim == 2 for t in targets):  # mixup batches beside hard-label ones: all soft
            n = next(t.shape[1] for t in targets if t.ndim == 2)
            targets = [to_soft_targets(t, n) for t in targets]
        labels = torch.cat(targets)
        pieces = [lambda: problem.loss(clf(feats), labels) + 0.5 * wd * _l2(weights)]
        if problem.augment_learned and problem.augment_features is not None and problem.train_batches:
            # one live batch carries the graph from the policy parameters to the features
            x, y = problem.train_batches[-1][:2]
            live = problem.augment_features(x, y)
            pieces.append(lambda: problem.loss(clf(live), y) + 0.5 * wd * _l2(weights))
        vf = torch.cat([b[0] for b in problem.val_features]).float()
        vy = torch.cat([b[1] for b in problem.val_features])
        vg = torch.cat([b[2] for b in problem.val_features]) if len(problem.val_features[0]) > 2 else None
        val = lambda: problem.objective(clf(vf), vy, vg)  # noqa: E731
        return implicit_grad(
            pieces, val, params, problem.hparams, "cg",
            iters=self.iters, damping=self.damping, tol=self.tol, cache_graphs=True,
        )


class ImplicitEngine(HypergradEngine):
    """The paper's engine: θ = all trainable weights, ``H⁻¹ v`` by Neumann series or CG.

    Training pieces are rebuilt one batch at a time per Hessian product, so only one batch graph
    is alive at once (the original code held ten).
    """

    def __init__(self, method: str = "neumann", terms: int = 5, step: float = 1.0, iters: int = 10,
                 damping: float = 1e-3, cache_graphs: bool = False) -> None:
        self.method, self.name = method, method
        self.terms, self.step, self.iters, self.damping = terms, step, iters, damping
        self.cache_graphs = cache_graphs

    def __call__(self, problem: HyperProblem) -> list[torch.Tensor]:
        model = problem.model
        params = [p for p in model.parameters() if p.requires_grad]
        wd = problem.weight_decay

        def train_piece(batch: Batch) -> Callable[[], torch.Tensor]:
            x, y = batch[:2]
            return lambda: problem.loss(problem.train_forward(x, y), y) + 0.5 * wd * _l2(params)

        val = [_in_mode(model, False, _val_piece(problem, b)) for b in problem.val_batches]
        train = [_in_mode(model, True, train_piece(b)) for b in problem.train_batches]
        with frozen_norm_stats(model):
            return implicit_grad(
                train, val, params, problem.hparams, self.method,
                terms=self.terms, step=self.step, iters=self.iters, damping=self.damping,
                cache_graphs=self.cache_graphs,
            )


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

    def __init__(self, steps: int = 1) -> None:
        self.steps = steps

    def __call__(self, problem: HyperProblem) -> list[torch.Tensor]:
        if problem.optimizer is None:
            raise ValueError("the unrolled engine needs the lower-level optimizer")
        batches = problem.train_batches

        def train_loss(fmodel: nn.Module, k: int) -> torch.Tensor:
            x, y = batches[k % len(batches)][:2]
            return problem.loss(problem.train_forward(x, y, fmodel), y)

        def val_loss(fmodel: nn.Module) -> torch.Tensor:
            outs = [problem.val_forward(b[0], fmodel) for b in problem.val_batches]
            y = torch.cat([b[1] for b in problem.val_batches])
            g = torch.cat([b[2] for b in problem.val_batches]) if len(problem.val_batches[0]) > 2 else None
            return problem.objective(torch.cat(outs), y, g)

        with frozen_norm_stats(problem.model):
            return unrolled_grad(problem.model, problem.optimizer, train_loss, val_loss, problem.hparams, self.steps)


ENGINES: dict[str, Callable[..., HypergradEngine]] = {
    "head": HeadEngine,
    "neumann": lambda **kw: ImplicitEngine("neumann", **kw),
    "cg": lambda **kw: ImplicitEngine("cg", **kw),
    "unrolled": UnrolledEngine,
}


def create_engine(name: str, **options) -> HypergradEngine:
    if name not in ENGINES:
        raise ValueError(f"unknown hypergradient engine {name!r}: choose from {list(ENGINES)}")
    return ENGINES[name](**options)


def list_engines() -> list[str]:
    return list(ENGINES)
