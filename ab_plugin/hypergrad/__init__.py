"""Hypergradients: a functional core on plain tensors and the engines the search uses."""

from ._backbone import backbone_policy_grad
from ._engines import (
    ENGINES,
    FeatureProblem,
    HeadEngine,
    HypergradEngine,
    ImplicitEngine,
    ModelProblem,
    UnrolledEngine,
    create_engine,
    frozen_norm_stats,
    list_engines,
)
from ._implicit import implicit_grad
from ._solvers import SOLVERS, Solver, conjugate_gradient, create_solver, neumann
from ._unrolled import check_unrollable, unrolled_grad

__all__ = [
    "ENGINES",
    "SOLVERS",
    "FeatureProblem",
    "HeadEngine",
    "HypergradEngine",
    "ImplicitEngine",
    "ModelProblem",
    "Solver",
    "UnrolledEngine",
    "backbone_policy_grad",
    "check_unrollable",
    "conjugate_gradient",
    "create_engine",
    "create_solver",
    "frozen_norm_stats",
    "implicit_grad",
    "list_engines",
    "neumann",
    "unrolled_grad",
]
