"""The stage-2 recipes by name: how a trained classifier is re-trained on features of its frozen backbone.

A recipe takes the classifier (changed in place), the run's loss, the features and the config, and returns
what it chose or measured (a small dict for the result). ``none`` leaves the classifier as stage 1 left it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._registry import Registry
from ..config import Config
from ..losses import ParametricCrossEntropy
from ._classifier import fit_classifier, relative_radius
from ._exact import solve_classifier
from ._features import Features
from ._taunorm import choose_tau, tau_normalize

Info = dict[str, Any]

#: Cui et al. (CVPR 2019) effective-number β of the class-balanced loss, as Alshammari et al. use it
CB_BETA = 0.9999


@dataclass(frozen=True)
class Recipe:
    """A stage-2 recipe: ``apply(classifier, loss, train, val, cfg) -> info``; ``needs_val``: it chooses
    something on validation features (``val`` is then never ``None``)."""

    apply: Callable[[nn.Linear, ParametricCrossEntropy, Features, Features | None, Config], Info]
    needs_val: bool = False

    def __call__(self) -> Recipe:  # the registry's factory: a recipe is its own instance
        return self


STAGE2: Registry[Recipe] = Registry("stage-2 recipe")


def class_balanced_weights(counts: torch.Tensor, beta: float = CB_BETA) -> torch.Tensor:
    """``[C]`` weights ``∝ (1 − β) / (1 − β^n_c)`` (one over the effective number of examples), mean 1."""
    effective = (1.0 - torch.pow(beta, counts.double())) / (1.0 - beta)
    w = 1.0 / effective
    return (w / w.mean()).float()


def _none(clf: nn.Linear, loss: ParametricCrossEntropy, train: Features, val: Features | None, cfg: Config) -> Info:
    return {}


def _crt(clf: nn.Linear, loss: ParametricCrossEntropy, train: Features, val: Features | None, cfg: Config) -> Info:
    torch.manual_seed(cfg.seed)
    clf.reset_parameters()  # cRT re-initialises the classifier (Kang et al.)
    ce = ParametricCrossEntropy(clf.out_features).to(train.features.device)
    fit_classifier(clf, *train.pair(), ce, epochs=cfg.stage2_epochs, batch_size=cfg.batch_size,
                   lr=_or(cfg.stage2_lr, 0.2 * cfg.batch_size / 512), weight_decay=_or(cfg.stage2_weight_decay, 5e-4),
                   sampler="class_balanced", seed=cfg.seed)
    return {}


def _tau_norm(clf: nn.Linear, loss: ParametricCrossEntropy, train: Features, val: Features | None,
              cfg: Config) -> Info:
    tau, err = choose_tau(clf.weight.detach(), *val.pair())
    with torch.no_grad():
        clf.weight.copy_(tau_normalize(clf.weight, tau))
        if clf.bias is not None:
            clf.bias.zero_()  # Kang et al.'s τ-normalised logits have no bias
    return {"tau": tau, "val_balanced_error": err}


def _wb(clf: nn.Linear, loss: ParametricCrossEntropy, train: Features, val: Features | None, cfg: Config) -> Info:
    counts = torch.bincount(train.labels.cpu(), minlength=clf.out_features)
    cb = ParametricCrossEntropy(clf.out_features, class_weight=class_balanced_weights(counts))
    radius = relative_radius(clf.weight, cfg.maxnorm)  # from the stage-1 classifier it fine-tunes
    fit_classifier(clf, *train.pair(), cb.to(train.features.device), epochs=cfg.stage2_epochs,
                   batch_size=cfg.batch_size, lr=_or(cfg.stage2_lr, 0.01),
                   weight_decay=_or(cfg.stage2_weight_decay, 0.1), maxnorm_radius=radius, seed=cfg.seed)
    return {"maxnorm_radius": radius}


def _solve(clf: nn.Linear, loss: ParametricCrossEntropy, train: Features, val: Features | None,
           cfg: Config) -> Info:
    """The classifier solved exactly for the run's own (fixed) loss: what the exact search optimised α for."""
    exact = float64_copy(clf)
    norm = solve_classifier(exact, loss, *train.to(torch.float64).pair(), weight_decay=stage2_weight_decay(cfg),
                            tol=1e-10)
    clf.load_state_dict(exact.state_dict())  # back in the model's dtype
    return {"grad_norm": norm}


def float64_copy(clf: nn.Linear) -> nn.Linear:
    """``clf``'s weights in a float64 linear layer on its device: the exact solves run in float64, where the
    gradient norm reaches 1e-10."""
    exact = nn.Linear(clf.in_features, clf.out_features, bias=clf.bias is not None).to(
        device=clf.weight.device, dtype=torch.float64)
    exact.load_state_dict(clf.state_dict())
    return exact


def stage2_weight_decay(cfg: Config) -> float:
    """The exact solve's weight decay: --stage2-weight-decay, else the lower level's --weight-decay."""
    return _or(cfg.stage2_weight_decay, cfg.weight_decay)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


STAGE2.register("none", Recipe(_none))
STAGE2.register("crt", Recipe(_crt))
STAGE2.register("tau-norm", Recipe(_tau_norm, needs_val=True))
STAGE2.register("wb", Recipe(_wb))
STAGE2.register("search", Recipe(_solve))


def get_recipe(name: str) -> Recipe:
    return STAGE2.create(name)


def list_stage2() -> list[str]:
    return STAGE2.names()
