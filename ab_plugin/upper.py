"""The upper level of the bilevel search: how a hypergradient becomes a step on α.

One object owns everything between "an engine returned ``dL_val/dα``" and "α moved": averaging the
hypergradient across ranks, skipping non-finite ones, clipping, the learning-rate schedule (a linear
warm-up in hyper-steps, optionally scaled by the lower level's schedule) and the running average of
α over the last part of the search (what a search exports). The search :class:`~ab_plugin.trainer.Trainer`,
:class:`~ab_plugin.integrations.AutoBalanceCriterion` and the timm / Lightning callbacks all drive it,
so a change to the upper level is made here once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import all_reduce_mean_

UpperOptimizer = str | Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def create_upper_optimizer(kind: UpperOptimizer, params: list[nn.Parameter], *, lr: float, momentum: float = 0.9,
                           weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``adam`` | ``sgd`` (momentum) or a callable ``params -> Optimizer`` over α's raw tensors."""
    if callable(kind):
        return kind(params)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown upper optimizer {kind!r}: use 'adam', 'sgd' or a callable params -> Optimizer")


class UpperLevel:
    """Steps α (``hparams``, the loss's and policy's raw tensors) from hypergradients.

    Args:
        hparams: the tensors the upper level learns (may be empty: every step is then a no-op).
        optimizer: ``adam`` | ``sgd`` or a callable ``params -> torch.optim.Optimizer``.
        lr: peak learning rate; momentum, weight_decay: of the built-in optimizers.
        clip: largest L2 norm of a hypergradient (0 disables clipping).
        warmup_steps: the learning rate ramps linearly from ``lr / warmup_steps`` to ``lr`` over this many
            hyper-steps (0: no warm-up).
        average_from: hyper-step index from which α is averaged (``None``: no averaging); :meth:`averaged`
            and :meth:`use_average` give the average of α after each step from there on.

    :meth:`step` takes ``lr_scale`` (e.g. the lower schedule's current lr over its peak, to decay α's steps
    with the lower level) and returns the hypergradient norm, or ``None`` when the step was skipped.
    """

    def __init__(
        self,
        hparams: Sequence[nn.Parameter],
        *,
        optimizer: UpperOptimizer = "adam",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        clip: float = 1.0,
        warmup_steps: int = 0,
        average_from: int | None = None,
    ) -> None:
        if clip < 0 or warmup_steps < 0 or lr < 0:
            raise ValueError("lr, clip and warmup_steps must be >= 0")
        self.hparams = list(hparams)
        # an empty optimizer cannot be built: a placeholder keeps state_dict uniform
        params = self.hparams or [nn.Parameter(torch.zeros(0), requires_grad=False)]
        self.optimizer = create_upper_optimizer(optimizer, params, lr=lr, momentum=momentum,
                                                weight_decay=weight_decay)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.clip, self.warmup_steps, self.average_from = float(clip), int(warmup_steps), average_from
        self.steps = 0  # hyper-steps taken
        self.skipped = 0  # non-finite hypergradients skipped
        self.last_norm: float | None = None
        self._average: list[Tensor] | None = None
        self._averaged_steps = 0

    def lr_factor(self, lr_scale: float = 1.0) -> float:
        """The multiplier of the peak lr for the next step: warm-up ramp times ``lr_scale``."""
        ramp = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return ramp * lr_scale

    def step(self, grads: Sequence[Tensor], *, lr_scale: float = 1.0) -> float | None:
        """Apply one hypergradient (one tensor per hparam); ``None`` when it is non-finite (α unchanged).

        The caller decides how loud a skipped step is (a warning, or an error after many in a row).
        """
        grads = [g.detach().clone() for g in grads]
        # the implicit engines already return the union's hypergradient on every rank (the mean leaves it as
        # it is); a rank-local one (unrolled, a custom callable) is averaged, so α stays the same on all ranks
        all_reduce_mean_(grads)
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))) if grads else 0.0
        self.last_norm = norm
        if not math.isfinite(norm):
            self.skipped += 1
            return None
        if not self.hparams:
            return norm
        # by hand, not torch.nn.utils.clip_grad_norm_: that one takes the norm in the gradients' dtype (float32)
        # and divides by norm + 1e-6, which moves the clipped step by up to ~1e-6 relative (α would no longer
        # match runs made with this code); it also scales a non-finite gradient into NaNs where this skips
        # it, and treats clip = 0 as "clip to zero" where 0 means no clipping here
        scale = min(1.0, self.clip / (norm + 1e-12)) if self.clip > 0 else 1.0
        factor = self.lr_factor(lr_scale)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        for h, g in zip(self.hparams, grads, strict=True):
            h.grad = (g * scale).to(h.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        self._accumulate()
        return norm

    # averaging ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate(self) -> None:
        if self.average_from is None or self.steps <= self.average_from:
            return
        self._averaged_steps += 1
        if self._average is None:
            self._average = [h.detach().clone() for h in self.hparams]
        else:
            for a, h in zip(self._average, self.hparams, strict=True):
                a.add_(h.detach() - a, alpha=1.0 / self._averaged_steps)

    def averaged(self) -> list[Tensor] | None:
        """The running average of α since ``average_from`` (``None`` before any averaged step)."""
        return None if self._average is None else [a.clone() for a in self._average]

    @torch.no_grad()
    def use_average(self) -> bool:
        """Copy the average into α (what a finished search exports); ``False`` when there is none."""
        if self._average is None:
            return False
        for h, a in zip(self.hparams, self._average, strict=True):
            h.copy_(a)
        return True

    # state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "skipped": self.skipped,
            "last_norm": self.last_norm,
            "average": self._average,
            "averaged_steps": self._averaged_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.skipped = int(state["steps"]), int(state["skipped"])
        self.last_norm = state.get("last_norm")
        avg = state.get("average")
        device = self.hparams[0].device if self.hparams else None
        self._average = None if avg is None else [a.to(device) for a in avg]
        self._averaged_steps = int(state.get("averaged_steps", 0))

    def to(self, device: torch.device) -> UpperLevel:
        """Re-cast the optimizer state (and the average) to the hparams' device after they moved."""
        if self.optimizer.state:
            self.optimizer.load_state_dict(self.optimizer.state_dict())
        if self._average is not None:
            self._average = [a.to(device) for a in self._average]
        return self
