"""Stage 2: the classifier re-trained on features of a frozen backbone, computed once.

- :func:`fit_classifier` (samplers, MaxNorm), :func:`tau_normalize` / :func:`choose_tau`: the decoupled
  recipes' pieces (cRT, τ-norm, weight balancing);
- :func:`solve_classifier`, :func:`stage2_hypergradient`, :func:`search_alpha`: the exact stage-2 search of α.
"""

from ._classifier import SAMPLERS, fit_classifier, maxnorm_, relative_radius, sample_indices
from ._exact import SearchTrace, classifier_objective, search_alpha, solve_classifier, stage2_hypergradient
from ._taunorm import TAU_GRID, choose_tau, tau_normalize

__all__ = [
    "SAMPLERS",
    "TAU_GRID",
    "SearchTrace",
    "choose_tau",
    "classifier_objective",
    "fit_classifier",
    "maxnorm_",
    "relative_radius",
    "sample_indices",
    "search_alpha",
    "solve_classifier",
    "stage2_hypergradient",
    "tau_normalize",
]
