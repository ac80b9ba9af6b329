"""The lower level's learning-rate schedule, a pure function of the global iteration.

A closed form rather than torch's or timm's schedulers: the trainer sets the lr itself every step, a resumed
run needs no scheduler state, and the upper level reads ``lr / peak``. torch's ``LinearLR`` +
``CosineAnnealingLR`` (chained updates) reach the same values only up to rounding (about 2.5e-16 apart,
most steps not bit-identical), and timm's ``CosineLRScheduler`` ramps its warm-up to the peak one step
later, so neither reproduces runs made with this formula.
"""

from __future__ import annotations

import math

from .config import Config


def lr_at(step: int, steps_per_epoch: int, cfg: Config) -> float:
    """Learning rate at a global iteration: linear warm-up, then cosine to 0 or ×0.1 steps."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "cosine":
        t = (step - warm) / max(1.0, total - warm)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    frac = step / total
    return cfg.lr * 0.1 ** sum(frac >= m for m in cfg.milestones)
