"""Workers sharing one SQLite study claim each enqueued trial once (optuna/optuna#4002: SQLite ignores
``SELECT ... FOR UPDATE``, so without the storage's lock two workers could run the same trial)."""

from __future__ import annotations

import multiprocessing as mp

import optuna

from ab_plugin.warmstart.storage import open_storage, resolve_storage

WORKERS = 4


def _ask(out: str, barrier: mp.Barrier, results: mp.Queue) -> None:  # type: ignore[valid-type]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="s", storage=open_storage(resolve_storage("sqlite", out)))
    barrier.wait()  # every worker asks at the same moment
    results.put(study.ask().number)


def test_concurrent_workers_claim_an_enqueued_trial_once(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(3):  # the race needs both reads before either write: three rounds make it likely
        out = tmp_path / str(attempt)
        study = optuna.create_study(study_name="s", storage=open_storage(resolve_storage("sqlite", out)))
        study.enqueue_trial({"x": 1.0})
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
        procs = [ctx.Process(target=_ask, args=(str(out), barrier, results)) for _ in range(WORKERS)]
        for p in procs:
            p.start()
        numbers = sorted(results.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        assert numbers == list(range(WORKERS)), numbers  # trial 0 (the enqueued one) went to one worker only
        assert len(study.get_trials(deepcopy=False)) == WORKERS
