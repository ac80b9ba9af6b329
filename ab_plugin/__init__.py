"""ab-plugin: AutoBalance (Li et al., NeurIPS 2021) as a plugin for the training loops you already use.

The public API is small: a loss (:class:`ParametricCrossEntropy`, :func:`create_loss`), hypergradient
engines (:mod:`ab_plugin.hypergrad`), the search (:class:`AutoBalance`, :func:`retrain`,
:func:`train_baseline`) and its :class:`Config`.

Names are imported on first use, so ``import ab_plugin.losses`` costs torch alone, not timm or
torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AutoBalance": ".search",
    "Config": ".config",
    "ParametricCrossEntropy": ".losses",
    "RunResult": ".search",
    "TrainerCallback": ".callbacks",
    "create_loss": ".losses",
    "retrain": ".search",
    "train_baseline": ".search",
}

__all__ = [
    "AutoBalance",
    "Config",
    "ParametricCrossEntropy",
    "RunResult",
    "TrainerCallback",
    "__version__",
    "create_loss",
    "retrain",
    "train_baseline",
]

if TYPE_CHECKING:
    from .callbacks import TrainerCallback
    from .config import Config
    from .losses import ParametricCrossEntropy, create_loss
    from .search import AutoBalance, RunResult, retrain, train_baseline


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ab_plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
