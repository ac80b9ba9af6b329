"""The exact stage-2 search of α: the classifier problem on fixed features solved to high precision at every
hyper-step, its implicit hypergradient taken by the head engine, α stepped by the :class:`UpperLevel`.

With the backbone frozen, ``θ*(α) = argmin_θ  ℓ_α(θ; F_train) + ½ wd ||θ||²`` is strictly convex (the weight
decay covers the bias too), so the implicit-function theorem the head engine applies holds exactly at a solved
θ*: no truncation, no stale features.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..hypergrad import FeatureProblem
from ..hypergrad._engines import HeadEngine
from ..hypergrad._solvers import conjugate_gradient, create_solver
from ..losses import ParametricCrossEntropy
from ..upper import UpperLevel

Objective = Callable[..., Tensor]


def classifier_objective(classifier: nn.Linear, loss: nn.Module, features: Tensor, labels: Tensor,
                         weight_decay: float) -> Tensor:
    """``loss(classifier(features), labels) + ½ weight_decay ||θ||²`` (θ: weight and bias), the inner problem
    the head engine differentiates."""
    reg = sum((p * p).sum() for p in classifier.parameters())
    return loss(classifier(features), labels) + 0.5 * weight_decay * reg


def solve_classifier(classifier: nn.Linear, loss: nn.Module, features: Tensor, labels: Tensor, *,
                     weight_decay: float, tol: float = 1e-8, max_iter: int = 100) -> float:
    """Minimise :func:`classifier_objective` over ``classifier`` in place, from where it is (a warm start) or
    from θ = 0 when that is lower (:func:`_sane_start`).

    At most ``max_iter`` iterations of full-batch L-BFGS (strong-Wolfe line search) bring θ near the optimum;
    at most 50 damped Newton steps then finish (``H d = −g`` by conjugate gradients on Hessian-vector products
    to a relative residual of min(1e-3, ||g||), at most as many products as θ has entries, with a backtracking
    line search) until the gradient's L2 norm is below ``tol``. Near the optimum the objective's decrease falls
    under its rounding: a step is then taken when it shrinks the gradient, which is where Newton still converges
    and a line search on values stalls. Returns the gradient norm reached (1e-12 is reachable in float64 on
    features of unit scale, about 1e-5 in float32; features of scale s put the floor near 1e-16·s, 4e-9 for a
    perturbed resnet20's of 1e5)."""
    params = list(classifier.parameters())

    def value() -> Tensor:
        return classifier_objective(classifier, loss, features, labels, weight_decay)

    def gradient(create_graph: bool = False) -> list[Tensor]:
        with torch.enable_grad():
            return list(torch.autograd.grad(value(), params, create_graph=create_graph))

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        v = value()
        v.backward(inputs=params)
        return v

    _sane_start(params, value)
    with torch.enable_grad():
        opt.step(closure)
    size = sum(p.numel() for p in params)
    norm = _norm(gradient())
    for _ in range(_NEWTON_STEPS):
        if norm <= tol:
            break
        with torch.enable_grad():
            g = gradient(create_graph=True)
            # forcing term min(1e-3, ||g||): inexact far away, quadratic convergence near the optimum; up to
            # as many products as θ has entries (CG's exact-arithmetic bound), since badly scaled features
            # condition H up to ~1e9 and a capped CG then returns steps too poor for any line search
            step = conjugate_gradient(_hvp(g, params), [-t.detach() for t in g], iters=size,
                                      tol=min(1e-3, norm))
        slope = float(sum((a.detach() * d).sum() for a, d in zip(g, step, strict=True)))
        taken = _line_search(params, step, value, gradient, slope, norm)
        if taken is None:  # no step shrinks the value or the gradient: as precise as the dtype allows
            break
        norm = taken
    return norm


_NEWTON_STEPS = 50


@torch.no_grad()
def _sane_start(params: list[Tensor], value: Callable[[], Tensor]) -> None:
    """Keep the warm start ``params`` unless θ = 0 (a uniform softmax) has a lower ``value()``; then zero them.

    A classifier whose logits are far too large (a fresh one on a backbone's features of scale 1e5) saturates
    the softmax: there the Hessian is about wd·I, Newton's step about −g/wd, and neither L-BFGS nor Newton's
    line search recovers (the gradient norm stayed at 2e5)."""
    here = float(value())
    start = [p.clone() for p in params]
    for p in params:
        p.zero_()
    if here <= float(value()):
        for p, p0 in zip(params, start, strict=True):
            p.copy_(p0)


@torch.no_grad()
def _line_search(params: list[Tensor], step: list[Tensor], value: Callable[[], Tensor],
                 gradient: Callable[[], list[Tensor]], slope: float, norm: float) -> float | None:
    """Move ``params`` along ``step`` by the largest of 1, ½, ¼, ... that satisfies Armijo's condition or, at
    the rounding floor of the value, shrinks the gradient; returns the new gradient norm, or ``None`` (and
    ``params`` unchanged) when no fraction does."""
    start = [p.clone() for p in params]
    f0 = float(value())
    t = 1.0
    for _ in range(30):
        for p, p0, d in zip(params, start, step, strict=True):
            p.copy_(p0 + t * d)
        f = float(value())
        if f <= f0 + 1e-4 * t * slope:
            return _norm(gradient())
        if f <= f0 + 1e-13 * abs(f0):  # a change at the value's rounding: judge by the gradient
            new = _norm(gradient())
            if new < norm:
                return new
        t /= 2
    for p, p0 in zip(params, start, strict=True):
        p.copy_(p0)
    return None


def _hvp(grads: list[Tensor], params: list[Tensor]) -> Callable[[list[Tensor]], list[Tensor]]:
    """``u -> H u`` from gradients built with ``create_graph``."""
    return lambda u: [h.detach() for h in torch.autograd.grad(grads, params, u, retain_graph=True)]


def _norm(grads: list[Tensor]) -> float:
    return float(torch.sqrt(sum((g * g).sum() for g in grads)))


def exact_engine(classifier: nn.Linear) -> HeadEngine:
    """The head engine with a conjugate-gradient solve of ``H x = v`` to 1e-10 relative residual, in at most ten
    times as many iterations as θ has entries: CG's exact-arithmetic bound is that number, but in rounding on
    badly scaled features (``H`` conditioned at 4e8 by a perturbed resnet20's) it took 10x to converge, while a
    cap of 300 left 3% of the hypergradient wrong. A well-conditioned ``H`` stops at the residual long before."""
    size = sum(p.numel() for p in classifier.parameters())
    return HeadEngine(create_solver("cg", iters=10 * size, tol=1e-10))


def stage2_hypergradient(classifier: nn.Linear, loss: ParametricCrossEntropy, objective: Objective,
                         train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], *, weight_decay: float,
                         engine: HeadEngine | None = None) -> list[Tensor]:
    """``d objective(θ*(α) on val) / dα`` at a solved ``classifier`` (θ*), one tensor per
    ``loss.hparameters()``; ``train`` / ``val``: ``(features [N, D], labels [N])``."""
    problem = FeatureProblem(classifier, loss, objective, loss.hparameters(), [train], [val], weight_decay)
    return (engine or exact_engine(classifier))(problem)


@dataclass
class SearchTrace:
    """What the exact search did: hyper-steps taken, their wall time (s), the largest gradient norm of a solved
    classifier problem and the validation objective before each step."""

    hyper_steps: int = 0
    skipped: int = 0  # non-finite hypergradients the upper level skipped
    seconds: float = 0.0
    max_solve_grad_norm: float = 0.0
    objective: list[float] = field(default_factory=list)


def search_alpha(classifier: nn.Linear, loss: ParametricCrossEntropy, objective: Objective,
                 train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], upper: UpperLevel, *,
                 steps: int, weight_decay: float, tol: float = 1e-7) -> SearchTrace:
    """``steps`` hyper-steps on α (``loss.hparameters()``, stepped by ``upper``): solve the classifier to a
    gradient norm of ``tol`` (warm started from the previous solution), take the implicit hypergradient, step
    α. Ends with ``upper``'s averaged α (when it averages) and the classifier solved for it to ``tol / 1000``."""
    trace = SearchTrace()
    engine = exact_engine(classifier)
    t0 = time.perf_counter()
    for _ in range(steps):
        norm = solve_classifier(classifier, loss, *train, weight_decay=weight_decay, tol=tol)
        trace.max_solve_grad_norm = max(trace.max_solve_grad_norm, norm)
        with torch.no_grad():
            trace.objective.append(float(objective(classifier(val[0]), val[1], None)))
        grads = stage2_hypergradient(classifier, loss, objective, train, val, weight_decay=weight_decay,
                                     engine=engine)
        upper.step(grads)
        trace.hyper_steps += 1
    trace.skipped = upper.skipped
    upper.use_average()
    trace.max_solve_grad_norm = max(trace.max_solve_grad_norm, solve_classifier(
        classifier, loss, *train, weight_decay=weight_decay, tol=tol / 1000))
    trace.seconds = time.perf_counter() - t0
    return trace
