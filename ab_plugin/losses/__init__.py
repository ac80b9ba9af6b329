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
from ._parametric import (
    HPARAM_NAMES,
    INITS,
    LOSSES,
    NEEDS_NORMED_HEAD,
    PER_CLASS_NAMES,
    ParametricCrossEntropy,
    create_loss,
    list_inits,
    list_losses,
)
from ._sharing import (
    Sharing,
    create_sharing,
    expand_basis,
    fit_basis,
    frequency_dictionary,
    frequency_groups,
    per_class,
)

__all__ = [
    "HPARAM_NAMES",
    "INITS",
    "LOSSES",
    "NEEDS_NORMED_HEAD",
    "PER_CLASS_NAMES",
    "ParametricCrossEntropy",
    "Sharing",
    "adjusted_logits",
    "cdt_scale",
    "create_loss",
    "create_sharing",
    "drw_weights",
    "expand_basis",
    "fit_basis",
    "frequency_dictionary",
    "frequency_groups",
    "la_bias",
    "ldam_margins",
    "list_inits",
    "list_losses",
    "log_prior",
    "parametric_cross_entropy",
    "per_class",
    "to_soft_targets",
]
