"""The parametric loss family ``w_y · CE(Δ ⊙ z + l, y)``, its sharing bases and its baselines.

- :class:`ParametricCrossEntropy`, :func:`create_loss` (``ce``, ``la``, ``cdt``, ``vs``, ``ldam``, ``ldam-drw``,
  ``autobalance``; :func:`list_losses`, :func:`list_inits`), :func:`parametric_cross_entropy` (the
  functional form); :data:`HPARAM_NAMES`: what the upper level can learn.
- :class:`Sharing`, :func:`create_sharing` (``per_class``, ``groups:K``, ``poly:K``, ``hat:K``;
  :func:`list_sharings`): how classes share the learned values.
"""

from ._functional import (
    parametric_cross_entropy,
    to_soft_targets,  # noqa: F401  (not public, see below)
)
from ._parametric import (
    HPARAM_NAMES,
    NEEDS_NORMED_HEAD,  # noqa: F401  (not public, see below)
    ParametricCrossEntropy,
    create_loss,
    list_inits,
    list_losses,
)
from ._sharing import Sharing, create_sharing, list_sharings

# to_soft_targets and NEEDS_NORMED_HEAD are importable here but not public (not in __all__): search.py,
# hypergrad/_engines.py and integrations/_criterion.py import them through the package; new code imports
# them from their defining modules.
__all__ = [
    "HPARAM_NAMES",
    "ParametricCrossEntropy",
    "Sharing",
    "create_loss",
    "create_sharing",
    "list_inits",
    "list_losses",
    "list_sharings",
    "parametric_cross_entropy",
]
