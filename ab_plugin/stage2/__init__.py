"""Stage 2: the classifier re-trained on features of a frozen backbone, computed once.

- :func:`fit_classifier` (samplers, MaxNorm), :func:`tau_normalize` / :func:`choose_tau`: the decoupled
  recipes' pieces (cRT, τ-norm, weight balancing);
- :func:`solve_classifier`, :func:`stage2_hypergradient`, :func:`search_alpha`: the exact stage-2 search of α;
- :data:`STAGE2` (``none``, ``crt``, ``tau-norm``, ``wb``, ``search``): the recipes by name;
- :func:`linear_probe`, :func:`apply_recipe`, :func:`exact_search`: the same driven from a ``Trainer``;
  :func:`save_stage2` / :func:`load_stage2`: a finished stage 2 in the run folder (:data:`STAGE2_FILE`).
"""

from ._classifier import SAMPLERS, fit_classifier, maxnorm_, relative_radius, sample_indices
from ._driver import (
    STAGE2_FILE,
    apply_recipe,
    exact_search,
    linear_probe,
    load_stage2,
    load_stage2_classifier,
    save_stage2,
)
from ._exact import SearchTrace, classifier_objective, search_alpha, solve_classifier, stage2_hypergradient
from ._features import Features, features_of
from ._recipes import STAGE2, Recipe, class_balanced_weights, get_recipe, list_stage2
from ._taunorm import TAU_GRID, choose_tau, tau_normalize

__all__ = [
    "STAGE2",
    "STAGE2_FILE",
    "SAMPLERS",
    "Features",
    "Recipe",
    "TAU_GRID",
    "SearchTrace",
    "apply_recipe",
    "choose_tau",
    "class_balanced_weights",
    "exact_search",
    "features_of",
    "get_recipe",
    "linear_probe",
    "list_stage2",
    "load_stage2",
    "load_stage2_classifier",
    "classifier_objective",
    "fit_classifier",
    "maxnorm_",
    "relative_radius",
    "sample_indices",
    "save_stage2",
    "search_alpha",
    "solve_classifier",
    "stage2_hypergradient",
    "tau_normalize",
]
