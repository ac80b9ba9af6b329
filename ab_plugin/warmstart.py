"""Optuna warm start: a coarse outer search over the knobs gradients do not reach, then gradient refinement.

The bilevel search learns α = (w, l, Δ, A) by hypergradients from an initialisation, with an upper
learning rate, on a validation split; those choices are not differentiable. ``ab-plugin warmstart`` runs an
Optuna study over them, each trial a short proxy search (few epochs) whose per-epoch validation balanced
error is reported to the trial so that a pruner stops bad trials early:

- the initialisation family and its strength: ``init`` in {la, cdt, vs} (``--inits``), LA τ (``tau``),
  CDT γ (``gamma``), VS both;
- the upper learning rate ``upper_lr`` (log scale);
- the validation split fraction ``val_fraction``;
- the learned-augmentation strength, when the configuration has a field for it (one of
  :data:`AUGMENT_STRENGTH_FIELDS`) and ``augment = "learned"``; skipped otherwise.

``ab-plugin search --warmstart STUDY|N`` (:func:`warmstart_config`) then starts the gradient search from
the best trial's settings.

Storage and workers
-------------------
The study lives in a storage that survives a crash; rerunning the same command continues it:

- ``--storage sqlite`` (default): ``OUT/study.db`` (``sqlite:///...``), for one or several processes on
  one machine;
- ``--storage journal``: Optuna's journal file ``OUT/study.journal`` (``JournalFileBackend``), the same
  use, friendlier to network file systems than SQLite;
- ``--storage postgresql://user:password@host:5432/db`` (or ``mysql+pymysql://...``): a database server,
  for workers on several machines (needs ``psycopg2-binary`` / ``pymysql``).

Every worker runs the *same* command (same options, same ``--study-name`` and ``--storage``)::

    # one machine, 4 processes sharing OUT/study.db
    for i in 1 2 3 4; do ab-plugin warmstart --out runs/ws --n-trials 40 --quiet & done; wait
    # several machines, one PostgreSQL study
    ab-plugin warmstart --study-name ws-c10 --storage postgresql://ab:pw@db:5432/optuna --n-trials 200 --out runs/ws

``--n-trials`` is the total target: every worker stops once the study holds that many finished
(complete + pruned) trials, counting the ones other workers are running (``MaxTrialsCallback``), so the
total is exact. The study is created by exactly one worker (the others load it) and only that worker
enqueues the known-good starting points (LA τ = 1 first), so neither a resume nor a second worker
duplicates them. A trial left ``RUNNING`` by a killed worker on this machine is marked ``FAIL`` when any
worker starts (its process is gone); on a database server, trials of dead workers on other machines are
failed by Optuna's heartbeat. Workers that join a study get a sampler seed derived from ``--seed`` and their
process id, so they do not sample the same points.

Files in ``--out``: ``config.yaml`` (the base configuration), ``study.db`` or ``study.journal``,
``warmstart.json`` (summary), ``optuna_history.png``, ``optuna_intermediate.png``,
``optuna_importances.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from ._options import _resolve_config
from ._options import config_options as _config_options
from .config import Config
from .integrations._optuna import TrialPruningCallback, import_optuna
from .io import atomic_write, write_json

if TYPE_CHECKING:
    import optuna
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from .data import DatasetBundle

__all__ = [
    "AUGMENT_STRENGTH_FIELDS",
    "INIT_FAMILIES",
    "SearchSpace",
    "StorageSpec",
    "TrialPruningCallback",
    "WarmstartResult",
    "best_trial",
    "create_pruner",
    "create_sampler",
    "default_trial_epochs",
    "fail_dead_trials",
    "load_warmstart_study",
    "open_storage",
    "params_to_config",
    "resolve_storage",
    "run_warmstart",
    "summarize_study",
    "warmstart_command",
    "warmstart_config",
    "write_study_plots",
]

#: Initialisation families of the AutoBalance loss and the strength parameters each one uses.
INIT_FAMILIES: dict[str, tuple[str, ...]] = {"neutral": (), "la": ("tau",), "cdt": ("gamma",), "vs": ("tau", "gamma")}
#: Config fields that hold a learned-augmentation strength, if the configuration has one.
AUGMENT_STRENGTH_FIELDS: tuple[str, ...] = ("augment_strength", "augment_magnitude")

STUDY_DB = "study.db"
STUDY_JOURNAL = "study.journal"
SUMMARY = "warmstart.json"
CONFIG = "config.yaml"
PLOT_HISTORY = "optuna_history.png"
PLOT_INTERMEDIATE = "optuna_intermediate.png"
PLOT_IMPORTANCES = "optuna_importances.png"

_ATTR_SETTINGS = "ab_plugin.settings"
_ATTR_WORKER = "ab_plugin.worker"
_ATTR_SURPLUS = "ab_plugin.surplus"
_ATTR_ERROR = "ab_plugin.error"
_ATTR_RETRY_OF = "ab_plugin.retry_of"
#: Seconds after which a RUNNING trial that no worker stamped counts as dead (local storages).
_UNCLAIMED_S = 10.0
#: Config fields that may differ between the workers of one study (they do not change the trials' result).
_PER_MACHINE = ("device", "data_dir")
_SERVER_BACKENDS = ("postgresql", "mysql", "mariadb")
_HEARTBEAT_S, _GRACE_S = 30, 120


# ------------------------------------------------------------------------------------------ search space
@dataclass(frozen=True)
class SearchSpace:
    """The coarse knobs and their ranges (``(low, high)``; ``upper_lr`` is sampled on a log scale).

    ``tau`` is only sampled for the ``la`` and ``vs`` families, ``gamma`` for ``cdt`` and ``vs``.
    """

    inits: tuple[str, ...] = ("la", "cdt", "vs")
    tau: tuple[float, float] = (0.0, 2.5)
    gamma: tuple[float, float] = (0.0, 0.5)
    upper_lr: tuple[float, float] = (1e-3, 1e-1)
    val_fraction: tuple[float, float] = (0.1, 0.4)
    augment_strength: tuple[float, float] = (0.0, 1.0)

    def validate(self) -> None:
        bad = [i for i in self.inits if i not in INIT_FAMILIES]
        if not self.inits or bad:
            raise ValueError(f"unknown --inits {','.join(bad) or '(empty)'}: choose from {', '.join(INIT_FAMILIES)}")
        for name in ("tau", "gamma", "upper_lr", "val_fraction", "augment_strength"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"search range of {name} must be finite with low < high, got ({lo}, {hi})")
        if self.upper_lr[0] <= 0:
            raise ValueError(f"upper_lr is searched on a log scale: its range must start above 0, got {self.upper_lr}")
        if not (0 < self.val_fraction[0] and self.val_fraction[1] < 1):
            raise ValueError(f"the val_fraction range must lie inside (0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    def augment_field(self, base: Config) -> str | None:
        """The config field of the augmentation strength searched for ``base``, or ``None`` (skipped)."""
        if base.augment != "learned":
            return None
        names = {f.name for f in dataclasses.fields(Config)}
        return next((f for f in AUGMENT_STRENGTH_FIELDS if f in names), None)

    def suggest(self, trial: optuna.Trial, base: Config) -> dict[str, Any]:
        """Sample one point; returns ``trial.params`` (names are :class:`Config` fields)."""
        init = trial.suggest_categorical("init", list(self.inits))
        uses = INIT_FAMILIES[str(init)]
        if "tau" in uses:
            trial.suggest_float("tau", *self.tau)
        if "gamma" in uses:
            trial.suggest_float("gamma", *self.gamma)
        trial.suggest_float("upper_lr", *self.upper_lr, log=True)
        trial.suggest_float("val_fraction", *self.val_fraction)
        aug = self.augment_field(base)
        if aug is not None:
            trial.suggest_float(aug, *self.augment_strength)
        return dict(trial.params)

    def known_good(self, base: Config) -> list[dict[str, Any]]:
        """Points enqueued when a study is created: LA τ = 1 (the logit-adjustment default) first, then VS
        (τ = 1, γ = 0.2) and CDT (γ = 0.2) where those families are searched; the base config's upper learning
        rate and validation fraction (clipped into their ranges)."""

        def clip(v: float, lo_hi: tuple[float, float]) -> float:
            return float(min(max(v, lo_hi[0]), lo_hi[1]))

        common = {"upper_lr": clip(base.upper_lr, self.upper_lr),
                  "val_fraction": clip(base.val_fraction, self.val_fraction)}
        aug = self.augment_field(base)
        if aug is not None:
            common[aug] = clip(float(getattr(base, aug)), self.augment_strength)
        points = []
        for init, extra in (("la", {"tau": 1.0}), ("vs", {"tau": 1.0, "gamma": 0.2}), ("cdt", {"gamma": 0.2})):
            if init in self.inits:
                points.append({"init": init, **{k: clip(v, getattr(self, k)) for k, v in extra.items()}, **common})
        return points


def params_to_config(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with a trial's parameters (``init``, ``tau``, ``gamma``, ``upper_lr``, ``val_fraction``, ...)."""
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"study parameters {unknown} are not configuration fields: use a study made by "
                         "`ab-plugin warmstart`")
    cfg = base.replace(**{k: (str(v) if k == "init" else float(v)) for k, v in params.items()})
    cfg.validate()
    return cfg


def default_trial_epochs(epochs: int) -> int:
    """Proxy length for a search of ``epochs`` epochs: a sixth of it, at least 2 (at most ``epochs``)."""
    return max(1, min(epochs, max(2, round(epochs / 6))))


# ------------------------------------------------------------------------------------ pruner and sampler
def create_pruner(spec: str | BasePruner, *, max_resource: int, n_startup_trials: int = 5) -> BasePruner:
    """``median`` (default), ``hyperband``, ``percentile:P`` (prune above the P-th percentile, 0 < P < 100),
    ``threshold:X`` (prune once the validation error exceeds X) or ``none``; an Optuna pruner passes through."""
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


def create_sampler(name: str, seed: int) -> BaseSampler:
    """``tpe`` (default; ``TPESampler(seed=seed)``) or ``random``."""
    optuna = import_optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown --sampler {name!r}: choose tpe or random")


# ------------------------------------------------------------------------------------------------ storage
@dataclass(frozen=True)
class StorageSpec:
    """Where a study lives. ``kind``: ``sqlite`` (a file), ``journal`` (a file) or ``server`` (a database URL);
    ``target`` is the URL or file path, ``display`` the same with any password hidden."""

    kind: str
    target: str
    display: str

    @property
    def local(self) -> bool:
        """A file on this machine (only processes on this machine share it)."""
        return self.kind != "server"


def resolve_storage(spec: str | None, out: str | Path) -> StorageSpec:
    """``None``/``sqlite`` -> ``OUT/study.db``; ``journal`` -> ``OUT/study.journal``; a path ending in ``.db``
    or ``.journal``; or a database URL (``postgresql://``, ``mysql+pymysql://``, ``sqlite:///``)."""
    out = Path(out)
    s = (spec or "sqlite").strip()
    if s == "sqlite":
        path = (out / STUDY_DB).resolve()
        return StorageSpec("sqlite", f"sqlite:///{path}", str(path))
    if s == "journal":
        path = (out / STUDY_JOURNAL).resolve()
        return StorageSpec("journal", str(path), str(path))
    if "://" in s:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(s)
        except (ArgumentError, ValueError):
            raise ValueError(f"bad --storage URL {s!r}: use dialect://user:password@host:port/database, "
                             "e.g. postgresql://ab:pw@db:5432/optuna") from None
        backend = url.get_backend_name()
        display = url.render_as_string(hide_password=True)
        if backend == "sqlite":
            if not url.database:
                raise ValueError(f"--storage {s!r} names no file: use sqlite:///path/to/study.db")
            return StorageSpec("sqlite", s, display)
        if backend not in _SERVER_BACKENDS:
            raise ValueError(f"unsupported --storage backend {backend!r} in {display}: use postgresql://, "
                             "mysql+pymysql:// or sqlite:///")
        if not url.host or not url.database:
            raise ValueError(f"--storage {display} needs a host and a database: dialect://user:password@host:port/db")
        url = _installed_driver(url)
        return StorageSpec("server", url.render_as_string(hide_password=False),
                           url.render_as_string(hide_password=True))
    if s.endswith((".db", ".sqlite", ".sqlite3")):
        path = Path(s).expanduser().resolve()
        return StorageSpec("sqlite", f"sqlite:///{path}", str(path))
    if s.endswith((".journal", ".log")):
        path = Path(s).expanduser().resolve()
        return StorageSpec("journal", str(path), str(path))
    raise ValueError(f"unknown --storage {s!r}: use sqlite (default, OUT/{STUDY_DB}), journal (OUT/{STUDY_JOURNAL}) "
                     "or a database URL such as postgresql://user:password@host:5432/db")


#: Drivers SQLAlchemy can use per backend, its default first (SQLAlchemy 2.1 defaults PostgreSQL to psycopg 3).
_DRIVERS = {"postgresql": ("psycopg", "psycopg2", "pg8000"), "mysql": ("mysqldb", "pymysql", "mysqlconnector"),
            "mariadb": ("mysqldb", "pymysql", "mysqlconnector")}
_DRIVER_MODULES = {"psycopg": "psycopg", "psycopg2": "psycopg2", "pg8000": "pg8000", "mysqldb": "MySQLdb",
                   "pymysql": "pymysql", "mysqlconnector": "mysql.connector"}


def _installed_driver(url: Any) -> Any:
    """A URL without an explicit driver (``postgresql://``) gets the first installed one of its backend, so that
    ``psycopg2-binary`` works as well as psycopg 3; an explicit ``dialect+driver://`` is kept as given."""
    import importlib.util

    if "+" in url.drivername:
        return url
    for driver in _DRIVERS.get(url.get_backend_name(), ()):
        module = _DRIVER_MODULES[driver]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            return url.set(drivername=f"{url.get_backend_name()}+{driver}")
    return url  # none installed: open_storage names the package to install


def open_storage(spec: StorageSpec) -> BaseStorage:
    """Open (and create the tables of) a storage; connection and driver problems become one-line errors.

    SQLite waits up to 60 s for a lock held by another process; server storages send a heartbeat every 30 s
    so that the trials of a dead worker on another machine are failed after 2 minutes.
    """
    optuna = import_optuna()
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(spec.target))
    import sqlalchemy.exc

    def connect() -> BaseStorage:
        if spec.kind == "sqlite":
            db = spec.target.split(":///", 1)[1] if ":///" in spec.target else ""
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(spec.target, engine_kwargs={"connect_args": {"timeout": 60}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: stable in practice
            return optuna.storages.RDBStorage(spec.target, engine_kwargs={"pool_pre_ping": True},
                                              heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S)

    try:
        for attempt in range(6):
            try:
                return connect()
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
                    sqlalchemy.exc.ProgrammingError) as e:
                # workers starting together race to create the tables (a duplicate alembic_version row, an
                # existing table, a locked file): the next attempt finds them made
                text = str(e).lower()
                racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in text or "locked" in text
                if not racing or attempt == 5:
                    raise
                time.sleep(0.2 * (attempt + 1) + 0.1 * (os.getpid() % 7) / 7)
        raise AssertionError("unreachable")
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise ValueError(f"--storage {spec.display}: its database driver is not installed ({e}): "
                         "pip install psycopg2-binary or 'psycopg[binary]' (postgresql://), pymysql (mysql://)"
                         ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot open --storage {spec.display} ({type(e).__name__}: {first}): check that the "
                         "server is up, the database exists and the URL's user and password") from None


def _study_names(storage: BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())


# ------------------------------------------------------------------------------------- workers, dead trials
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


def _worker_id() -> str:
    pid = os.getpid()
    return f"{_host()}:{pid}:{_process_start(pid)}"


def _worker_alive(worker: str) -> bool | None:
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


def fail_dead_trials(study: optuna.Study, *, local: bool = True, unclaimed_after: float = _UNCLAIMED_S,
                     wait: bool = False) -> list[int]:
    """Mark ``FAIL`` the ``RUNNING`` trials of dead workers on this machine; returns their numbers.

    A worker stamps its trial with ``host:pid:start`` right after creating it; the trial is dead when that
    process is gone. With ``local`` storages (a file only this machine uses), a trial still unstamped
    ``unclaimed_after`` seconds after it started was created by a worker killed in between (``wait``: sleep
    until such young trials can be judged). A dead trial that was an enqueued point is enqueued again (once:
    only the worker whose ``FAIL`` lands re-enqueues), so a crash does not lose a known-good point.
    """
    optuna = import_optuna()
    ts = optuna.trial.TrialState
    running = study.get_trials(deepcopy=False, states=(ts.RUNNING,))
    if wait and local:
        young = [_age_s(t) for t in running if _ATTR_WORKER not in t.user_attrs and _age_s(t) < unclaimed_after]
        if young:
            time.sleep(unclaimed_after - min(young) + 0.1)
            running = study.get_trials(deepcopy=False, states=(ts.RUNNING,))
    failed = []
    for t in running:
        worker = t.user_attrs.get(_ATTR_WORKER)
        dead = (_worker_alive(worker) is False) if worker else (local and _age_s(t) >= unclaimed_after)
        if not dead:
            continue
        try:
            study.tell(t.number, state=ts.FAIL)
        except (ValueError, RuntimeError):
            continue  # another worker failed it (or its owner finished it) first
        failed.append(t.number)
        fixed = t.system_attrs.get("fixed_params")
        if fixed:
            study.enqueue_trial(dict(fixed), user_attrs={_ATTR_RETRY_OF: t.number})
    return failed


class _SurplusTrial(Exception):
    """A trial created after the study already had its target (two workers asked at once)."""


def _finished_states() -> tuple[Any, ...]:
    ts = import_optuna().trial.TrialState
    return (ts.COMPLETE, ts.PRUNED)


def _claimed_before(study: optuna.Study, number: int) -> int:
    """Trials that count towards the target ahead of trial ``number``: finished ones, and running ones that
    started earlier (a lower number)."""
    ts = import_optuna().trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False, states=(ts.COMPLETE, ts.PRUNED, ts.RUNNING))
               if t.number != number and (t.state != ts.RUNNING or t.number < number))


# ------------------------------------------------------------------------------------------ running a study
@dataclass
class WarmstartResult:
    """What :func:`run_warmstart` returns: the study, its summary (also ``OUT/warmstart.json``), the plots."""

    study: optuna.Study
    summary: dict[str, Any]
    out: Path
    plots: list[Path] = field(default_factory=list)


def _settings(base: Config, space: SearchSpace, trial_epochs: int) -> dict[str, Any]:
    cfg = {k: v for k, v in base.to_dict().items() if k not in _PER_MACHINE}
    return json.loads(json.dumps({"config": cfg, "space": space.to_dict(), "trial_epochs": trial_epochs,
                                  "metric": "val balanced_error"}))


def _check_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    have = study.user_attrs.get(_ATTR_SETTINGS)
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


def _open_study(storage: BaseStorage, name: str, sampler: BaseSampler, pruner: BasePruner
                ) -> tuple[optuna.Study, bool]:
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


def _write_config(out: Path, base: Config) -> None:
    atomic_write(out / CONFIG, lambda f: yaml.safe_dump({"command": "warmstart", **base.to_dict()}, f,
                                                        sort_keys=True), mode="w")


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
    enqueue: Sequence[dict[str, Any]] | None = None,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    trainer_callbacks: Sequence[Any] = (),
    bundle: DatasetBundle | None = None,
    plots: bool = True,
) -> WarmstartResult:
    """Run (or continue, or join) the warm-start study of ``base`` until it holds ``n_trials`` finished trials.

    Args:
        base: the search configuration; each trial runs it for ``trial_epochs`` epochs with the trial's
            ``init`` / ``tau`` / ``gamma`` / ``upper_lr`` / ``val_fraction``.
        out: run folder (``config.yaml``, the study file of a local storage, ``warmstart.json``, plots).
        n_trials: total finished (complete + pruned) trials the study should hold, over all workers.
        study_name: ``None``: the name of ``out``.
        storage: ``None``/``sqlite``, ``journal`` or a database URL (see :func:`resolve_storage`).
        pruner: see :func:`create_pruner`; ``pruner_startup`` is its ``n_startup_trials``.
        sampler: ``tpe`` or ``random``, seeded with ``base.seed`` (joining workers: a per-process seed).
        trial_epochs: proxy length; ``None``: :func:`default_trial_epochs` of ``base.epochs``.
        space: the ranges searched (:class:`SearchSpace`).
        enqueue: starting points enqueued when this call creates the study (at most ``n_trials``); ``None``:
            ``space.known_good(base)`` (LA τ = 1 first).
        timeout: stop this worker after that many seconds (the study stays resumable).
        callbacks: Optuna study callbacks ``(study, frozen_trial)`` called after every trial.
        trainer_callbacks: extra :class:`~ab_plugin.trainer.Trainer` callbacks for every proxy run.
        bundle: the data (``None``: loaded from ``base``).
        plots: write the Optuna plots into ``out``.
    """
    optuna = import_optuna()
    from .runs import load_bundle
    from .search import AutoBalance
    from .trainer import NumericalError

    if n_trials < 1:
        raise ValueError(f"--n-trials must be >= 1, got {n_trials}")
    base.validate()
    space = space or SearchSpace()
    space.validate()
    trial_epochs = default_trial_epochs(base.epochs) if trial_epochs is None else int(trial_epochs)
    if trial_epochs < 1:
        raise ValueError(f"--trial-epochs must be >= 1, got {trial_epochs}")
    out = Path(out)
    name = study_name or out.resolve().name
    spec = resolve_storage(storage, out)
    pruner_obj = create_pruner(pruner, max_resource=trial_epochs, n_startup_trials=pruner_startup)
    sampler_obj = create_sampler(sampler, base.seed)
    bundle = bundle if bundle is not None else load_bundle(base)
    # fail fast on names that do not exist (backbone, engine, objective...) before a study is touched
    AutoBalance(base.replace(epochs=trial_epochs)).build(bundle)

    out.mkdir(parents=True, exist_ok=True)
    stor = open_storage(spec)
    study, created = _open_study(stor, name, sampler_obj, pruner_obj)
    settings = _settings(base, space, trial_epochs)
    if created:
        study.set_user_attr(_ATTR_SETTINGS, settings)
        for params in list(space.known_good(base) if enqueue is None else enqueue)[:n_trials]:
            study.enqueue_trial(dict(params), skip_if_exists=True)
    else:
        _check_settings(study, settings)
        # a joining worker must not replay the creator's random sequence
        study.sampler = create_sampler(sampler, (base.seed * 1_000_003 + os.getpid() * 7919
                                                 + len(study.get_trials(deepcopy=False))) % 2**31)
    _write_config(out, base)
    fail_dead_trials(study, local=spec.local, wait=True)
    worker = _worker_id()
    finished = _finished_states()

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(_ATTR_WORKER, worker)
        if _claimed_before(study, trial.number) >= n_trials:
            trial.set_user_attr(_ATTR_SURPLUS, True)
            study.stop()
            raise _SurplusTrial(f"the study already holds {n_trials} trials")
        params = space.suggest(trial, base)
        cfg = params_to_config(base, params).replace(epochs=trial_epochs)
        t0 = time.perf_counter()
        try:
            trainer, val = AutoBalance(cfg).build(bundle, callbacks=[TrialPruningCallback(trial), *trainer_callbacks])
            trainer.fit()
            metrics = trainer.evaluate(val)
        except NumericalError as e:
            trial.set_user_attr(_ATTR_ERROR, str(e).splitlines()[0])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        trial.set_user_attr("val_metrics", {k: float(getattr(metrics, k)) for k in
                                            ("accuracy", "balanced_error", "worst_class_error")
                                            if isinstance(getattr(metrics, k, None), (int, float))})
        trial.report(float(metrics.balanced_error), step=trial_epochs)
        return float(metrics.balanced_error)

    def reap(study_: optuna.Study, _trial: FrozenTrial) -> None:
        fail_dead_trials(study_, local=spec.local)

    # RUNNING counts: a worker does not start a trial that others' running trials will make surplus
    stop_at_target = optuna.study.MaxTrialsCallback(n_trials, states=(*finished, optuna.trial.TrialState.RUNNING))
    if _claimed_before(study, sys.maxsize) < n_trials:
        study.optimize(objective, timeout=timeout, callbacks=[reap, stop_at_target, *callbacks],
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


# -------------------------------------------------------------------------------------- reading a study
def best_trial(study: optuna.Study) -> FrozenTrial:
    """The complete trial of lowest validation balanced error (ties: the earliest)."""
    ts = import_optuna().trial.TrialState
    done = [t for t in study.get_trials(deepcopy=False, states=(ts.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        counts = _state_counts(study)
        raise ValueError(f"study {study.study_name!r} has no complete trial yet "
                         f"({', '.join(f'{k} {v}' for k, v in counts.items() if v) or 'no trials'}): "
                         "let `ab-plugin warmstart` finish at least one trial")
    return min(done, key=lambda t: (t.value, t.number))


def _state_counts(study: optuna.Study) -> dict[str, int]:
    ts = import_optuna().trial.TrialState
    counts = {s.name.lower(): 0 for s in (ts.COMPLETE, ts.PRUNED, ts.FAIL, ts.RUNNING, ts.WAITING)}
    counts["surplus"] = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == ts.FAIL and t.user_attrs.get(_ATTR_SURPLUS):
            counts["surplus"] += 1
        else:
            counts[t.state.name.lower()] += 1
    return counts


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    steps = sorted(t.intermediate_values)
    return {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params),
            "last_step": steps[-1] if steps else None, "seconds": t.user_attrs.get("seconds")}


def summarize_study(study: optuna.Study, *, n_trials: int | None = None, top: int = 5) -> dict[str, Any]:
    """JSON-ready summary: state counts, the best trial, the ``top`` complete trials, pruned trials."""
    ts = import_optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == ts.COMPLETE and t.value is not None),
                      key=lambda t: (t.value, t.number))
    counts = _state_counts(study)
    best = _trial_row(complete[0]) if complete else None
    return {
        "study_name": study.study_name,
        "direction": "minimize",
        "metric": "validation balanced error",
        "n_trials": n_trials,
        "finished": counts["complete"] + counts["pruned"],
        "states": counts,
        "best": best,
        "top": [_trial_row(t) for t in complete[:top]],
        "pruned": [_trial_row(t) for t in trials if t.state == ts.PRUNED],
    }


def write_study_plots(study: optuna.Study, out: str | Path) -> tuple[list[Path], dict[str, str]]:
    """Optuna's optimisation history, intermediate values and parameter importances as PNG files in ``out``.

    Returns the written paths and ``{plot: reason}`` for the plots skipped (importances need at least two
    complete trials whose parameters vary).
    """
    optuna = import_optuna()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    out = Path(out)
    ts = optuna.trial.TrialState
    complete = [t for t in study.get_trials(deepcopy=False, states=(ts.COMPLETE,)) if t.value is not None]
    varied = len({t.value for t in complete}) > 1 and any(
        len({json.dumps(u.params.get(k)) for u in complete}) > 1 for t in complete for k in t.params)
    has_curves = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    plan: list[tuple[str, str, Callable[[], Any] | None]] = [
        ("history", PLOT_HISTORY, (lambda: vis.plot_optimization_history(study)) if complete else None),
        ("intermediate", PLOT_INTERMEDIATE, (lambda: vis.plot_intermediate_values(study)) if has_curves else None),
        ("importances", PLOT_IMPORTANCES,
         (lambda: vis.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)))
         if len(complete) >= 2 and varied else None),
    ]
    reasons = {"history": "no complete trial", "intermediate": "no reported values",
               "importances": "needs at least 2 complete trials whose parameters and values vary"}
    written, skipped = [], {}
    for key, name, make in plan:
        if make is None:
            skipped[key] = reasons[key]
            continue
        try:
            # rc_context: optuna switches pyplot to its ggplot style; other plots of the process keep theirs
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")  # optuna's matplotlib backend is marked experimental
                ax = make()
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                atomic_write(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=110,
                                                                        bbox_inches="tight"))
            plt.close(fig)
            written.append(out / name)
        except Exception as e:  # a plot never costs the study's result
            skipped[key] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            plt.close("all")
    return written, skipped


def _read_summary(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def load_warmstart_study(spec: str | Path, *, storage: str | None = None, study_name: str | None = None
                         ) -> optuna.Study:
    """Load a study from a warmstart run folder (``study.db`` / ``study.journal`` inside) or by name from
    ``storage``. Errors name the fix (study not found, no storage given, several studies in one file)."""
    optuna = import_optuna()
    folder = Path(spec)
    if folder.is_dir():
        if (folder / STUDY_DB).exists():
            sspec = resolve_storage("sqlite", folder)
        elif (folder / STUDY_JOURNAL).exists():
            sspec = resolve_storage("journal", folder)
        elif storage is not None:
            sspec = resolve_storage(storage, folder)
        else:
            raise ValueError(f"{folder} holds no study ({STUDY_DB} or {STUDY_JOURNAL}): pass a warmstart run folder, "
                             "or a study name together with its storage URL")
        name = study_name or _read_summary(folder).get("study_name")
    else:
        if storage is None or storage in ("sqlite", "journal"):
            raise ValueError(f"--warmstart {str(spec)!r} is neither a number of trials nor a warmstart run folder: "
                             "pass N, a folder made by `ab-plugin warmstart`, or a study name with its --storage URL")
        sspec = resolve_storage(storage, Path.cwd())
        name = study_name or str(spec)
    stor = open_storage(sspec)
    names = _study_names(stor)
    if name is None:
        if len(names) != 1:
            raise ValueError(f"{sspec.display} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                             "name the one to use")
        name = names[0]
    if name not in names:
        raise ValueError(f"study {name!r} not found in {sspec.display}: choose one of "
                         f"{', '.join(names) or '(none: run `ab-plugin warmstart` first)'}")
    return optuna.load_study(study_name=name, storage=stor)


def warmstart_config(base: Config, spec: str, *, storage: str | None, out: Path,
                     callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
                     bundle: DatasetBundle | None = None) -> Config:
    """``base`` updated with the best warm-start trial's settings (``init``, ``tau``/``gamma``, ``upper_lr``,
    ``val_fraction``...), for ``ab-plugin search --warmstart SPEC``.

    ``spec``: an integer N runs (or resumes) an N-trial study in ``out/warmstart`` first, with the proxy
    length :func:`default_trial_epochs` of ``base.epochs``; a warmstart run folder (holding ``study.db``
    or ``study.journal``); or a study name in ``storage`` (a database URL).
    """
    s = str(spec).strip()
    if s.isdigit() or (s.startswith("-") and s[1:].isdigit()):
        n = int(s)
        if n < 1:
            raise ValueError(f"--warmstart N needs N >= 1 trials, got {n}")
        result = run_warmstart(base, Path(out) / "warmstart", n_trials=n, storage=storage,
                               study_name=f"{Path(out).resolve().name}-warmstart", callbacks=callbacks, bundle=bundle)
        study = result.study
    else:
        study = load_warmstart_study(s, storage=storage)
    return params_to_config(base, best_trial(study).params)


# -------------------------------------------------------------------------------------------------- CLI
@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    optuna = import_optuna()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _fmt_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in params.items()}


def _render(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    keys = ["init", "tau", "gamma", "upper_lr", "val_fraction"]
    keys += sorted({k for r in summary["top"] for k in r["params"]} - set(keys))
    table = Table(title=f"warm start {summary['study_name']!r}: best trials (validation balanced error)")
    for col in ("#", "val error", *keys, "epochs", "seconds"):
        table.add_column(col, justify="left" if col in ("init",) else "right")
    for r in summary["top"]:
        p = _fmt_params(r["params"])
        table.add_row(str(r["number"]), f"{100 * r['value']:.2f}%", *[p.get(k, "-") for k in keys],
                      str(r["last_step"] or "-"), f"{r['seconds']:.1f}" if r["seconds"] is not None else "-")
    console.print(table)
    states = Table(title="trials by state")
    shown = {k: v for k, v in summary["states"].items() if v or k in ("complete", "pruned")}
    for k in shown:
        states.add_column(k, justify="right")
    states.add_row(*[str(v) for v in shown.values()])
    console.print(states)
    if summary.get("best"):
        b = summary["best"]
        console.print(f"best: trial [bold]{b['number']}[/] {100 * b['value']:.2f}% with "
                      + ", ".join(f"{k}={v}" for k, v in _fmt_params(b["params"]).items()))
    console.print(f"study {summary['study_name']!r} in [bold]{summary['storage']}[/]; "
                  f"plots: {', '.join(summary.get('plots') or []) or 'none'}")
    console.print(f"next: [bold]ab-plugin search --warmstart {summary['out']}[/] (refines from the best trial)")


@click.command(name="warmstart", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--out", type=click.Path(file_okay=False), default="runs/warmstart", show_default=True,
              help="run folder (config.yaml, study.db / study.journal, warmstart.json, plots)")
@click.option("--n-trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="total finished (complete + pruned) trials of the study, over all workers")
@click.option("--study-name", default=None, help="study name shared by all workers [default: the --out folder's name]")
@click.option("--storage", default="sqlite", show_default=True,
              help="sqlite (OUT/study.db), journal (OUT/study.journal) or a database URL "
                   "(postgresql://user:pw@host:5432/db) for workers on several machines")
@click.option("--pruner", default="median", show_default=True,
              help="median | hyperband | percentile:P | threshold:X | none")
@click.option("--pruner-startup", type=click.IntRange(min=0), default=5, show_default=True,
              help="trials completed before the median / percentile pruner prunes")
@click.option("--sampler", type=click.Choice(["tpe", "random"]), default="tpe", show_default=True,
              help="Optuna sampler, seeded with --seed")
@click.option("--trial-epochs", type=click.IntRange(min=1), default=None,
              help="epochs of each proxy search [default: --epochs / 6, at least 2]")
@click.option("--inits", default="la,cdt,vs", show_default=True,
              help="initialisation families searched (comma list of neutral, la, cdt, vs)")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop this worker after SECONDS (the study stays resumable)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="table: rich output; json: one JSON document on stdout for scripts")
@click.option("--debug", is_flag=True, help="show the full traceback on errors")
@_config_options
def warmstart_command(out: str, n_trials: int, study_name: str | None, storage: str, pruner: str, pruner_startup: int,
                      sampler: str, trial_epochs: int | None, inits: str, timeout: float | None, quiet: bool,
                      fmt: str, debug: bool, **kwargs: Any) -> None:
    """Optuna warm start: a coarse study over the init family and strength (LA τ, CDT γ, VS), the upper
    learning rate and the validation fraction; each trial a short proxy search, pruned early when its
    validation balanced error lags. Rerunning the same command continues the study.

    \b
    Examples:
      ab-plugin warmstart --backbone resnet20 --epochs 30 --n-trials 20 --out runs/ws
      ab-plugin search --warmstart runs/ws --epochs 30 --out runs/demo   # refine from the best trial
      ab-plugin search --warmstart 20 --out runs/demo                      # both in one go
    \b
    Workers (each runs the same command; --n-trials is the study's total):
      for i in 1 2 3 4; do ab-plugin warmstart --out runs/ws --n-trials 40 --quiet & done; wait
      ab-plugin warmstart --storage journal --out runs/ws ...              # journal file, same machine
      ab-plugin warmstart --study-name ws --storage postgresql://ab:pw@db:5432/optuna --out runs/ws ...
    """
    try:
        cfg = _resolve_config(kwargs)
        space = SearchSpace(inits=tuple(s.strip().lower() for s in inits.split(",") if s.strip()))
        space.validate()
        resolve_storage(storage, Path(out))  # bad --storage fails before any data is loaded
        create_pruner(pruner, max_resource=1)
        result = _run_with_progress(cfg, Path(out), enabled=fmt == "table" and not quiet, n_trials=n_trials,
                                    study_name=study_name, storage=storage, pruner=pruner,
                                    pruner_startup=pruner_startup, sampler=sampler, trial_epochs=trial_epochs,
                                    space=space, timeout=timeout)
    except KeyboardInterrupt:
        click.echo("stopped: finished trials are in the study; rerun the same command to continue", err=True)
        sys.exit(130)
    except Exception as e:
        if debug or not _is_user_error(e):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        click.echo(f"error: {msg}", err=True)
        sys.exit(2)
    if fmt == "json":
        click.echo(json.dumps(result.summary, indent=2))
    else:
        _render(result.summary)


def _is_user_error(e: BaseException) -> bool:
    """Errors shown as one line (bad input, storage and database problems); anything else is a bug: traceback."""
    if isinstance(e, (ValueError, FileNotFoundError, RuntimeError, OSError, ImportError)):
        return True
    return type(e).__module__.split(".")[0] in ("optuna", "sqlalchemy")


def _run_with_progress(cfg: Config, out: Path, *, enabled: bool, n_trials: int, **kwargs: Any) -> WarmstartResult:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                        disable=not enabled)
    task = progress.add_task("warm start", total=n_trials, info="")
    finished = _finished_states()

    def update(study: optuna.Study, trial: FrozenTrial) -> None:
        done = study.get_trials(deepcopy=False, states=finished)
        complete = [t for t in done if t.state == finished[0] and t.value is not None]
        info = f"trial {trial.number} {trial.state.name.lower()}"
        if complete:
            b = min(complete, key=lambda t: t.value)
            info += f" · best {100 * b.value:.1f}% (#{b.number})"
        info += f" · pruned {sum(t.state == finished[1] for t in done)}"
        progress.update(task, completed=min(n_trials, len(done)), info=info)

    with progress, _quiet_optuna():
        return run_warmstart(cfg, out, n_trials=n_trials, callbacks=[update], **kwargs)


if __name__ == "__main__":
    warmstart_command()
