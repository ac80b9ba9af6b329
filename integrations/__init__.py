"""AutoBalance in the training loops you already have: timm, torchvision and Lightning.

The smallest integration is the criterion alone::

    from ab_plugin.integrations import AutoBalanceCriterion

    criterion = AutoBalanceCriterion(class_counts).attach(model, val_loader)
    loss = criterion(model(x), y)          # in your loop; α is tuned every `interval` calls

- :class:`AutoBalanceCriterion`: the self-tuning parametric cross-entropy (any loop).
- timm: :class:`AutoBalanceTimmCallback`, :func:`train_timm`, :class:`TimmRun` (checkpoints in timm's layout);
  timm's own ``train.py`` needs the criterion and :class:`AutoBalanceTask` (README, "timm's own train.py").
- torchvision: :func:`train_one_epoch`, :func:`evaluate` (reference-shaped), :class:`PerClassCollate`,
  :class:`SampleTransformDataset` (the label-passing wrapper: per-class policies around ``ImageFolder`` in
  ``transforms.v2`` pipelines and timm's ``create_loader``).
- Lightning (``pip install 'ab-plugin[lightning]'``): :class:`AutoBalanceCallback`.
- Optuna (for ab-plugin's own :class:`~ab_plugin.trainer.Trainer`): :class:`TrialPruningCallback`.
- :func:`evaluate_metrics`, :func:`predict_logits`: imbalance metrics on any loader.

Framework modules are imported on first use of a name (``import ab_plugin.integrations`` never imports
Lightning); a missing optional framework raises ``ImportError`` with the install command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._criterion import AutoBalanceCriterion, ValSource
from ._eval import evaluate_metrics, predict_logits

if TYPE_CHECKING:
    from ab_plugin.warmstart import TrialPruningCallback

    from ._lightning import AutoBalanceCallback
    from ._timm import AutoBalanceTask, AutoBalanceTimmCallback, TimmRun, train_timm
    from ._torchvision import PerClassCollate, SampleTransformDataset, evaluate, train_one_epoch

_LAZY = {
    "AutoBalanceTask": "._timm",
    "AutoBalanceTimmCallback": "._timm",
    "TimmRun": "._timm",
    "train_timm": "._timm",
    "PerClassCollate": "._torchvision",
    "SampleTransformDataset": "._torchvision",
    "evaluate": "._torchvision",
    "train_one_epoch": "._torchvision",
    "AutoBalanceCallback": "._lightning",
    "TrialPruningCallback": "ab_plugin.warmstart",
}

__all__ = [
    "AutoBalanceCallback",
    "AutoBalanceCriterion",
    "AutoBalanceTask",
    "AutoBalanceTimmCallback",
    "PerClassCollate",
    "SampleTransformDataset",
    "TimmRun",
    "TrialPruningCallback",
    "ValSource",
    "evaluate",
    "evaluate_metrics",
    "predict_logits",
    "train_one_epoch",
    "train_timm",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
