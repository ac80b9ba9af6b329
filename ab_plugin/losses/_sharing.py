"""How per-class hyperparameters are shared: a basis ``D ∈ R^{C×k}`` with ``value = D @ raw``.

Per class is the identity basis; frequency groups and frequency dictionaries let 1000+ classes be
tuned with a handful of numbers (the paper's ``l = D_π l'``, ``Δ' = D_π δ'``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .._registry import Registry
from ._functional import Counts, _as_counts

Link = Callable[[torch.Tensor], torch.Tensor]


def expand_basis(basis: torch.Tensor | None, raw: torch.Tensor) -> torch.Tensor:
    """``D @ raw``: raw ``[k]`` or ``[k, n]`` -> per-class ``[C]`` or ``[C, n]``; ``basis=None`` is the identity."""
    return raw.clone() if basis is None else basis.to(raw.dtype) @ raw


def fit_basis(basis: torch.Tensor | None, values: torch.Tensor, link: Link | None = None,
        inverse: Link | None = None) -> torch.Tensor:
    """Raw ``[k]`` (or ``[k, n]``) whose expansion is closest (least squares) to per-class ``values``
    ``[C]`` (or ``[C, n]``); ``basis=None`` is the identity (exact).

    With ``inverse`` (e.g. ``logit``) the fit is made in the inverse's space; adding its ``link`` (e.g.
    ``sigmoid``) refines it in value space, where values near the link's saturation (CDT's Δ = 1 for the
    head class) no longer dominate the fit.
    """
    target = inverse(values) if inverse is not None else values
    if basis is None:
        return target.clone()
    if values.numel() == 0:
        return torch.zeros((basis.shape[1], *values.shape[1:]), dtype=values.dtype, device=values.device)
    rhs = target.double().reshape(basis.shape[0], -1).cpu()
    sol = torch.linalg.lstsq(basis.double().cpu(), rhs, driver="gelsd").solution
    raw = sol.reshape((basis.shape[1], *values.shape[1:])).to(dtype=values.dtype, device=values.device)
    if link is None:
        return raw
    raw.requires_grad_(True)
    opt = torch.optim.LBFGS([raw], max_iter=100, line_search_fn="strong_wolfe")
    d = basis.to(raw)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        err = ((link(d @ raw) - values) ** 2).sum()
        err.backward()
        return err

    with torch.enable_grad():
        opt.step(closure)
    return raw.detach()


class Sharing:
    """A fixed basis ``D`` ``[C, k]``; ``expand(raw[k]) -> [C]`` and the least-squares inverse ``fit``."""

    def __init__(self, basis: torch.Tensor, kind: str = "custom") -> None:
        if basis.ndim != 2 or basis.shape[1] > basis.shape[0] or basis.shape[1] == 0:
            raise ValueError(f"sharing basis must be [C, k] with 1 <= k <= C, got {tuple(basis.shape)}")
        self.basis = basis.float()
        self.kind = kind

    @property
    def num_classes(self) -> int:
        return self.basis.shape[0]

    @property
    def size(self) -> int:
        """Number of free values ``k`` per hyperparameter."""
        return self.basis.shape[1]

    @property
    def is_identity(self) -> bool:
        """One value per class (:func:`per_class`): ``expand`` and ``fit`` skip the ``C x C`` products."""
        return False

    def expand(self, raw: torch.Tensor) -> torch.Tensor:
        """``[k]`` raw values -> ``[C]`` per-class values."""
        return expand_basis(None if self.is_identity else self.basis, raw)

    def fit(self, values: torch.Tensor, link: Link | None = None, inverse: Link | None = None) -> torch.Tensor:
        """Raw ``[k]`` closest to per-class ``values`` ``[C]`` (see :func:`fit_basis`)."""
        values = torch.as_tensor(values).reshape(-1).float()
        if values.numel() != self.num_classes:
            raise ValueError(f"got {values.numel()} values for a sharing basis of {self.num_classes} classes")
        return fit_basis(None if self.is_identity else self.basis, values, link, inverse)

    def __repr__(self) -> str:
        return f"Sharing(kind={self.kind!r}, classes={self.num_classes}, size={self.size})"


class _PerClass(Sharing):
    """The identity basis, built only when ``basis`` is read: at 8142 classes the dense matrix is
    265 MB, and expanding or fitting through it would cost a C x C product."""

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"per-class sharing needs at least one class, got {num_classes}")
        self._num_classes = num_classes
        self.kind = "per_class"

    @property
    def basis(self) -> torch.Tensor:  # type: ignore[override]
        return torch.eye(self._num_classes)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def size(self) -> int:
        return self._num_classes

    @property
    def is_identity(self) -> bool:
        return True


def per_class(num_classes: int) -> Sharing:
    return _PerClass(num_classes)


def frequency_groups(counts: Counts, num_groups: int) -> Sharing:
    """Classes sorted by count, cut into ``num_groups`` consecutive groups sharing one value each."""
    c = _as_counts(counts)
    num_groups = max(1, min(int(num_groups), c.numel()))
    order = torch.argsort(c, descending=True, stable=True)
    basis = torch.zeros(c.numel(), num_groups)
    for g, chunk in enumerate(torch.tensor_split(order, num_groups)):
        basis[chunk, g] = 1.0
    return Sharing(basis, "groups")


def frequency_dictionary(counts: Counts, size: int = 3, kind: str = "poly") -> Sharing:
    """A small dictionary of features of ``log π_j``.

    ``kind="poly"``: ``[1, u, u², …]`` with ``u`` the log frequency standardised to [-1, 1];
    ``kind="hat"``: piecewise-linear hat functions on ``u`` with ``size`` evenly spaced knots
    (a partition of unity, so constants are representable).
    """
    c = _as_counts(counts)
    if bool((c == c[0]).all()) and c.numel() > 1:
        warnings.warn("all classes have the same count, so a frequency dictionary gives every class the same "
                      "value: use sharing 'per_class' to tune classes separately", UserWarning, stacklevel=3)
    lp = torch.log(c / c.sum())
    span = (lp.max() - lp.min()).clamp_min(1e-12)
    u = (2.0 * (lp - lp.min()) / span - 1.0).float()
    size = max(1, min(int(size), c.numel()))
    if kind == "poly":
        basis = torch.stack([u**p for p in range(size)], dim=1)
    elif kind == "hat":
        if size == 1:
            basis = torch.ones(c.numel(), 1)
        else:
            knots = torch.linspace(-1.0, 1.0, size)
            width = 2.0 / (size - 1)
            basis = (1.0 - (u[:, None] - knots[None, :]).abs() / width).clamp_min(0.0)
    else:
        raise ValueError(f"unknown dictionary kind {kind!r}: use 'poly' or 'hat'")
    return Sharing(basis, f"dictionary-{kind}")


SHARINGS: Registry[Sharing] = Registry("sharing")
SHARINGS.register("per_class", lambda counts, size: per_class(len(_as_counts(counts))))
SHARINGS.register("groups", frequency_groups)
SHARINGS.register("poly", lambda counts, size: frequency_dictionary(counts, size, "poly"))
SHARINGS.register("hat", lambda counts, size: frequency_dictionary(counts, size, "hat"))


def create_sharing(spec: str, counts: Counts) -> Sharing:
    """Parse a sharing spec: ``per_class``, ``groups:K``, ``poly:K`` or ``hat:K`` (``K`` >= 1, default 3)."""
    name, arg = SHARINGS.split(spec)
    try:
        k = int(arg) if arg else 3
    except ValueError:
        raise ValueError(f"bad sharing spec {spec!r}: the size after ':' must be an integer") from None
    if k < 1:
        raise ValueError(f"bad sharing spec {spec!r}: the size after ':' must be >= 1 (e.g. {name}:3)")
    if name == "per_class" and arg:
        raise ValueError(f"bad sharing spec {spec!r}: per_class takes no size (every class has its own value)")
    return SHARINGS.create(name, counts, k)


def list_sharings() -> list[str]:
    """Sharing names; all but ``per_class`` take a size ``:K``."""
    return SHARINGS.names()
