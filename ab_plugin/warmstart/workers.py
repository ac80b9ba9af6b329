"""Worker liveness and stale-trial recovery: a trial left ``RUNNING`` by a killed worker is failed (and an
enqueued point retried) so that the study's target still counts only trials that ran.

A worker stamps each trial with ``host:pid:start`` (the process start time from ``/proc``, so a reused pid is
not mistaken for the worker). Only workers on this machine can be judged; on a database server the trials of
dead workers on other machines are failed by Optuna's heartbeat (:func:`~.storage.open_storage`).
"""

from __future__ import annotations

import datetime
import functools
import os
import socket
import time
from typing import TYPE_CHECKING

from ._names import ATTR_RETRY_OF, ATTR_WORKER
from ._optuna import import_optuna

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

#: Seconds after which a RUNNING trial that no worker stamped counts as dead (local storages).
UNCLAIMED_S = 10.0


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return socket.gethostname()


def _process_start(pid: int) -> str:
    """Start time of a process (clock ticks since boot, Linux); '' where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def worker_id() -> str:
    """This process as ``host:pid:start``."""
    pid = os.getpid()
    return f"{_host()}:{pid}:{_process_start(pid)}"


def worker_alive(worker: str) -> bool | None:
    """``False`` when ``worker`` ran on this machine and its process is gone (or its pid was reused),
    ``True`` when it is running, ``None`` when it ran elsewhere (unknown)."""
    host, _, rest = worker.partition(":")
    pid_s, _, start = rest.partition(":")
    if host != _host() or not pid_s.isdigit():
        return None
    pid = int(pid_s)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not (start and _process_start(pid) not in ("", start))


def _age_s(t: FrozenTrial) -> float:
    """Seconds since the trial started (RDB stores naive local times, the journal aware UTC ones)."""
    start = t.datetime_start
    if start is None:
        return 0.0
    now = datetime.datetime.now(start.tzinfo) if start.tzinfo else datetime.datetime.now()
    return (now - start).total_seconds()


def fail_dead_trials(study: optuna.Study, *, local: bool = True, unclaimed_after: float = UNCLAIMED_S,
                     wait: bool = False) -> list[int]:
    """Mark ``FAIL`` the ``RUNNING`` trials of dead workers on this machine; returns their numbers.

    A worker stamps its trial with ``host:pid:start`` right after creating it; the trial is dead when that
    process is gone. With ``local`` storages (a file only this machine uses), a trial still unstamped
    ``unclaimed_after`` seconds after it started was created by a worker killed in between (``wait``: sleep
    until such young trials can be judged). A dead trial that was an enqueued point is enqueued again (once:
    only the worker whose ``FAIL`` lands re-enqueues), so a crash does not lose a known-good point.
    """
    ts = import_optuna().trial.TrialState
    running = study.get_trials(deepcopy=False, states=(ts.RUNNING,))
    if wait and local:
        young = [_age_s(t) for t in running if ATTR_WORKER not in t.user_attrs and _age_s(t) < unclaimed_after]
        if young:
            time.sleep(unclaimed_after - min(young) + 0.1)
            running = study.get_trials(deepcopy=False, states=(ts.RUNNING,))
    failed = []
    for t in running:
        worker = t.user_attrs.get(ATTR_WORKER)
        dead = (worker_alive(worker) is False) if worker else (local and _age_s(t) >= unclaimed_after)
        if not dead:
            continue
        try:
            study.tell(t.number, state=ts.FAIL)
        except (ValueError, RuntimeError):
            continue  # another worker failed it (or its owner finished it) first
        failed.append(t.number)
        fixed = t.system_attrs.get("fixed_params")
        if fixed:
            study.enqueue_trial(dict(fixed), user_attrs={ATTR_RETRY_OF: t.number})
    return failed
