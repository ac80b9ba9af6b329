"""Optuna hooks for the :class:`~ab_plugin.trainer.Trainer` loop: report per-epoch validation metrics to a trial
and stop it when the study's pruner says so.

>>> trainer, val = AutoBalance(cfg).build(bundle, callbacks=[TrialPruningCallback(trial)])  # doctest: +SKIP
>>> trainer.fit()  # raises optuna.TrialPruned when the pruner stops the trial               # doctest: +SKIP

Optuna is imported lazily (only when a callback is built), with an install hint if it is missing.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TrialPruningCallback", "import_optuna"]


def import_optuna() -> Any:
    """``import optuna`` with a one-line hint when it is not installed."""
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise ImportError("the Optuna warm start needs optuna: pip install 'optuna>=4.0'") from None


class TrialPruningCallback:
    """Trainer callback: ``trial.report`` the epoch's validation metric, raise ``optuna.TrialPruned`` on
    ``trial.should_prune()``.

    The trainer measures the validation split at the *start* of each epoch, so the record of epoch ``e``
    (0-based) describes the model after ``e`` training epochs; it is reported at ``step = e``. Step 0 (the
    untrained model) is not reported: it says nothing about the loss being tried, and a pruner acting on it
    would prune on noise. The caller reports the value after the last epoch itself (``step = epochs``).

    Args:
        trial: the running ``optuna.Trial``.
        metric: key of ``record["val"]`` to report (lower is better with ``direction="minimize"``).
    """

    def __init__(self, trial: Any, metric: str = "balanced_error") -> None:
        self.optuna = import_optuna()
        self.trial = trial
        self.metric = metric
        self.reported: dict[int, float] = {}

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        if epoch == 0 or "val" not in record:
            return
        value = float(record["val"][self.metric])
        self.trial.report(value, step=epoch)
        self.reported[epoch] = value
        if self.trial.should_prune():
            raise self.optuna.TrialPruned(
                f"validation {self.metric} {value:.4f} after {epoch} epoch(s) is worse than the pruner allows"
            )
