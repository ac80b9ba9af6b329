"""Hypergradients: a functional core on plain tensors and the engines the search uses."""

from ._backbone import backbone_policy_grad
from ._engines import (
    ENGINES,
    FeatureProblem,
    HypergradEngine,
    ModelProblem,
    UnrolledEngine,
    create_engine,
    list_engines,
    uses_features,
)
from ._implicit import implicit_grad
from ._solvers import Solver, conjugate_gradient, create_solver, neumann
from ._unrolled import unrolled_grad

__all__ = [
    "ENGINES",
    "FeatureProblem",
    "HypergradEngine",
    "ModelProblem",
    "Solver",
    "UnrolledEngine",
    "backbone_policy_grad",
    "conjugate_gradient",
    "create_engine",
    "create_solver",
    "implicit_grad",
    "list_engines",
    "neumann",
    "unrolled_grad",
    "uses_features",
]
