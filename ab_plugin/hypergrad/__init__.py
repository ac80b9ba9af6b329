"""Hypergradients: a functional core on plain tensors and the engines the search uses."""

from ._engines import (
    ENGINES,
    HeadEngine,
    HypergradEngine,
    HyperProblem,
    ImplicitEngine,
    UnrolledEngine,
    create_engine,
    frozen_norm_stats,
    list_engines,
)
from ._implicit import implicit_grad
from ._solvers import conjugate_gradient, neumann
from ._unrolled import check_unrollable, unrolled_grad

__all__ = [
    "ENGINES",
    "HeadEngine",
    "HyperProblem",
    "HypergradEngine",
    "ImplicitEngine",
    "UnrolledEngine",
    "check_unrollable",
    "conjugate_gradient",
    "create_engine",
    "frozen_norm_stats",
    "implicit_grad",
    "list_engines",
    "neumann",
    "unrolled_grad",
]
