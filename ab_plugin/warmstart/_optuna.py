"""Optuna, imported lazily (only when a study or a callback is built), with an install hint if it is missing."""

from __future__ import annotations

import importlib
from typing import Any


def import_optuna() -> Any:
    """``import optuna`` with a one-line hint when it is not installed."""
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise ImportError("the Optuna warm start needs optuna: pip install 'optuna>=4.0'") from None


def finished_states() -> tuple[Any, ...]:
    """The trial states that count towards a study's target: ``(COMPLETE, PRUNED)``."""
    ts = import_optuna().trial.TrialState
    return (ts.COMPLETE, ts.PRUNED)
