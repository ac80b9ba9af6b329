"""ab-plugin: AutoBalance (Li et al., NeurIPS 2021) as a plugin for the training loops you already use.

The public API is small: a loss (:class:`ParametricCrossEntropy`, :func:`create_loss`), hypergradient
engines (:mod:`ab_plugin.hypergrad`), the search (:class:`AutoBalance`, :func:`retrain`,
:func:`train_baseline`) and its :class:`Config`.
"""

__version__ = "0.1.0"

from .config import Config
from .losses import ParametricCrossEntropy, create_loss
from .search import AutoBalance, RunResult, SearchResult, retrain, train_baseline

__all__ = [
    "AutoBalance",
    "Config",
    "ParametricCrossEntropy",
    "RunResult",
    "SearchResult",
    "__version__",
    "create_loss",
    "retrain",
    "train_baseline",
]
