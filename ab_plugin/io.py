"""Atomic file writes and safe loads: a crash never leaves a half-written result or checkpoint."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb",
                 encoding: str | None = None) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename over ``path``.

    The file gets the permissions ``open()`` would give it (0666 less the umask). A full disk is an
    ``OSError`` naming the file, whatever the writer raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, Exception) and _disk_full(path.parent):
            raise OSError(errno.ENOSPC, f"no space left to write {path}: free some disk space, then run again "
                                        "(with --resume for a run)") from None
        raise


def _disk_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has (almost) no room left: torch's writer reports a full
    disk as an unrelated-looking RuntimeError, so the cause is checked directly."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, allow_nan=True), mode="w")


def write_jsonl(path: str | os.PathLike, rows: list[Any]) -> None:
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows)), mode="w")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (a torn last line is tolerated by `read_jsonl`)."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the fix."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``: a checkpoint is data, never code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found: check the run folder") from None
    except Exception as e:  # truncated or foreign files raise many different errors
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}): delete it to restart that stage from its "
            "first epoch"
        ) from None
