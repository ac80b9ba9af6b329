"""The study loop: create or join the study, run each trial as a short proxy search, stop at the target.

``n_trials`` is the study's total over all workers: every worker stops once the study holds that many
finished (complete + pruned) trials, counting the ones other workers are running (``MaxTrialsCallback``), so
the total is exact. The study is created by exactly one worker (the others load it) and only that worker
enqueues the known-good starting points (LA τ = 1 first), so neither a resume nor a second worker duplicates
them. Workers that join a study get a sampler seed derived from the base seed and their process id, so they
do not sample the same points.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..config import Config
from ..io import atomic_write, write_json
from ._names import ATTR_ERROR, ATTR_SETTINGS, ATTR_SURPLUS, ATTR_WORKER, CONFIG, SUMMARY
from ._optuna import finished_states, import_optuna
from .pruning import TrialPruningCallback, create_pruner
from .space import SearchSpace, create_sampler, default_trial_epochs, params_to_config
from .storage import open_storage, resolve_storage
from .summary import summarize_study, write_study_plots
from .workers import fail_dead_trials, worker_id

if TYPE_CHECKING:
    import optuna
    from optuna.pruners import BasePruner
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from ..data import DatasetBundle, Split
    from ..trainer import Trainer

#: Config fields that may differ between the workers of one study (they do not change the trials' result).
_PER_MACHINE = ("device", "data_dir")


@dataclass
class WarmstartResult:
    """What :func:`run_warmstart` returns: the study, its summary (also ``OUT/warmstart.json``), the plots."""

    study: optuna.Study
    summary: dict[str, Any]
    out: Path
    plots: list[Path] = field(default_factory=list)


class _SurplusTrial(Exception):
    """A trial created after the study already had its target (two workers asked at once)."""


def run_warmstart(
    base: Config,
    out: str | Path,
    *,
    n_trials: int = 20,
    study_name: str | None = None,
    storage: str | None = None,
    pruner: str | BasePruner = "median",
    pruner_startup: int = 5,
    sampler: str = "tpe",
    trial_epochs: int | None = None,
    space: SearchSpace | None = None,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    bundle: DatasetBundle | None = None,
    plots: bool = True,
) -> WarmstartResult:
    """Run (or continue, or join) the warm-start study of ``base`` until it holds ``n_trials`` finished trials.

    Args:
        base: the search configuration; each trial runs it for ``trial_epochs`` epochs with the trial's
            ``init`` / ``tau`` / ``gamma`` / ``upper_lr`` / ``val_fraction`` (and, with ``space.recipe``,
            ``weight_decay`` / ``mixup`` / ``drw_from`` / ``stage2``).
        out: run folder (``config.yaml``, the study file of a local storage, ``warmstart.json``, plots).
        n_trials: total finished (complete + pruned) trials the study should hold, over all workers.
        study_name: ``None``: the name of ``out``.
        storage: ``None``/``sqlite``, ``journal`` or a database URL (see :func:`~.storage.resolve_storage`).
        pruner: see :func:`~.pruning.create_pruner`; ``pruner_startup`` is its ``n_startup_trials``.
        sampler: ``tpe`` or ``random``, seeded with ``base.seed`` (joining workers: a per-process seed).
        trial_epochs: proxy length; ``None``: :func:`~.space.default_trial_epochs` of ``base.epochs``.
        space: the ranges searched (:class:`~.space.SearchSpace`); its known-good points are enqueued when
            this call creates the study (at most ``n_trials``).
        timeout: stop this worker after that many seconds (the study stays resumable).
        callbacks: Optuna study callbacks ``(study, frozen_trial)`` called after every trial.
        bundle: the data (``None``: loaded from ``base``).
        plots: write the Optuna plots into ``out``.
    """
    optuna = import_optuna()
    from ..runs import check_command, load_bundle
    from ..search import AutoBalance
    from ..trainer import NumericalError

    if n_trials < 1:
        raise ValueError(f"--n-trials must be >= 1, got {n_trials}")
    base.validate()
    space = space or SearchSpace()
    space.validate()
    trial_epochs = default_trial_epochs(base.epochs) if trial_epochs is None else int(trial_epochs)
    if trial_epochs < 1:
        raise ValueError(f"--trial-epochs must be >= 1, got {trial_epochs}")
    space.check_base(base, trial_epochs)
    out = Path(out)
    check_command(out, "warmstart")  # never rewrite the config.yaml of a search / baseline / retrain run
    spec = resolve_storage(storage, out)
    pruner_obj = create_pruner(pruner, max_resource=trial_epochs, n_startup_trials=pruner_startup)
    bundle = bundle if bundle is not None else load_bundle(base)
    # fail fast on names that do not exist (backbone, engine, objective...) before a study is touched
    AutoBalance(base.replace(epochs=trial_epochs)).build(bundle)

    out.mkdir(parents=True, exist_ok=True)
    study = _join_study(open_storage(spec), study_name or out.resolve().name, base, space, trial_epochs,
                        n_trials=n_trials, sampler=sampler, pruner=pruner_obj)
    _write_config(out, base)
    fail_dead_trials(study, local=spec.local, wait=True)

    def reap(study_: optuna.Study, _trial: FrozenTrial) -> None:
        fail_dead_trials(study_, local=spec.local)

    # RUNNING counts: a worker does not start a trial that others' running trials will make surplus
    stop_at_target = optuna.study.MaxTrialsCallback(n_trials, states=(*finished_states(),
                                                                      optuna.trial.TrialState.RUNNING))
    if _claimed_before(study, sys.maxsize) < n_trials:
        study.optimize(_objective(study, base, space, bundle, n_trials=n_trials, trial_epochs=trial_epochs),
                       timeout=timeout, callbacks=[reap, stop_at_target, *callbacks],
                       catch=(NumericalError, _SurplusTrial))
    summary = summarize_study(study, n_trials=n_trials)
    summary.update({"storage": spec.display, "storage_kind": spec.kind, "out": str(out),
                    "trial_epochs": trial_epochs, "space": space.to_dict(),
                    "pruner": pruner if isinstance(pruner, str) else type(pruner).__name__, "sampler": sampler})
    paths: list[Path] = []
    if plots:
        paths, skipped = write_study_plots(study, out)
        summary["plots"] = [p.name for p in paths]
        summary["plots_skipped"] = skipped
    write_json(out / SUMMARY, summary)
    return WarmstartResult(study, summary, out, paths)


def _objective(study: optuna.Study, base: Config, space: SearchSpace, bundle: DatasetBundle, *, n_trials: int,
               trial_epochs: int) -> Callable[[optuna.Trial], float]:
    """One trial: a ``trial_epochs``-epoch search with the sampled settings (and, with the recipe knobs, its
    stage 2: :func:`_proxy_stage2`); returns the validation balanced error at its end (reported at
    ``step = trial_epochs``)."""
    from ..search import AutoBalance
    from ..trainer import NumericalError

    worker = worker_id()

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(ATTR_WORKER, worker)
        if _claimed_before(study, trial.number) >= n_trials:
            trial.set_user_attr(ATTR_SURPLUS, True)
            study.stop()
            raise _SurplusTrial(f"the study already holds {n_trials} trials")
        # a proxy is a short one-stage search, pruned per epoch on its validation error (``--stage2 auto`` is
        # ``none`` here; the search it hands on to resolves its own)
        cfg = params_to_config(base, space.suggest(trial, base, trial_epochs)).replace(epochs=trial_epochs)
        cfg = cfg.for_role(search=False)
        # a trial with a searched stage 2 is scored after it: its epochs' errors are of a model it never hands
        # on, so they are not reported and the pruner does not stop it (it runs its trial_epochs to the end)
        staged = space.recipe is not None and cfg.stage2 != "none"
        t0 = time.perf_counter()
        try:
            trainer, val = AutoBalance(cfg).build(bundle, callbacks=[] if staged else [TrialPruningCallback(trial)])
            trainer.fit()
            if staged:
                trial.set_user_attr("stage2", _proxy_stage2(trainer, val))
            metrics = trainer.evaluate(val)
        except NumericalError as e:
            trial.set_user_attr(ATTR_ERROR, str(e).splitlines()[0])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        trial.set_user_attr("val_metrics", {k: float(getattr(metrics, k)) for k in
                                            ("accuracy", "balanced_error", "worst_class_error")
                                            if isinstance(getattr(metrics, k, None), (int, float))})
        trial.report(float(metrics.balanced_error), step=trial_epochs)
        return float(metrics.balanced_error)

    return objective


def _proxy_stage2(trainer: Trainer, val: Split) -> dict[str, Any]:
    """A proxy trial's stage 2, what the refined run does after its loop: the exact search of α on the frozen
    features against ``val`` (``search``, as :meth:`~ab_plugin.search.AutoBalance.fit` runs it), or the recipe
    that re-trains the classifier (``crt``, ``wb``: the retrain's stage 2, here on the proxy's backbone).
    Returns what it did (``recipe``, ``seconds``...), which the trial keeps."""
    from ..objectives import create_objective
    from ..stage2 import apply_recipe, exact_search

    if trainer.cfg.stage2 == "search":
        return exact_search(trainer, val, create_objective(trainer.cfg.objective))[1]
    return apply_recipe(trainer, trainer.cfg.stage2)


def _claimed_before(study: optuna.Study, number: int) -> int:
    """Trials that count towards the target ahead of trial ``number``: finished ones, and running ones that
    started earlier (a lower number)."""
    ts = import_optuna().trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False, states=(ts.COMPLETE, ts.PRUNED, ts.RUNNING))
               if t.number != number and (t.state != ts.RUNNING or t.number < number))


def _join_study(storage: BaseStorage, name: str, base: Config, space: SearchSpace, trial_epochs: int, *,
                n_trials: int, sampler: str, pruner: BasePruner) -> optuna.Study:
    """Create the study (then record its settings and enqueue the known-good points), or load it (then check
    that it was started with the same settings)."""
    study, created = _open_study(storage, name, create_sampler(sampler, base.seed), pruner)
    settings = _settings(base, space, trial_epochs)
    if created:
        study.set_user_attr(ATTR_SETTINGS, settings)
        for params in space.known_good(base, trial_epochs)[:n_trials]:
            study.enqueue_trial(dict(params), skip_if_exists=True)
    else:
        _check_settings(study, settings)
        # a joining worker must not replay the creator's random sequence
        study.sampler = create_sampler(sampler, (base.seed * 1_000_003 + os.getpid() * 7919
                                                 + len(study.get_trials(deepcopy=False))) % 2**31)
    return study


def _open_study(storage: BaseStorage, name: str, sampler: Any, pruner: BasePruner) -> tuple[optuna.Study, bool]:
    """Create the study, or load it if it exists; ``True`` for the one caller that created it (the database's
    unique study name arbitrates between workers starting together)."""
    optuna = import_optuna()
    try:
        return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                   direction="minimize", load_if_exists=False), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        if study.direction != optuna.study.StudyDirection.MINIMIZE or len(study.directions) != 1:
            raise ValueError(f"study {name!r} does not minimise one value (not made by `ab-plugin warmstart`): "
                             "choose another --study-name") from None
        return study, False


def _settings(base: Config, space: SearchSpace, trial_epochs: int) -> dict[str, Any]:
    cfg = {k: v for k, v in base.to_dict().items() if k not in _PER_MACHINE}
    return json.loads(json.dumps({"config": cfg, "space": space.to_dict(), "trial_epochs": trial_epochs,
                                  "metric": "val balanced_error"}))


def _check_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    have = study.user_attrs.get(ATTR_SETTINGS)
    if have is None or have == settings:
        return

    def flat(d: dict[str, Any]) -> dict[str, Any]:
        return {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in d.items()
                for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}

    a, b = flat(have), flat(settings)
    diff = [f"{k.removeprefix('config.')} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
    raise ValueError(f"study {study.study_name!r} was started with other settings ({'; '.join(diff[:3])}): run "
                     "every worker with the same options, or choose another --study-name / --out")


def _write_config(out: Path, base: Config) -> None:
    atomic_write(out / CONFIG, lambda f: yaml.safe_dump({"command": "warmstart", **base.to_dict()}, f,
                                                        sort_keys=True), mode="w")
