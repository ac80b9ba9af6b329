"""The parametric loss family ``w_y · CE(Δ ⊙ z + l, y)``, its sharing bases and its baselines."""

from ._functional import (
    adjusted_logits,
    cdt_scale,
    drw_weights,
    la_bias,
    ldam_margins,
    log_prior,
    parametric_cross_entropy,
    to_soft_targets,
)
from ._parametric import HPARAM_NAMES, LOSSES, NEEDS_NORMED_HEAD, ParametricCrossEntropy, create_loss
from ._sharing import Sharing, create_sharing, frequency_dictionary, frequency_groups, per_class, sharing_names


def list_losses() -> list[str]:
    return list(LOSSES)


def list_sharings() -> list[str]:
    return [spec.partition(":")[0] for spec in sharing_names()]


__all__ = [
    "HPARAM_NAMES",
    "LOSSES",
    "NEEDS_NORMED_HEAD",
    "ParametricCrossEntropy",
    "Sharing",
    "adjusted_logits",
    "cdt_scale",
    "create_loss",
    "create_sharing",
    "drw_weights",
    "frequency_dictionary",
    "frequency_groups",
    "la_bias",
    "ldam_margins",
    "list_losses",
    "list_sharings",
    "log_prior",
    "parametric_cross_entropy",
    "per_class",
    "to_soft_targets",
]
