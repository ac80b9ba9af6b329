"""Zoo of exported policy files: ``policies/zoo/<dataset>_<imbalance>_<backbone>.json``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ZOO_ENV", "zoo_dir", "zoo_path", "list_zoo"]

ZOO_ENV = "AB_PLUGIN_ZOO"
"""Environment variable that overrides the zoo folder."""

_PACKAGED = Path(__file__).resolve().parent / "zoo"


def zoo_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The zoo folder: ``override``, else ``$AB_PLUGIN_ZOO``, else the packaged ``ab_plugin/policies/zoo``."""
    if override is not None:
        return Path(override)
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env)
    return _PACKAGED


def zoo_path(name: str, override: str | os.PathLike[str] | None = None) -> Path:
    """Path of zoo entry ``name`` (``"<dataset>_<imbalance>_<backbone>"``, no ``.json``); may not exist."""
    return zoo_dir(override) / f"{name}.json"


def list_zoo(override: str | os.PathLike[str] | None = None) -> list[str]:
    """Sorted names of the zoo entries (file stems of ``*.json``); ``[]`` for an empty or missing folder."""
    d = zoo_dir(override)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if p.is_file() and not p.name.startswith("."))
