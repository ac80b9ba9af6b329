"""Pure tensor functions of the parametric loss family (no state, no modules)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Counts = Sequence[int] | torch.Tensor


def _as_counts(counts: Counts) -> torch.Tensor:
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.ndim != 1 or c.numel() == 0 or bool((c <= 0).any()):
        raise ValueError("class counts must be a non-empty 1-D list of positive integers")
    return c


def to_soft_targets(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels ``[B]`` (int) become one-hot ``[B, C]``; soft targets ``[B, C]`` pass through."""
    if target.ndim == 1:
        return F.one_hot(target.long(), num_classes).to(torch.get_default_dtype())
    if target.ndim == 2 and target.shape[1] == num_classes:
        return target
    raise ValueError(f"targets must be labels [B] or probabilities [B, {num_classes}], got {tuple(target.shape)}")


def adjusted_logits(
    logits: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    logit_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Δ ⊙ z + l`` for logits ``z`` of shape ``[B, C]`` and per-class ``Δ``, ``l`` of shape ``[C]``."""
    out = logits
    if logit_scale is not None:
        out = out * logit_scale
    if logit_bias is not None:
        out = out + logit_bias
    return out


def parametric_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None = None,
    logit_bias: torch.Tensor | None = None,
    logit_scale: torch.Tensor | None = None,
    margin: torch.Tensor | None = None,
    margin_scale: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """AutoBalance's loss family ``w_y · CE(s · (Δ ⊙ z + l − m ⊙ t), y)``.

    Args:
        logits: ``[B, C]`` raw model outputs ``z``.
        target: labels ``[B]`` or soft targets ``[B, C]`` (mixup, cutmix, label smoothing); for soft
            targets the weight is ``Σ_c t_c w_c`` applied per class term, which equals ``w_y`` on one-hot.
        class_weight: ``w`` ``[C]``, per-class sample weight (None = 1).
        logit_bias: ``l`` ``[C]``, additive logit shift (logit adjustment).
        logit_scale: ``Δ`` ``[C]``, multiplicative logit scale (CDT).
        margin: ``m`` ``[C]``, a margin taken off the true-class logit (LDAM); with soft targets
            ``(t / Σ_c t_c) ⊙ m`` is taken off.
        margin_scale: ``s``, multiplies the adjusted logits (LDAM's normalised-classifier scale).
        reduction: "mean", "sum" or "none" (``[B]``). With ``class_weight``, "mean" is the weighted mean
            ``Σ_i w_i ℓ_i / Σ_i w_i`` (``w_i = Σ_c t_ic w_c``), as ``F.cross_entropy(weight=...)`` and LDAM-DRW
            reduce: the weights then change each class's share of the gradient without changing its overall
            step size, for fixed (DRW) and learned ``w`` alike. Soft targets are averaged per unit of target
            mass (``Σ_i ℓ_i / Σ_ic t_ic``): a row summing to ``π < 1`` counts as that share of an image, so ``K``
            rows of one image weighted by a mixture ``π_k`` (an augmentation bank's expected loss) count as
            one image.
    """
    num_classes = logits.shape[1]
    soft = target.ndim == 2
    t = to_soft_targets(target, num_classes).to(logits.dtype)
    z = adjusted_logits(logits, logit_bias, logit_scale)
    if margin is not None:  # the margin follows the target's class mix, not its mass
        z = z - (t / t.sum(dim=1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny) if soft else t) * margin
    if margin_scale != 1.0:
        z = z * margin_scale
    nll = -(t * F.log_softmax(z, dim=1))
    if class_weight is not None:
        nll = nll * class_weight
    per_sample = nll.sum(dim=1)
    if reduction == "mean":
        if class_weight is None:
            return per_sample.sum() / t.sum().clamp_min(torch.finfo(t.dtype).tiny) if soft else per_sample.mean()
        return per_sample.sum() / (t * class_weight).sum().clamp_min(torch.finfo(per_sample.dtype).tiny)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}: use 'mean', 'sum' or 'none'")


def log_prior(counts: Counts) -> torch.Tensor:
    """``log π_j`` ``[C]`` from training counts."""
    c = _as_counts(counts)
    return (c / c.sum()).log().float()


def la_bias(counts: Counts, tau: float = 1.0) -> torch.Tensor:
    """Logit adjustment (Menon et al. 2021): ``l_j = τ log π_j``."""
    return tau * log_prior(counts)


def cdt_scale(counts: Counts, gamma: float = 0.2) -> torch.Tensor:
    """Class-dependent temperatures (Ye et al. 2020): ``Δ_j = (n_j / n_max)^γ`` in (0, 1]."""
    c = _as_counts(counts)
    return (c / c.max()).pow(gamma).float()


def ldam_margins(counts: Counts, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM (Cao et al. 2019): ``m_j ∝ n_j^{-1/4}``, rescaled so the largest margin is ``max_margin``."""
    m = _as_counts(counts).pow(-0.25)
    return (m * (max_margin / m.max())).float()


def drw_weights(counts: Counts, beta: float = 0.9999) -> torch.Tensor:
    """Deferred re-weighting: class-balanced weights ``(1-β)/(1-β^{n_j})`` normalised to mean 1."""
    c = _as_counts(counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), c))
    return (w * (c.numel() / w.sum())).float()


def logit(p: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Inverse sigmoid, clamped so that ``p`` in {0, 1} maps to finite values."""
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


__all__ = [
    "adjusted_logits",
    "cdt_scale",
    "drw_weights",
    "la_bias",
    "ldam_margins",
    "log_prior",
    "logit",
    "parametric_cross_entropy",
    "to_soft_targets",
]
