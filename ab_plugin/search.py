"""The user-facing runs: ``AutoBalance(...).fit`` (search), :func:`retrain` and :func:`train_baseline`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .data import DatasetBundle, Split, split_per_class
from .evaluation import metrics_of
from .hypergrad import create_engine
from .inputs import normalization
from .losses import ParametricCrossEntropy, create_loss, create_sharing
from .losses._parametric import NEEDS_NORMED_HEAD
from .models import create_backbone
from .objectives import GROUP_OBJECTIVES, create_objective
from .policies import (
    FORMAT_VERSION,
    BankPolicy,
    ClassPolicy,
    PolicyFile,
    create_policy,
    policy_from_module,
    save_policy,
)
from .policies._file import LOSS_KEYS, augmentation_to_module, make_provenance
from .policies._policy import LEARNED_KINDS
from .stage2 import Features, apply_recipe, exact_search, get_recipe, linear_probe, load_stage2, save_stage2
from .trainer import CHECKPOINT, HyperSetup, Trainer


@dataclass
class RunResult:
    """What a run produces; ``alpha`` holds per-class ``class_weight``, ``logit_bias``, ``logit_scale``."""

    kind: str  # search | retrain | baseline
    method: str
    classes: list[str]
    class_counts: list[int]
    alpha: dict[str, list[float]]
    augmentation: dict[str, Any] | None
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    val_metrics: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    seconds: float = 0.0
    steps: int = 0  # lower-level steps taken, skipped ones included
    hyper_steps: int = 0
    skipped_steps: int = 0
    skipped_hyper_steps: int = 0
    stage1_test_metrics: dict[str, Any] | None = None  # before stage 2 (``--stage2``), else None
    stage2: dict[str, Any] | None = None  # what stage 2 chose or measured (recipe, τ, hyper-steps, seconds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        r = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        if r.augmentation is not None and "kind" not in r.augmentation:
            # a stage that finished before augmentation kinds (policy file format 1) learned an ops policy: a
            # resumed run writes it into a format-2 policy.json, which needs the kind
            r.augmentation = {"kind": "ops", **r.augmentation}
        return r

    def to_policy(self) -> PolicyFile:
        """α and the per-class augmentation as a :class:`~ab_plugin.policies.PolicyFile` (with provenance)."""
        cfg = self.config
        return PolicyFile(
            version=FORMAT_VERSION,
            classes=list(self.classes),
            class_counts=list(self.class_counts),
            loss={k: list(self.alpha[k]) for k in LOSS_KEYS},
            augmentation=self.augmentation,
            provenance=make_provenance(
                **{k: cfg.get(k) for k in _PROVENANCE_KEYS},
                val_metrics=_headline(self.val_metrics), test_metrics=_headline(self.test_metrics)),
        )

    def save_policy(self, path: str | Path) -> None:
        """Write :meth:`to_policy` as a policy file (validated, atomic); ``ab-plugin retrain`` / ``show`` read it."""
        save_policy(path, self.to_policy())


_PROVENANCE_KEYS = ("dataset", "imbalance", "n_max", "backbone", "epochs", "seed", "engine", "init", "sharing",
                    "augment", "stage2")


def _headline(m: dict[str, Any] | None) -> dict[str, Any] | None:
    """The three headline metrics; a non-finite one (a diverged model) becomes ``None`` (JSON has no NaN)."""
    if m is None:
        return None
    return {k: m[k] if math.isfinite(m[k]) else None
            for k in ("accuracy", "balanced_error", "worst_class_error") if k in m}



def _needs_groups(cfg: Config, data: Split) -> None:
    if cfg.objective in GROUP_OBJECTIVES and data.groups is None:
        raise ValueError(
            f"objective {cfg.objective!r} needs group labels but dataset {cfg.dataset!r} has none: "
            "use a dataset with groups (digits-lt-groups, or an ImageFolder with groups.csv)"
        )


def _policy_options(cfg: Config, basis: torch.Tensor | None) -> dict[str, Any]:
    """Keyword options of the search's policy: a per-class (PDA) policy shares its parameters across classes
    the way the loss does; a learned kind starts near the identity (``augment_init_*``)."""
    if cfg.augment == "bank":
        return {"init_spread": cfg.augment_init_probability, "basis": basis, "warm_start": cfg.augment_warm_start}
    if cfg.augment not in LEARNED_KINDS:
        return {}
    return {"init_probability": cfg.augment_init_probability, "init_magnitude": cfg.augment_init_magnitude,
            **({"basis": basis} if cfg.augment == "learned" else {})}


def _unlearned(kind: str) -> str:
    """The policy kind of a run that learns nothing: a learned kind trains with the fixed crop + flip."""
    return "fixed" if kind in LEARNED_KINDS else kind


def build_model(cfg: Config, num_classes: int, loss_name: str) -> nn.Module:
    """A fresh ``cfg.backbone`` for ``num_classes`` classes, seeded with ``cfg.seed`` so that every method of
    one seed starts from the same weights (``cfg.pretrained`` / ``cfg.pretrained_file``: pretrained ones, the
    classifier fresh); ``loss_name`` decides whether its head is normed (LDAM)."""
    torch.manual_seed(cfg.seed)
    return create_backbone(cfg.backbone, num_classes, normed_head=loss_name in NEEDS_NORMED_HEAD,
                           pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file)


def _metrics(trainer: Trainer, split: Split | None, data: Split) -> dict[str, Any] | None:
    """``split``'s metrics of the trainer's model; many / medium / few-shot by ``data``'s counts (the whole
    training set, the same for every stage of a run)."""
    counts = [int(c) for c in data.class_counts()]
    return None if split is None else metrics_of(trainer.predict(split)[0], split, counts).to_dict()


def _stage1(trainer: Trainer, resume: bool) -> Features | None:
    """Stage 1: the training loop; with a frozen backbone, the linear probe on features computed once (no epoch
    runs the backbone). Returns the probe's training features, or ``None``."""
    if trainer.cfg.freeze_backbone:
        return linear_probe(trainer)
    trainer.fit(resume=resume)
    return None


def _stage2(trainer: Trainer, test: Split | None, data: Split, val: Split | None = None,
            features: Features | None = None, resume: bool = False) -> dict[str, Any]:
    """``--stage2`` on the trained model; returns ``stage1_test_metrics`` and ``stage2`` for :func:`_finish`
    (empty without a stage 2). Saved in the run folder (:func:`~ab_plugin.stage2.save_stage2`); a resumed run
    whose stage 2 finished loads it instead."""
    if trainer.cfg.stage2 == "none":
        return {}
    done = load_stage2(trainer) if resume else None
    if done is not None:
        return done
    before = _metrics(trainer, test, data)
    result = {"stage1_test_metrics": before, "stage2": apply_recipe(trainer, trainer.cfg.stage2, val, features)}
    save_stage2(trainer, result)
    return result


def _stage2_val(cfg: Config, bundle: DatasetBundle) -> tuple[Split, Split | None]:
    """The training split of stage 1 and the validation split a stage-2 recipe chooses on (``None`` when it
    chooses nothing): the dataset's own, else ``--val-fraction`` held out of the training set."""
    if not get_recipe(cfg.stage2).needs_val:
        return bundle.train, None
    if bundle.val is not None:
        return bundle.train, bundle.val
    return split_per_class(bundle.train, cfg.val_fraction, cfg.seed, cfg.val_min_per_class)


def _finish(trainer: Trainer, kind: str, method: str, data: Split, test: Split | None,
            val: Split | None = None, **extra: Any) -> RunResult:
    """The run's result (``extra``: more :class:`RunResult` fields)."""
    policy = trainer.policy
    st = trainer.state

    def metrics(split: Split | None) -> dict[str, Any] | None:
        return _metrics(trainer, split, data)

    return RunResult(
        kind=kind,
        method=method,
        classes=list(data.classes),
        class_counts=[int(c) for c in data.class_counts()],
        alpha=trainer.loss.per_class(),
        augmentation=policy_from_module(policy) if isinstance(policy, (ClassPolicy, BankPolicy)) else None,
        config=trainer.cfg.to_dict(),
        history=st.history,
        val_metrics=metrics(val),
        test_metrics=metrics(test),
        seconds=st.seconds + (extra.get("stage2") or {}).get("seconds", 0.0),  # stage 2's too
        steps=st.step,
        hyper_steps=st.hyper_steps,
        skipped_steps=st.skipped_steps,
        skipped_hyper_steps=st.skipped_hyper_steps,
        **extra,
    )


def _initial_loss(cfg: Config, counts: torch.Tensor) -> ParametricCrossEntropy:
    """The search's loss with α at its init (``--init``, ``--learn``, ``--sharing`` over ``counts``)."""
    return create_loss("autobalance", counts, init=cfg.init, learn=cfg.learn,
                       sharing=create_sharing(cfg.sharing, counts), tau=cfg.tau, gamma=cfg.gamma)


class AutoBalance:
    """Bilevel search of the loss (and augmentation) hyperparameters α.

    >>> result = AutoBalance(Config(epochs=20)).fit(bundle)          # doctest: +SKIP
    >>> result.alpha["logit_bias"], result.test_metrics["balanced_error"]  # doctest: +SKIP
    """

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        self.cfg = (config or Config()).replace(**overrides).for_role(search=True)
        self.cfg.validate()
        self.trainer: Trainer | None = None

    def build(self, bundle: DatasetBundle, run_dir: str | Path | None = None,
              callbacks: Sequence[Any] = (), model: nn.Module | None = None) -> tuple[Trainer, Split]:
        """Split (or take the dataset's own validation split), build loss / policy / engine / model and the
        :class:`Trainer` (without running it)."""
        cfg = self.cfg
        if bundle.val is not None:
            train, val = bundle.train, bundle.val
        else:
            train, val = split_per_class(bundle.train, cfg.val_fraction, cfg.seed, cfg.val_min_per_class)
        _needs_groups(cfg, train)
        loss = _initial_loss(cfg, train.class_counts())
        basis = None if loss.sharing.is_identity else loss.sharing.basis
        policy = create_policy(cfg.augment, train.num_classes, **_policy_options(cfg, basis))
        # the exact stage-2 search (a frozen backbone's search too) trains stage 1 with α at its init, fixed:
        # no hyper-step in the loop
        upper = None if cfg.stage2 == "search" or cfg.freeze_backbone else HyperSetup(
            create_engine(cfg.engine, **cfg.engine_options), create_objective(cfg.objective), val)
        model = model if model is not None else build_model(cfg, train.num_classes, "autobalance")
        mean, std = normalization(cfg, model, bundle)
        # the exact search's stage 1 has no upper level, yet its epochs report the validation split's metrics
        self.trainer = Trainer(model, loss, train, cfg, mean=mean, std=std, policy=policy, upper=upper,
                               monitor=val if upper is None else None, run_dir=run_dir, callbacks=callbacks)
        return self.trainer, val

    def fit(self, bundle: DatasetBundle, *, run_dir: str | Path | None = None, resume: bool = False,
            callbacks: Sequence[Any] = (), model: nn.Module | None = None) -> RunResult:
        """Run the search; ``model`` replaces the ``cfg.backbone`` model (a timm-style classifier).

        With ``stage2="search"``: stage 1 trains the backbone with α at its init (none with a frozen backbone),
        then α is learned by exact hyper-steps on its frozen features (:func:`~ab_plugin.stage2.exact_search`).
        With ``freeze_backbone`` (and another ``stage2``) the loop's hyper-steps never run: the exact search
        is the search of a frozen backbone."""
        trainer, val = self.build(bundle, run_dir, callbacks, model)
        method = f"autobalance-{self.cfg.init}"
        if self.cfg.stage2 == "search" or self.cfg.freeze_backbone:
            if not self.cfg.freeze_backbone:
                trainer.fit(resume=resume)
            done = load_stage2(trainer) if resume else None
            if done is None:
                before = {} if self.cfg.freeze_backbone else {
                    "stage1_test_metrics": _metrics(trainer, bundle.test, bundle.train)}
                trace, info = exact_search(trainer, val, create_objective(self.cfg.objective))
                if self.cfg.freeze_backbone and trainer.run_dir is not None:
                    # no loop wrote one; a loop's checkpoint keeps stage 1 (and α's init) for --resume
                    trainer.save(trainer.run_dir / CHECKPOINT)
                done = {"stage2": info, "hyper_steps": trace.hyper_steps, "skipped_hyper_steps": trace.skipped,
                        **before}
                save_stage2(trainer, done)
            trainer.state.hyper_steps = done.pop("hyper_steps")
            trainer.state.skipped_hyper_steps = done.pop("skipped_hyper_steps")
            return _finish(trainer, "search", method, bundle.train, bundle.test, val, **done)
        trainer.fit(resume=resume)
        return _finish(trainer, "search", method, bundle.train, bundle.test, val)


def fixed_loss_from_alpha(alpha: dict[str, Sequence[float]]) -> ParametricCrossEntropy:
    """A non-learnable loss with the given per-class vectors (what a retrain uses)."""
    n = len(alpha["logit_bias"])
    values = {k: torch.tensor(alpha[k], dtype=torch.float32) for k in LOSS_KEYS if k in alpha}
    for k, v in values.items():
        if not bool(torch.isfinite(v).all()):
            i = int((~torch.isfinite(v)).nonzero()[0])
            raise ValueError(f"{k}[{i}] = {alpha[k][i]!r} is out of float32 range (|value| <= 3.4e38): training "
                             "with it would skip every step; use a policy with ordinary values")
    return ParametricCrossEntropy(n, class_weight=values.get("class_weight"), logit_bias=values["logit_bias"],
                                  logit_scale=values.get("logit_scale"))


def retrain(
    alpha: dict[str, Sequence[float]] | RunResult,
    bundle: DatasetBundle,
    cfg: Config,
    *,
    augmentation: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    model: nn.Module | None = None,
) -> RunResult:
    """Train a fresh model on the whole training set (search train + validation, unless the dataset ships its
    own validation split) with α fixed. ``cfg.stage2="auto"`` takes the stage 2 of the search ``alpha`` comes
    from (a :class:`RunResult`), else resolves as the search's would (:meth:`Config.for_role`)."""
    if isinstance(alpha, RunResult):
        augmentation = augmentation if augmentation is not None else alpha.augmentation
        if cfg.stage2 == "auto":  # α* is retrained the way it was learned: with the search's own stage 2
            cfg = cfg.replace(stage2=alpha.config.get("stage2", "none"))
        alpha = alpha.alpha
    cfg = cfg.for_role(search=True)
    n = bundle.train.num_classes
    if len(alpha["logit_bias"]) != n:
        raise ValueError(
            f"α has {len(alpha['logit_bias'])} classes but dataset {cfg.dataset!r} has {n}: "
            "retrain on the dataset the search ran on"
        )
    loss = fixed_loss_from_alpha(alpha)
    if augmentation is not None and cfg.augment in LEARNED_KINDS:
        policy = augmentation_to_module(augmentation, n)
    else:
        policy = create_policy(_unlearned(cfg.augment), n)
    model = model if model is not None else build_model(cfg, n, "retrain")
    mean, std = normalization(cfg, model, bundle)
    train, val = _stage2_val(cfg, bundle)
    # the exact search learned α* for a backbone trained with α's init: its retrain's stage 1 does the same
    stage1_loss = _initial_loss(cfg, train.class_counts()) if cfg.stage2 == "search" else loss
    trainer = Trainer(model, stage1_loss, train, cfg, mean=mean, std=std, policy=policy,
                      run_dir=run_dir, callbacks=callbacks)
    features = _stage1(trainer, resume)
    trainer.loss = loss.to(trainer.device)
    return _finish(trainer, "retrain", "autobalance", bundle.train, bundle.test,
                   **_stage2(trainer, bundle.test, bundle.train, val, features, resume))


def train_baseline(
    name: str,
    bundle: DatasetBundle,
    cfg: Config,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    model: nn.Module | None = None,
) -> RunResult:
    """Train with a fixed loss of the family (ce, la, cdt, vs, ldam, ldam-drw) on the training set."""
    cfg = cfg.for_role(search=False)
    train, val = _stage2_val(cfg, bundle)
    loss = create_loss(name, train.class_counts(), tau=cfg.tau, gamma=cfg.gamma)
    policy = create_policy(_unlearned(cfg.augment), bundle.train.num_classes)
    model = model if model is not None else build_model(cfg, bundle.train.num_classes, name)
    mean, std = normalization(cfg, model, bundle)
    trainer = Trainer(model, loss, train, cfg, mean=mean, std=std, policy=policy,
                      run_dir=run_dir, callbacks=callbacks)
    features = _stage1(trainer, resume)
    return _finish(trainer, "baseline", name, bundle.train, bundle.test,
                   **_stage2(trainer, bundle.test, bundle.train, val, features, resume))
