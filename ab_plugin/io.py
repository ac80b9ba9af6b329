"""Atomic file writes and safe loads: a crash never leaves a half-written result or checkpoint."""

from __future__ import annotations

import errno
import hashlib
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


#: A checkpoint is a plain ``torch.save`` zip archive whose zip comment holds the SHA-256 of every byte before
#: the comment's length field: ``torch.load`` reads it as usual, :func:`load_checkpoint` verifies it first.
_SHA_TAG = b"ab-plugin sha256 "
_TAG_LEN = len(_SHA_TAG) + 64
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes, the last 2 the comment length


def _sha256_of(f: Any, n: int) -> str:
    """SHA-256 of the first ``n`` bytes of the readable binary file ``f`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    f.seek(0)
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            break
        h.update(chunk)
        n -= len(chunk)
    return h.hexdigest()


def _write_checksummed(f: Any, state: dict) -> None:
    torch.save(state, f)
    f.flush()
    end = f.seek(0, os.SEEK_END)
    f.seek(end - 22)
    eocd = f.read(22)
    if end < 22 or eocd[:4] != _EOCD or eocd[20:] != b"\0\0":
        raise RuntimeError("torch.save wrote an archive without a plain zip end record: cannot checksum it")
    digest = _sha256_of(f, end - 2)
    f.seek(end - 2)
    f.write(_TAG_LEN.to_bytes(2, "little") + _SHA_TAG + digest.encode())


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically with ``torch.save``, its SHA-256 in the archive's zip comment (see
    :func:`load_checkpoint`); the file stays an ordinary ``torch.load``-able checkpoint."""
    atomic_write(path, lambda f: _write_checksummed(f, state), mode="w+b")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the fix."""


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` holds exactly the bytes :func:`save_checkpoint` wrote."""
    fix = "delete it to restart that stage from its first epoch (or restore it from a copy)"
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            tail_at = end - _TAG_LEN - 2
            if tail_at < 20:
                raise CheckpointError(f"checkpoint {path} is damaged (too short to be one): {fix}")
            f.seek(tail_at)
            tail = f.read()
            if tail[:2] != _TAG_LEN.to_bytes(2, "little") or not tail[2:].startswith(_SHA_TAG):
                raise CheckpointError(f"checkpoint {path} is damaged or was not written by ab-plugin (it has no "
                                      f"checksum): {fix}")
            if _sha256_of(f, tail_at) != tail[2 + len(_SHA_TAG):].decode("ascii", "replace"):
                raise CheckpointError(f"checkpoint {path} is damaged (its SHA-256 checksum does not match what "
                                      f"was written): {fix}")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found: check the run folder") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a folder, not a file: {fix}") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Verify the checksum written by :func:`save_checkpoint`, then load with ``weights_only=True``: a
    checkpoint is data, never code."""
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # foreign files raise many different errors
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}): delete it to restart that stage from its "
            "first epoch"
        ) from None
