"""One registry idiom for every named family (losses, engines, objectives, sharings, datasets, ...).

A :class:`Registry` maps names to factories; ``create`` builds one, ``names`` lists them (what
``Config.validate`` and the CLI's choices read), and an unknown name is a one-line ``ValueError``
that lists the valid ones. Specs with an argument (``"poly:3"``, ``"imagefolder:/data"``) are split
by :meth:`Registry.split`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Named factories of one kind, in registration order.

    >>> engines = Registry("hypergradient engine")
    >>> @engines.register("head")
    ... def make_head(**options): ...
    >>> engines.names()
    ['head']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    @overload
    def register(self, name: str) -> Callable[[F], F]: ...
    @overload
    def register(self, name: str, factory: F) -> F: ...

    def register(self, name: str, factory: Callable[..., T] | None = None) -> Any:
        """Register ``factory`` under ``name`` (as a decorator when ``factory`` is omitted)."""

        def add(fn: F) -> F:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = fn
            return fn

        return add if factory is None else add(factory)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; unknown names raise a one-line ``ValueError``."""
        try:
            return self._factories[name]
        except (KeyError, TypeError):
            valid = ", ".join(map(repr, self._factories))
            raise ValueError(f"unknown {self.kind} {name!r}: choose from {valid}") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return list(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def split(self, spec: str) -> tuple[str, str | None]:
        """``"name:arg"`` -> ``(name, arg)``; ``"name"`` -> ``(name, None)``; the name must be registered."""
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"a {self.kind} must be a name such as {self.names()[0]!r}, got {spec!r}")
        name, sep, arg = spec.partition(":")
        self.get(name)
        return name, (arg if sep else None)
