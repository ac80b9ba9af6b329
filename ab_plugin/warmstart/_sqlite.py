"""SQLite study storage whose claim of an enqueued trial is atomic across the processes of one machine.

Optuna claims a WAITING (enqueued) trial by reading its state and then writing RUNNING; on a database server
``SELECT ... FOR UPDATE`` makes that one step, but SQLite ignores it, so two workers can claim the same trial,
run it twice, and the second to finish fails with "Cannot tell a COMPLETE/PRUNED trial" (optuna/optuna#4002).
Here the claim runs under an exclusive lock on a file beside the database (``filelock``, as the run folders'
lock), which every worker of the study takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState


class SQLiteStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` of ``sqlite:///DB``; a trial's move to ``RUNNING`` holds the lock of ``DB.lock``."""

    def __init__(self, url: str, db: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._lock = FileLock(f"{db}.lock")

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
                               ) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        with self._lock:  # the read of WAITING and the write of RUNNING, with no claim between
            return super().set_trial_state_values(trial_id, state, values)
