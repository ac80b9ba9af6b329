"""``ParametricCrossEntropy``: the learnable loss module and the baselines as fixed points of it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .._registry import Registry
from ._functional import (
    Counts,
    _as_counts,
    cdt_scale,
    drw_weights,
    la_bias,
    ldam_margins,
    log_prior,
    logit,
    parametric_cross_entropy,
)
from ._sharing import Sharing, expand_basis, per_class

#: per-class hyperparameters (what a policy file stores), each ``[C]``
PER_CLASS_NAMES = ("class_weight", "logit_bias", "logit_scale")
#: what the upper level can learn: the per-class vectors, or LA's scalar ``tau`` alone (``l = τ log π``)
HPARAM_NAMES = (*PER_CLASS_NAMES, "tau")


class ParametricCrossEntropy(nn.Module):
    """``w_y · CE(Δ ⊙ z + l, y)`` with learnable, optionally shared, per-class ``w``, ``l``, ``Δ``.

    Parametrisation (``D`` the sharing basis ``[C, k]``, raw vectors ``[k]``):
    ``w = C · softmax(D ω)`` (positive, mean 1), ``l = D λ + τ log π``, ``Δ = sigmoid(D δ)`` in (0, 1).
    ``τ`` is a scalar, zero unless given or learned (the paper's "AutoBalance: τ of LA loss" row).

    Args:
        num_classes: ``C``.
        sharing: basis shared by all three hyperparameters (default: one value per class).
        class_weight, logit_bias, logit_scale: initial per-class values ``[C]``; ``None`` means
            neutral (w = 1, l = 0) and, for the scale, "no scale" unless it is learned
            (then ``Δ = sigmoid(1)`` as in the reference code).
        learn: which of ``class_weight``, ``logit_bias``, ``logit_scale``, ``tau`` the upper level tunes.
        margin: fixed LDAM margins ``[C]`` taken off the true-class logit; ``margin_scale`` ``s``.
        counts: training counts ``[C]``, needed for ``τ log π`` (``tau`` given or learned).
        tau: initial ``τ``.

    The learned raw tensors are ``nn.Parameter``s with ``requires_grad=True``: when this module is a
    sub-module of a model, keep them out of the lower optimiser (``backward(inputs=...)`` as the
    Trainer does, or ``AutoBalanceCriterion`` which owns α), or the training loss will move α.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        sharing: Sharing | None = None,
        class_weight: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
        logit_scale: torch.Tensor | None = None,
        learn: Iterable[str] = (),
        margin: torch.Tensor | None = None,
        margin_scale: float = 1.0,
        counts: Counts | None = None,
        tau: float = 0.0,
    ) -> None:
        super().__init__()
        learn = tuple(learn)
        bad = set(learn) - set(HPARAM_NAMES)
        if bad:
            raise ValueError(f"cannot learn {sorted(bad)}: choose from {list(HPARAM_NAMES)}")
        if ("tau" in learn or tau) and counts is None:
            raise ValueError("τ log π needs the class counts: pass counts=")
        if "tau" in learn and "logit_bias" in learn:
            raise ValueError("learn either tau (l = τ log π) or logit_bias (free l), not both")
        self.num_classes = num_classes
        self.sharing = sharing or per_class(num_classes)
        if self.sharing.num_classes != num_classes:
            raise ValueError(
                f"sharing basis is for {self.sharing.num_classes} classes but the loss has {num_classes}"
            )
        self.register_buffer("basis", None if self.sharing.is_identity else self.sharing.basis.clone(),
                             persistent=False)
        self.use_scale = logit_scale is not None or "logit_scale" in learn
        self.use_weight = class_weight is not None or "class_weight" in learn
        if logit_scale is None:
            logit_scale = torch.full((num_classes,), float(torch.sigmoid(torch.tensor(1.0))))
        init = {
            "class_weight": torch.ones(num_classes) if class_weight is None else torch.as_tensor(class_weight).float(),
            "logit_bias": torch.zeros(num_classes) if logit_bias is None else torch.as_tensor(logit_bias).float(),
            "logit_scale": torch.as_tensor(logit_scale).float(),
        }
        for name in PER_CLASS_NAMES:
            raw = self._fit(name, init[name])
            self.register_parameter(f"{name}_raw", nn.Parameter(raw, requires_grad=name in learn))
        self.register_parameter("tau_raw", nn.Parameter(torch.tensor([float(tau)]), requires_grad="tau" in learn))
        self.register_buffer("log_prior", None if counts is None else log_prior(counts), persistent=False)
        self.learn = learn
        self.register_buffer("margin", None if margin is None else torch.as_tensor(margin).float())
        self.margin_scale = float(margin_scale)
        # deferred re-weighting (LDAM-DRW, --drw-from): class-balanced weights join w late in training
        self.register_buffer("deferred_weight", None)
        self.defer_from = 1.0
        self._deferred_active = False
        # deferred re-balancing (Bag of Tricks' DRW for balanced softmax, --rebalance-from): plain CE until then
        self.rebalance_from = 0.0
        self._plain = False

    @staticmethod
    def _weight_to_logits(w: torch.Tensor) -> torch.Tensor:
        w = torch.as_tensor(w).float()
        if bool((w <= 0).any()):
            raise ValueError("class weights must be positive")
        return w.log() - w.log().mean()

    # per-class views ------------------------------------------------------------------------
    @property
    def class_weight(self) -> torch.Tensor:
        """``w`` ``[C]``, positive with mean 1 (α's own weights, without the deferred ones)."""
        return self.num_classes * torch.softmax(self._expand(self.class_weight_raw), dim=0)

    @property
    def training_weight(self) -> torch.Tensor | None:
        """The per-class weights ``[C]`` the loss applies now: ``w``, times the deferred weights once
        :meth:`set_progress` reached ``defer_from``; ``None`` when neither is in use (all ones)."""
        deferred = self.deferred_weight if self._deferred_active else None
        if not self.use_weight:
            return deferred
        return self.class_weight if deferred is None else self.class_weight * deferred

    @property
    def logit_bias(self) -> torch.Tensor:
        """``l`` ``[C]``, in logit units."""
        free = self._expand(self.logit_bias_raw)
        return free if self.log_prior is None else free + self.tau_raw * self.log_prior

    @property
    def tau(self) -> float:
        """LA's ``τ`` in ``l = D λ + τ log π`` (0 unless given or learned)."""
        return float(self.tau_raw.detach())

    @property
    def logit_scale(self) -> torch.Tensor:
        """``Δ`` ``[C]`` in (0, 1)."""
        return torch.sigmoid(self._expand(self.logit_scale_raw))

    def _expand(self, raw: torch.Tensor) -> torch.Tensor:
        return expand_basis(self.basis, raw)  # the basis buffer lives on the loss's device

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in PER_CLASS_NAMES:
            saved = state_dict.get(f"{prefix}{name}_raw")
            if saved is not None and saved.shape != getattr(self, f"{name}_raw").shape:
                raise ValueError(
                    f"saved α has {saved.numel()} raw values per hyperparameter but this loss's sharing "
                    f"({self.sharing.kind}) has {self.sharing.size}: build the loss or criterion with the sharing it "
                    "was saved with (sharing='per_class' for one raw value per class)"
                )
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _fit(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """Raw values of hyperparameter ``name`` from per-class ``values`` (w through its log, Δ its sigmoid)."""
        if name == "class_weight":
            return self.sharing.fit(self._weight_to_logits(values))
        if name == "logit_scale":
            return self.sharing.fit(values, link=torch.sigmoid, inverse=logit)
        return self.sharing.fit(values)

    def hparameters(self) -> list[nn.Parameter]:
        """The raw tensors the upper level optimises (only those in ``learn``)."""
        return [getattr(self, f"{n}_raw") for n in HPARAM_NAMES if n in self.learn]

    def defer_weights(self, weights: torch.Tensor, from_fraction: float) -> None:
        """Deferred re-weighting: from ``from_fraction`` of training on (see :meth:`set_progress`), multiply
        each class's term by ``weights`` ``[C]`` (on top of ``w``, learned or fixed)."""
        weights = torch.as_tensor(weights).float()
        if weights.shape != (self.num_classes,) or bool((weights <= 0).any()):
            raise ValueError(f"deferred weights must be {self.num_classes} positive values, got {tuple(weights.shape)}")
        self.deferred_weight = weights.to(self.tau_raw.device)
        self.defer_from = float(from_fraction)

    def defer_rebalancing(self, from_fraction: float) -> None:
        """Deferred re-balancing: before ``from_fraction`` of training (see :meth:`set_progress`) the loss is
        plain cross-entropy (no ``w``, ``l``, ``Δ``, margins or deferred weights); from it on, the loss as built.
        Bag of Tricks' "DRW" of balanced softmax is this switch (BagofTricks-LT, ``BalancedSoftmaxCE.update``)."""
        self.rebalance_from = float(from_fraction)
        self._plain = self.rebalance_from > 0

    def set_progress(self, fraction: float) -> None:
        """Tell the loss how far training is (0..1); used by deferred re-weighting and re-balancing."""
        self._deferred_active = self.deferred_weight is not None and fraction >= self.defer_from
        self._plain = fraction < self.rebalance_from

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; ``logits`` ``[B, C]``, ``target`` ``[B]`` labels or ``[B, C]`` soft."""
        if self._plain:
            return parametric_cross_entropy(logits, target)
        return parametric_cross_entropy(
            logits,
            target,
            class_weight=self.training_weight,
            logit_bias=self.logit_bias,
            logit_scale=self.logit_scale if self.use_scale else None,
            margin=self.margin,
            margin_scale=self.margin_scale,
        )

    def per_class(self) -> dict[str, list[float]]:
        """Per-class vectors under the loss's names (what a policy file stores)."""
        with torch.no_grad():
            return {
                "class_weight": self.class_weight.tolist(),
                "logit_bias": self.logit_bias.tolist(),
                "logit_scale": (self.logit_scale if self.use_scale else torch.ones(self.num_classes)).tolist(),
            }

    def load_per_class(self, values: dict[str, Sequence[float]]) -> None:
        """Set the raw parameters from per-class vectors (exact for the per-class basis)."""
        with torch.no_grad():
            if "class_weight" in values:
                self.use_weight = True
                self.class_weight_raw.copy_(self._fit("class_weight", torch.tensor(values["class_weight"])))
            if "logit_bias" in values:  # the whole l goes into the free part
                self.tau_raw.zero_()
                self.logit_bias_raw.copy_(self._fit("logit_bias", torch.tensor(values["logit_bias"])))
            if "logit_scale" in values:
                self.use_scale = True
                self.logit_scale_raw.copy_(self._fit("logit_scale", torch.tensor(values["logit_scale"])))

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, sharing={self.sharing.kind}, learn={list(self.learn)}"


# registry of loss recipes ---------------------------------------------------------------------

NEEDS_NORMED_HEAD = {"ldam", "ldam-drw"}
LOSSES: Registry[ParametricCrossEntropy] = Registry("loss")
INITS: Registry[dict[str, Any]] = Registry("autobalance init")
INITS.register("neutral", lambda c, tau, gamma: {})
INITS.register("la", lambda c, tau, gamma: {"logit_bias": la_bias(c, tau)})
INITS.register("cdt", lambda c, tau, gamma: {"logit_scale": cdt_scale(c, gamma)})
INITS.register("vs", lambda c, tau, gamma: {"logit_bias": la_bias(c, tau), "logit_scale": cdt_scale(c, gamma)})


@LOSSES.register("ce")
def _ce(c: torch.Tensor, **_: Any) -> ParametricCrossEntropy:
    return ParametricCrossEntropy(c.numel())


@LOSSES.register("la")
def _la(c: torch.Tensor, *, tau: float, **_: Any) -> ParametricCrossEntropy:
    return ParametricCrossEntropy(c.numel(), logit_bias=la_bias(c, tau))


@LOSSES.register("cdt")
def _cdt(c: torch.Tensor, *, gamma: float, **_: Any) -> ParametricCrossEntropy:
    return ParametricCrossEntropy(c.numel(), logit_scale=cdt_scale(c, gamma))


@LOSSES.register("vs")
def _vs(c: torch.Tensor, *, tau: float, gamma: float, **_: Any) -> ParametricCrossEntropy:
    return ParametricCrossEntropy(c.numel(), logit_scale=cdt_scale(c, gamma), logit_bias=la_bias(c, tau))


@LOSSES.register("ldam")
def _ldam(c: torch.Tensor, *, max_margin: float, ldam_scale: float, **_: Any) -> ParametricCrossEntropy:
    return ParametricCrossEntropy(c.numel(), margin=ldam_margins(c, max_margin), margin_scale=ldam_scale)


@LOSSES.register("ldam-drw")
def _ldam_drw(c: torch.Tensor, *, drw_from: float, **options: Any) -> ParametricCrossEntropy:
    loss = _ldam(c, **options)
    loss.defer_weights(drw_weights(c), drw_from)
    return loss


@LOSSES.register("autobalance")
def _autobalance(c: torch.Tensor, *, tau: float, gamma: float, init: str, learn: Iterable[str],
                 sharing: Sharing | None, **_: Any) -> ParametricCrossEntropy:
    learn = tuple(learn)
    start = INITS.create(init, c, tau, gamma)
    if "tau" in learn:  # LA's strength is the learned scalar itself, not a free l
        return ParametricCrossEntropy(c.numel(), sharing=sharing, learn=learn, counts=c,
                                      tau=tau if "logit_bias" in start else 0.0,
                                      logit_scale=start.get("logit_scale"))
    return ParametricCrossEntropy(c.numel(), sharing=sharing, learn=learn, **start)


def create_loss(
    name: str,
    counts: Counts,
    *,
    tau: float = 1.0,
    gamma: float = 0.2,
    max_margin: float = 0.5,
    ldam_scale: float = 30.0,
    drw_from: float = 0.8,
    init: str = "neutral",
    learn: Iterable[str] = ("logit_bias", "logit_scale"),
    sharing: Sharing | None = None,
) -> ParametricCrossEntropy:
    """Build a loss of the family by name (:func:`list_losses`). Baselines are fixed points; ``autobalance``
    learns.

    ``init`` (for ``autobalance``, :func:`list_inits`): ``neutral`` | ``la`` (l = τ log π) |
    ``cdt`` (Δ = (n/n_max)^γ) | ``vs`` (both). With ``learn`` containing ``tau``, LA's τ is the learned value.
    """
    return LOSSES.create(name, _as_counts(counts), tau=tau, gamma=gamma, max_margin=max_margin,
                         ldam_scale=ldam_scale, drw_from=drw_from, init=init, learn=learn, sharing=sharing)


def list_losses() -> list[str]:
    return LOSSES.names()


def list_inits() -> list[str]:
    return INITS.names()
