"""Where a study lives: ``--storage`` strings resolved to a URL or file, and opening it with retries.

- ``sqlite`` (default): ``OUT/study.db``, for one or several processes on one machine;
- ``journal``: Optuna's journal file ``OUT/study.journal``, the same use, friendlier to network file systems;
- ``postgresql://user:password@host:5432/db`` (or ``mysql+pymysql://...``): a database server, for workers on
  several machines (needs ``psycopg2-binary`` / ``pymysql``).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._names import STUDY_DB, STUDY_JOURNAL
from ._optuna import import_optuna

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

_SERVER_BACKENDS = ("postgresql", "mysql", "mariadb")
#: Server storages: seconds between a worker's heartbeats, and without one before its trial is failed.
_HEARTBEAT_S, _GRACE_S = 30, 120
#: Drivers SQLAlchemy can use per backend, its default first (SQLAlchemy 2.1 defaults PostgreSQL to psycopg 3).
_DRIVERS = {"postgresql": ("psycopg", "psycopg2", "pg8000"), "mysql": ("mysqldb", "pymysql", "mysqlconnector"),
            "mariadb": ("mysqldb", "pymysql", "mysqlconnector")}
_DRIVER_MODULES = {"psycopg": "psycopg", "psycopg2": "psycopg2", "pg8000": "pg8000", "mysqldb": "MySQLdb",
                   "pymysql": "pymysql", "mysqlconnector": "mysql.connector"}


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
        return _resolve_url(s)
    if s.endswith((".db", ".sqlite", ".sqlite3")):
        path = _in_existing_folder(Path(s).expanduser().resolve())
        return StorageSpec("sqlite", f"sqlite:///{path}", str(path))
    if s.endswith((".journal", ".log")):
        path = _in_existing_folder(Path(s).expanduser().resolve())
        return StorageSpec("journal", str(path), str(path))
    raise ValueError(f"unknown --storage {s!r}: use sqlite (default, OUT/{STUDY_DB}), journal (OUT/{STUDY_JOURNAL}) "
                     "or a database URL such as postgresql://user:password@host:5432/db")


def _in_existing_folder(path: Path) -> Path:
    """A study file the user named goes only into a folder that exists (a typo must not create folders)."""
    if not path.parent.is_dir():
        raise ValueError(f"--storage {path}: folder {path.parent} does not exist: create it first, or use the "
                         "default storage in --out")
    return path


def _resolve_url(s: str) -> StorageSpec:
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
        if url.database != ":memory:":
            _in_existing_folder(Path(url.database).expanduser().resolve())
        return StorageSpec("sqlite", s, display)
    if backend not in _SERVER_BACKENDS:
        raise ValueError(f"unsupported --storage backend {backend!r} in {display}: use postgresql://, "
                         "mysql+pymysql:// or sqlite:///")
    if not url.host or not url.database:
        raise ValueError(f"--storage {display} needs a host and a database: dialect://user:password@host:port/db")
    url = _installed_driver(url)
    return StorageSpec("server", url.render_as_string(hide_password=False), url.render_as_string(hide_password=True))


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
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(spec.target))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"--storage {spec.display}: the journal file is damaged ({_journal_damage(spec.target, e)}"
                             "): restore it from a copy, or move it away to start the study anew") from None
    import sqlalchemy.exc

    try:
        return _connect_with_retries(spec)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise ValueError(f"--storage {spec.display}: its database driver is not installed ({e}): "
                         "pip install psycopg2-binary or 'psycopg[binary]' (postgresql://), pymysql (mysql://)"
                         ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot open --storage {spec.display} ({type(e).__name__}: {first}): check that the "
                         "server is up, the database exists and the URL's user and password") from None


def _journal_damage(path: str, error: Exception) -> str:
    """Where a journal file stops being Optuna's JSON lines: its first line that is not a JSON object."""
    import json

    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                return f"line {n} is not a journal entry: {line[:40]!r}"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else 'no details'}"


def _connect(spec: StorageSpec) -> BaseStorage:
    optuna = import_optuna()
    if spec.kind == "sqlite":
        db = spec.target.split(":///", 1)[1] if ":///" in spec.target else ""
        engine_kwargs = {"connect_args": {"timeout": 60}}
        if db and db != ":memory:":
            from ._sqlite import SQLiteStorage

            Path(db).parent.mkdir(parents=True, exist_ok=True)
            return SQLiteStorage(spec.target, db, engine_kwargs=engine_kwargs)
        return optuna.storages.RDBStorage(spec.target, engine_kwargs=engine_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: stable in practice
        return optuna.storages.RDBStorage(spec.target, engine_kwargs={"pool_pre_ping": True},
                                          heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S)


def _connect_with_retries(spec: StorageSpec, attempts: int = 6) -> BaseStorage:
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return _connect(spec)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as e:
            # workers starting together race to create the tables (a duplicate alembic_version row, an
            # existing table, a locked file): the next attempt finds them made
            text = str(e).lower()
            racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in text or "locked" in text
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + 0.1 * (os.getpid() % 7) / 7)
    raise AssertionError("unreachable")


def study_names(storage: BaseStorage) -> list[str]:
    """Names of the studies in ``storage``, sorted."""
    return sorted(s.study_name for s in storage.get_all_studies())
