"""The search space: the coarse knobs gradients do not reach, how a trial samples them, and how a trial's
parameters become a :class:`~ab_plugin.config.Config`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Config
from ._optuna import import_optuna

if TYPE_CHECKING:
    import optuna
    from optuna.samplers import BaseSampler

#: Initialisation families of the AutoBalance loss and the strength parameters each one uses.
INIT_FAMILIES: dict[str, tuple[str, ...]] = {"neutral": (), "la": ("tau",), "cdt": ("gamma",), "vs": ("tau", "gamma")}


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

    def validate(self) -> None:
        bad = [i for i in self.inits if i not in INIT_FAMILIES]
        if not self.inits or bad:
            raise ValueError(f"unknown --inits {','.join(bad) or '(empty)'}: choose from {', '.join(INIT_FAMILIES)}")
        for name in ("tau", "gamma", "upper_lr", "val_fraction"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"search range of {name} must be finite with low < high, got ({lo}, {hi})")
        if self.upper_lr[0] <= 0:
            raise ValueError(f"upper_lr is searched on a log scale: its range must start above 0, got {self.upper_lr}")
        if not (0 < self.val_fraction[0] and self.val_fraction[1] < 1):
            raise ValueError(f"the val_fraction range must lie inside (0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one point; returns ``trial.params`` (names are :class:`Config` fields)."""
        init = trial.suggest_categorical("init", list(self.inits))
        uses = INIT_FAMILIES[str(init)]
        if "tau" in uses:
            trial.suggest_float("tau", *self.tau)
        if "gamma" in uses:
            trial.suggest_float("gamma", *self.gamma)
        trial.suggest_float("upper_lr", *self.upper_lr, log=True)
        trial.suggest_float("val_fraction", *self.val_fraction)
        return dict(trial.params)

    def known_good(self, base: Config) -> list[dict[str, Any]]:
        """Points enqueued when a study is created: LA τ = 1 (the logit-adjustment default) first, then VS
        (τ = 1, γ = 0.2) and CDT (γ = 0.2) where those families are searched; the base config's upper learning
        rate and validation fraction (clipped into their ranges)."""

        def clip(v: float, lo_hi: tuple[float, float]) -> float:
            return float(min(max(v, lo_hi[0]), lo_hi[1]))

        common = {"upper_lr": clip(base.upper_lr, self.upper_lr),
                  "val_fraction": clip(base.val_fraction, self.val_fraction)}
        points = []
        for init, extra in (("la", {"tau": 1.0}), ("vs", {"tau": 1.0, "gamma": 0.2}), ("cdt", {"gamma": 0.2})):
            if init in self.inits:
                points.append({"init": init, **{k: clip(v, getattr(self, k)) for k, v in extra.items()}, **common})
        return points


def create_sampler(name: str, seed: int) -> BaseSampler:
    """``tpe`` (default; ``TPESampler(seed=seed)``) or ``random``."""
    optuna = import_optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown --sampler {name!r}: choose tpe or random")


def params_to_config(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with a trial's parameters (``init``, ``tau``, ``gamma``, ``upper_lr``, ``val_fraction``)."""
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
