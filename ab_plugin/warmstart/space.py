"""The search space: the coarse knobs gradients do not reach, how a trial samples them, and how a trial's
parameters become a :class:`~ab_plugin.config.Config`.

:class:`SearchSpace` holds the loss's init family and strength, the upper learning rate and the validation
fraction; with ``--recipe-knobs`` its :class:`RecipeSpace` adds the training recipe (weight decay, mixup, the
DRW point, stage 2). Every parameter a trial holds is named after its :class:`Config` field, so
:func:`params_to_config` is a plain replace.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Config
from ._optuna import import_optuna

if TYPE_CHECKING:
    import optuna
    from optuna.samplers import BaseSampler

#: Initialisation families of the AutoBalance loss and the strength parameters each one uses.
INIT_FAMILIES: dict[str, tuple[str, ...]] = {"neutral": (), "la": ("tau",), "cdt": ("gamma",), "vs": ("tau", "gamma")}

#: Stage-2 values a proxy trial can score. ``tau-norm`` is left out: it chooses its τ on the very validation
#: split the trial is scored on, so its score would flatter it. ``auto`` is the choice ``--stage2 auto`` makes
#: for the base's search (``search`` where its features allow the exact search, else ``none``).
PROXY_STAGE2 = ("auto", "none", "crt", "wb", "search")

#: Slack of the comparisons between a DRW fraction and a proxy epoch's start ``e / trial_epochs`` (0.7 * 10 is
#: 7.000000000000001 in floating point, yet epoch 7 of 10 starts DRW at 0.7).
_EPS = 1e-9


def _check_range(name: str, lo_hi: tuple[float, float]) -> None:
    lo, hi = lo_hi
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"search range of {name} must be finite with low < high, got ({lo}, {hi})")


def _clip(v: float, lo_hi: tuple[float, float]) -> float:
    return float(min(max(v, lo_hi[0]), lo_hi[1]))


def can_mix(base: Config) -> bool:
    """Whether a search of ``base`` may train on mixup batches: only an engine that works on the features the
    loop captured (``head``) sees the mix a batch was trained on; the others re-run the model on fresh draws,
    and the trainer refuses mixing with them."""
    from ..hypergrad import create_engine, uses_features

    return uses_features(create_engine(base.engine, **base.engine_options))


@dataclass(frozen=True)
class RecipeSpace:
    """The training recipe's knobs (``--recipe-knobs``): they shape the lower level, so no hypergradient of α
    reaches them. Ranges are ``(low, high)``.

    - ``weight_decay``: the lower SGD's L2 coefficient, sampled on a log scale.
    - ``mixup``: mixup's α, linear, 0 (off) included. A float range rather than an on/off switch plus α:
      ``λ ~ Beta(α, α)`` piles up at 0 and 1 as α → 0, so a small α trains on nearly unmixed images and "off"
      is the end of the range, not a separate state; one parameter lets TPE model every trial, where a switch
      would split the trials between two parameters. Sampled only when the base's engine can mix
      (:func:`can_mix`); otherwise the base's value stays.
    - ``drw_from``: the DRW point, a fraction of the epochs, sampled as a categorical of off (``None``) and the
      proxy's epoch starts ``e / trial_epochs`` inside the range: the loss switches its weights on at whole
      epochs, so these are the only points a proxy tells apart, and the fraction a study hands on is the one
      its trial ran (a fraction scales with the run's epochs).
    - ``stage2``: the choices, among :data:`PROXY_STAGE2` (``auto``: the base's search's own, so the default
      recipe is always one of them). A proxy trial with stage 2 applies it after its loop and is scored after
      it; its epochs are not reported, so the pruner never stops it on a stage-1 error (it runs to the end).

    The default weight-decay range brackets ``Config.weight_decay`` (2e-3, the best of 5e-4 / 1e-3 / 2e-3 / 5e-3
    on protocol Q's tuning seeds for every method; 5e-4 cost about 2 points there), so the base's own value is
    inside it rather than at an edge.
    """

    weight_decay: tuple[float, float] = (1e-3, 5e-3)
    mixup: tuple[float, float] = (0.0, 1.0)
    drw_from: tuple[float, float] = (0.5, 0.9)
    stage2: tuple[str, ...] = ("auto", "none", "crt")

    def validate(self) -> None:
        """The ranges and choices themselves (:meth:`check_base` checks them against a search's config)."""
        for name in ("weight_decay", "mixup", "drw_from"):
            _check_range(name, getattr(self, name))
        if self.weight_decay[0] <= 0:
            raise ValueError(f"weight_decay is searched on a log scale: its range must start above 0, got "
                             f"{self.weight_decay}")
        if self.mixup[0] < 0:
            raise ValueError(f"the mixup range must start at 0 (off) or above, got {self.mixup}")
        if not (0 <= self.drw_from[0] and self.drw_from[1] <= 1):
            raise ValueError(f"the drw_from range must lie inside [0, 1] (fractions of the epochs), got "
                             f"{self.drw_from}")
        bad = [s for s in self.stage2 if s not in PROXY_STAGE2]
        if not self.stage2 or bad:
            why = " (tau-norm chooses τ on the split a trial is scored on)" if "tau-norm" in bad else ""
            raise ValueError(f"stage2 choices {','.join(bad) or '(empty)'} cannot be searched{why}: choose from "
                             f"{', '.join(PROXY_STAGE2)}")

    def check_base(self, base: Config, trial_epochs: int) -> None:
        """Refuse a space that would propose a config ``base``'s search cannot run, or a DRW range no epoch of
        a ``trial_epochs``-epoch proxy starts in."""
        if len(self.drw_choices(trial_epochs)) < 2:
            raise ValueError(f"the drw_from range {self.drw_from} holds no epoch start of a {trial_epochs}-epoch "
                             "proxy: widen it (--space drw_from=LO,HI) or raise --trial-epochs")
        for stage2 in self.stage2_choices(base):
            try:
                base.replace(stage2=stage2).validate()
            except ValueError as e:
                raise ValueError(f"stage2 choice {stage2!r} cannot run with this config ({e})") from None

    def stage2_choices(self, base: Config) -> list[str]:
        """The stage-2 choices for ``base``'s search, ``auto`` made concrete (``search`` or ``none``), in order,
        without repeats: the values its trials take and hand on."""
        auto = base.replace(stage2="auto").for_role(search=True).stage2
        return list(dict.fromkeys(auto if s == "auto" else s for s in self.stage2))

    def drw_choices(self, trial_epochs: int) -> list[float | None]:
        """Off (``None``), then the starts ``e / trial_epochs`` of the proxy's epochs inside the range."""
        lo, hi = self.drw_from
        return [None, *(e / trial_epochs for e in range(trial_epochs) if lo - _EPS <= e / trial_epochs <= hi + _EPS)]

    def proxy_drw(self, value: float | None, trial_epochs: int) -> float | None:
        """The DRW choice that runs a proxy the way ``value`` does: the start of the epoch it switches the loss
        on at (clipped into the choices), ``None`` where that is after the proxy's last epoch."""
        if value is None:
            return None
        start = math.ceil(value * trial_epochs - _EPS)  # the first epoch e with e / trial_epochs >= value
        points = [c for c in self.drw_choices(trial_epochs) if c is not None]
        if start >= trial_epochs or not points:  # never on within the proxy
            return None
        return min(points, key=lambda c: abs(c - start / trial_epochs))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    def suggest(self, trial: optuna.Trial, base: Config, trial_epochs: int) -> None:
        trial.suggest_float("weight_decay", *self.weight_decay, log=True)
        if can_mix(base):
            trial.suggest_float("mixup", *self.mixup)
        trial.suggest_categorical("drw_from", self.drw_choices(trial_epochs))
        trial.suggest_categorical("stage2", self.stage2_choices(base))

    def known_good(self, base: Config, trial_epochs: int) -> dict[str, Any]:
        """``base``'s own recipe as the space holds it: weight decay and mixup clipped into their ranges, the
        DRW point as the proxy runs it (:meth:`proxy_drw`), the stage 2 its search runs when it is a choice
        (else the first)."""
        own, choices = base.for_role(search=True).stage2, self.stage2_choices(base)
        point: dict[str, Any] = {"weight_decay": _clip(base.weight_decay, self.weight_decay),
                                 "drw_from": self.proxy_drw(base.drw_from, trial_epochs),
                                 "stage2": own if own in choices else choices[0]}
        if can_mix(base):
            point["mixup"] = _clip(base.mixup, self.mixup)
        return point


@dataclass(frozen=True)
class SearchSpace:
    """The coarse knobs and their ranges (``(low, high)``; ``upper_lr`` is sampled on a log scale), and the
    recipe's (``recipe``; ``None``: not searched, the base's recipe throughout).

    ``tau`` is only sampled for the ``la`` and ``vs`` families, ``gamma`` for ``cdt`` and ``vs``.
    """

    inits: tuple[str, ...] = ("la", "cdt", "vs")
    tau: tuple[float, float] = (0.0, 2.5)
    gamma: tuple[float, float] = (0.0, 0.5)
    upper_lr: tuple[float, float] = (1e-3, 1e-1)
    val_fraction: tuple[float, float] = (0.1, 0.4)
    recipe: RecipeSpace | None = None

    def validate(self) -> None:
        bad = [i for i in self.inits if i not in INIT_FAMILIES]
        if not self.inits or bad:
            raise ValueError(f"unknown --inits {','.join(bad) or '(empty)'}: choose from {', '.join(INIT_FAMILIES)}")
        for name in ("tau", "gamma", "upper_lr", "val_fraction"):
            _check_range(name, getattr(self, name))
        if self.upper_lr[0] <= 0:
            raise ValueError(f"upper_lr is searched on a log scale: its range must start above 0, got {self.upper_lr}")
        if not (0 < self.val_fraction[0] and self.val_fraction[1] < 1):
            raise ValueError(f"the val_fraction range must lie inside (0, 1), got {self.val_fraction}")
        if self.recipe is not None:
            self.recipe.validate()

    def check_base(self, base: Config, trial_epochs: int) -> None:
        """Refuse a space that would propose configs ``base``'s search cannot run (see
        :meth:`RecipeSpace.check_base`)."""
        if self.recipe is not None:
            self.recipe.check_base(base, trial_epochs)

    def to_dict(self) -> dict[str, Any]:
        """The ranges, flat (the recipe's beside the others; none of them without ``recipe``, so a study made
        without it keeps its stored settings)."""
        d = {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "recipe"}
        return d if self.recipe is None else {**d, **self.recipe.to_dict()}

    def suggest(self, trial: optuna.Trial, base: Config, trial_epochs: int) -> dict[str, Any]:
        """Sample one point for a ``trial_epochs``-epoch proxy of ``base``; returns ``trial.params`` (names are
        :class:`Config` fields)."""
        init = trial.suggest_categorical("init", list(self.inits))
        uses = INIT_FAMILIES[str(init)]
        if "tau" in uses:
            trial.suggest_float("tau", *self.tau)
        if "gamma" in uses:
            trial.suggest_float("gamma", *self.gamma)
        trial.suggest_float("upper_lr", *self.upper_lr, log=True)
        trial.suggest_float("val_fraction", *self.val_fraction)
        if self.recipe is not None:
            self.recipe.suggest(trial, base, trial_epochs)
        return dict(trial.params)

    def known_good(self, base: Config, trial_epochs: int | None = None) -> list[dict[str, Any]]:
        """Points enqueued when a study is created: LA τ = 1 (the logit-adjustment default) first, then VS
        (τ = 1, γ = 0.2) and CDT (γ = 0.2) where those families are searched; the base config's upper learning
        rate and validation fraction (clipped into their ranges) and, with ``recipe``, its recipe
        (:meth:`RecipeSpace.known_good`; ``trial_epochs``: the proxy's length, by default
        :func:`default_trial_epochs` of ``base.epochs``)."""
        common = {"upper_lr": _clip(base.upper_lr, self.upper_lr),
                  "val_fraction": _clip(base.val_fraction, self.val_fraction)}
        if self.recipe is not None:
            epochs = default_trial_epochs(base.epochs) if trial_epochs is None else trial_epochs
            common.update(self.recipe.known_good(base, epochs))
        points = []
        for init, extra in (("la", {"tau": 1.0}), ("vs", {"tau": 1.0, "gamma": 0.2}), ("cdt", {"gamma": 0.2})):
            if init in self.inits:
                points.append({"init": init, **{k: _clip(v, getattr(self, k)) for k, v in extra.items()}, **common})
        return points


def space_from_options(inits: str, *, recipe: bool = False, ranges: Sequence[str] = ()) -> SearchSpace:
    """The space ``ab-plugin warmstart`` searches: ``--inits`` (comma list), ``--recipe-knobs`` and each
    ``--space NAME=LOW,HIGH`` (``stage2=A,B,...``: its choices), validated."""
    top: dict[str, Any] = {}
    rec: dict[str, Any] = {}
    top_names = [f.name for f in dataclasses.fields(SearchSpace) if f.name not in ("inits", "recipe")]
    rec_names = [f.name for f in dataclasses.fields(RecipeSpace)]
    for spec in ranges:
        name, eq, text = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in (*top_names, *rec_names):
            raise ValueError(f"--space takes NAME=LOW,HIGH with NAME one of {', '.join(top_names + rec_names)}, "
                             f"got {spec!r}")
        if name in rec_names and not recipe:
            raise ValueError(f"--space {name}=... is a recipe knob: add --recipe-knobs to search it")
        (rec if name in rec_names else top)[name] = _parse_values(name, text)
    space = SearchSpace(inits=tuple(s.strip().lower() for s in inits.split(",") if s.strip()),
                        recipe=RecipeSpace(**rec) if recipe else None, **top)
    space.validate()
    return space


def _parse_values(name: str, text: str) -> tuple[Any, ...]:
    """``--space``'s comma list: ``stage2``'s choices as they are, any other knob's two numbers (low, high)."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if name == "stage2":
        return tuple(v.lower() for v in items)
    try:
        lo, hi = (float(v) for v in items)
    except ValueError:
        raise ValueError(f"--space {name}= takes two numbers LOW,HIGH, got {text!r}") from None
    return lo, hi


def create_sampler(name: str, seed: int) -> BaseSampler:
    """``tpe`` (default; ``TPESampler(seed=seed)``) or ``random``."""
    optuna = import_optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown --sampler {name!r}: choose tpe or random")


def params_to_config(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with a trial's parameters (``init``, ``tau``, ``gamma``, ``upper_lr``, ``val_fraction``; with the
    recipe knobs ``weight_decay``, ``mixup``, ``drw_from``, ``stage2``). :class:`Config` casts each to its
    field's type (``drw_from``: a float or ``None``, ``stage2``: a string...)."""
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"study parameters {unknown} are not configuration fields: use a study made by "
                         "`ab-plugin warmstart`")
    cfg = base.replace(**params)
    cfg.validate()
    return cfg


def default_trial_epochs(epochs: int) -> int:
    """Proxy length for a search of ``epochs`` epochs: a sixth of it, at least 2 (at most ``epochs``)."""
    return max(1, min(epochs, max(2, round(epochs / 6))))
