"""Validation objectives (the upper level's target) and evaluation metrics.

Every objective is ``objective(logits [B, C], target [B], groups [B] | None) -> scalar`` and is
smooth in the logits, so hypergradients flow through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._registry import Registry

Objective = Callable[..., torch.Tensor]


def per_class_mean(values: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` ``[B]`` per class ``[C]`` and the class presence mask ``[C]``."""
    sums = torch.zeros(num_classes, dtype=values.dtype, device=values.device).index_add(0, target, values)
    counts = torch.bincount(target, minlength=num_classes).to(values.dtype)
    present = counts > 0
    return sums / counts.clamp_min(1), present


def balanced_ce(logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over present classes of the class's mean CE: a smooth surrogate of balanced error."""
    losses = F.cross_entropy(logits, target, reduction="none")
    means, present = per_class_mean(losses, target, logits.shape[1])
    return means[present].mean()


def worst_class_ce(
    logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None, temperature: float = 0.5
) -> torch.Tensor:
    """Smooth maximum (``T · logsumexp(L_c / T)`` minus ``T log C``) of the per-class mean CE."""
    losses = F.cross_entropy(logits, target, reduction="none")
    means, present = per_class_mean(losses, target, logits.shape[1])
    m = means[present]
    return temperature * (torch.logsumexp(m / temperature, 0) - torch.log(torch.tensor(float(m.numel()))))


def cvar_class_ce(
    logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None, alpha: float = 0.3
) -> torch.Tensor:
    """CVaR_α over classes: mean of the worst ``ceil(α C)`` per-class losses."""
    losses = F.cross_entropy(logits, target, reduction="none")
    means, present = per_class_mean(losses, target, logits.shape[1])
    m = means[present]
    k = max(1, int(torch.ceil(torch.tensor(alpha * m.numel())).item()))
    return torch.topk(m, k).values.mean()


def _group_means(logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    if groups is None:
        raise ValueError("this objective needs group labels: use a dataset with groups (e.g. digits-lt-groups)")
    losses = F.cross_entropy(logits, target, reduction="none")
    num_groups = int(groups.max().item()) + 1
    means, present = per_class_mean(losses, groups, num_groups)
    return means[present]


def worst_group_ce(
    logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None, temperature: float = 0.5
) -> torch.Tensor:
    """Smooth maximum of the per-group mean CE (group DRO's target)."""
    m = _group_means(logits, target, groups)
    return temperature * (torch.logsumexp(m / temperature, 0) - torch.log(torch.tensor(float(m.numel()))))


def equal_opportunity_gap(
    logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Balanced CE plus the spread of the soft true-class recall between groups.

    Recall is measured softly as the mean true-class probability per (class, group) cell; the gap
    is the mean over classes of (max − min) over the groups present in the class.
    """
    if groups is None:
        raise ValueError("this objective needs group labels: use a dataset with groups (e.g. digits-lt-groups)")
    p_true = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    num_classes, num_groups = logits.shape[1], int(groups.max().item()) + 1
    cell = target * num_groups + groups
    means, present = per_class_mean(p_true, cell, num_classes * num_groups)
    means, present = means.view(num_classes, num_groups), present.view(num_classes, num_groups)
    big = torch.finfo(means.dtype).max
    hi = torch.where(present, means, -big).amax(1)
    lo = torch.where(present, means, big).amin(1)
    ok = present.sum(1) >= 2
    gap = (hi - lo)[ok].mean() if bool(ok.any()) else logits.sum() * 0
    return balanced_ce(logits, target) + gap


def blend(accuracy_weight: float = 0.5, fairness: Objective = worst_class_ce) -> Objective:
    """``(1 − a) · fairness + a · plain CE`` (CE stands for accuracy, smoothly)."""

    def objective(logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        return (1 - accuracy_weight) * fairness(logits, target, groups) + accuracy_weight * ce

    return objective


OBJECTIVES: Registry[Objective] = Registry("objective")
for _name, _objective in (("balanced", balanced_ce), ("worst-class", worst_class_ce), ("cvar", cvar_class_ce),
                          ("worst-group", worst_group_ce), ("eo-gap", equal_opportunity_gap), ("blend", blend())):
    OBJECTIVES.register(_name, _objective)
#: objectives that need group labels
GROUP_OBJECTIVES = {"worst-group", "eo-gap"}


def create_objective(name: str) -> Objective:
    """The objective registered as ``name`` (:func:`list_objectives`)."""
    return OBJECTIVES.get(name)


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


@dataclass
class Metrics:
    """Classification metrics; errors are fractions in [0, 1]. ``shot_accuracy`` (many / medium / few-shot
    accuracy, a group without classes ``None``) is set by :func:`ab_plugin.evaluation.metrics_of` when it
    knows the training counts."""

    accuracy: float
    balanced_error: float
    worst_class_error: float
    per_class_error: list[float]
    per_group_error: list[float] | None = None
    worst_group_error: float | None = None
    eo_gap: float | None = None
    shot_accuracy: dict[str, float | None] | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def compute_metrics(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, groups: torch.Tensor | None = None
) -> Metrics:
    """Metrics from predicted labels ``[N]`` (or logits ``[N, C]``) and true labels ``[N]``."""
    if pred.ndim == 2:
        pred = pred.argmax(1)
    wrong = (pred != target).double()
    err, present = per_class_mean(wrong, target, num_classes)
    per_class = [float(e) if bool(p) else float("nan") for e, p in zip(err, present, strict=True)]
    m = Metrics(
        accuracy=float(1.0 - wrong.mean()),
        balanced_error=float(err[present].mean()),
        worst_class_error=float(err[present].max()),
        per_class_error=per_class,
    )
    if groups is not None:
        num_groups = int(groups.max().item()) + 1
        gerr, gpresent = per_class_mean(wrong, groups, num_groups)
        m.per_group_error = [float(e) for e in gerr]
        m.worst_group_error = float(gerr[gpresent].max())
        cell = target * num_groups + groups
        cerr, cpresent = per_class_mean(wrong, cell, num_classes * num_groups)
        recall = (1 - cerr).view(num_classes, num_groups)
        cpresent = cpresent.view(num_classes, num_groups)
        gaps = [
            float(recall[c][cpresent[c]].max() - recall[c][cpresent[c]].min())
            for c in range(num_classes)
            if int(cpresent[c].sum()) >= 2
        ]
        m.eo_gap = sum(gaps) / len(gaps) if gaps else 0.0
    return m
