"""The parametric loss family ``w_y · CE(Δ ⊙ z + l, y)``, its sharing bases and its baselines.

- :class:`ParametricCrossEntropy`, :func:`create_loss` (``ce``, ``la``, ``cdt``, ``vs``, ``ldam``, ``ldam-drw``,
  ``autobalance``; :func:`list_losses`, :func:`list_inits`), :func:`parametric_cross_entropy` (the
  functional form); :data:`HPARAM_NAMES`: what the upper level can learn.
- :class:`Sharing`, :func:`create_sharing` (``per_class``, ``groups:K``, ``poly:K``, ``hat:K``;
  :func:`list_sharings`): how classes share the learned values.
"""

from ._functional import parametric_cross_entropy
from ._parametric import (
    HPARAM_NAMES,
    ParametricCrossEntropy,
    create_loss,
    list_inits,
    list_losses,
)
from ._sharing import Sharing, create_sharing, list_sharings

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
