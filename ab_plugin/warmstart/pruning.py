"""Early stopping of trials: the per-epoch report from the :class:`~ab_plugin.trainer.Trainer` to a trial, and
the pruner that decides on it.

>>> trainer, val = AutoBalance(cfg).build(bundle, callbacks=[TrialPruningCallback(trial)])  # doctest: +SKIP
>>> trainer.fit()  # raises optuna.TrialPruned when the pruner stops the trial               # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..callbacks import TrainerCallback
from ._optuna import import_optuna

if TYPE_CHECKING:
    from optuna.pruners import BasePruner


class TrialPruningCallback(TrainerCallback):
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


def create_pruner(spec: str | BasePruner, *, max_resource: int, n_startup_trials: int = 5) -> BasePruner:
    """``median`` (default), ``hyperband``, ``percentile:P`` (prune above the P-th percentile, 0 < P < 100),
    ``threshold:X`` (prune once the validation error exceeds X) or ``none``; an Optuna pruner passes through.

    ``max_resource``: epochs of a trial (hyperband's budget); ``n_startup_trials``: trials completed before the
    median / percentile pruner prunes.
    """
    optuna = import_optuna()
    if not isinstance(spec, str):
        return spec
    name, _, arg = spec.strip().lower().partition(":")
    hint = "choose median, hyperband, percentile:P (0 < P < 100), threshold:X or none"
    if name in ("median", "hyperband", "none") and arg:
        raise ValueError(f"--pruner {name} takes no value, got {spec!r}: {hint}")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_resource), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name in ("percentile", "threshold"):
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"--pruner {spec!r} needs a number after '{name}:': {hint}") from None
        if name == "percentile":
            if not 0 < value < 100:
                raise ValueError(f"--pruner percentile:P needs 0 < P < 100, got {value:g}")
            return optuna.pruners.PercentilePruner(value, n_startup_trials=n_startup_trials)
        return optuna.pruners.ThresholdPruner(upper=value)
    raise ValueError(f"unknown --pruner {spec!r}: {hint}")
