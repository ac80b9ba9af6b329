"""Optional framework imports with a clear install hint (optuna's ``try_import`` pattern).

Usage::

    with try_import("lightning", extra="lightning") as _lightning:
        import lightning.pytorch as pl

    class MyCallback(pl.Callback if _lightning.is_successful() else object):
        def __init__(self) -> None:
            _lightning.check()  # ImportError: install lightning: pip install 'ab-plugin[lightning]'

The import error is deferred: importing the module that contains the ``with`` block always works, and
the error (with the hint) is raised only when the optional feature is actually used.
"""

from __future__ import annotations

from types import TracebackType

__all__ = ["OptionalImport", "install_hint", "try_import"]


def install_hint(package: str, extra: str | None = None) -> str:
    """``"install lightning: pip install 'ab-plugin[lightning]'"`` (or ``pip install timm`` without an extra)."""
    how = f"pip install 'ab-plugin[{extra}]'" if extra else f"pip install {package}"
    return f"install {package}: {how}"


class OptionalImport:
    """Context manager that swallows ``ImportError`` and re-raises it, with a hint, on :meth:`check`."""

    def __init__(self, package: str, extra: str | None = None) -> None:
        self.package, self.extra = package, extra
        self._error: BaseException | None = None

    def __enter__(self) -> OptionalImport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is not None and isinstance(exc, ImportError):
            self._error = exc
            return True
        return False

    @property
    def message(self) -> str:
        return f"{install_hint(self.package, self.extra)} (import failed: {self._error})"

    def is_successful(self) -> bool:
        """Whether every import in the ``with`` block worked."""
        return self._error is None

    def check(self) -> None:
        """Raise ``ImportError`` with the install hint if an import failed."""
        if self._error is not None:
            raise ImportError(self.message) from self._error


def try_import(package: str, extra: str | None = None) -> OptionalImport:
    """``with try_import("lightning", extra="lightning") as imp: import lightning.pytorch as pl``."""
    return OptionalImport(package, extra)
