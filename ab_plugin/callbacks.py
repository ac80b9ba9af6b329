"""Trainer callbacks: the hooks the lower loop calls (a light module, so the CLI imports it without torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["TrainerCallback"]


class TrainerCallback:
    """Base class of :class:`~ab_plugin.trainer.Trainer` callbacks: override the hooks you need (each does
    nothing here).

    ``step`` counts lower iterations completed; ``epoch`` is 0-based in ``on_epoch_start`` and ``on_epoch_end``.
    """

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the epoch's first lower step."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        """After lower step ``step`` (``loss``: its training loss, ``None`` when it was skipped as non-finite)."""

    def on_hyper_step(self, trainer: Trainer, step: int, norm: float | None, skipped: bool) -> None:
        """After a hyper-step (``norm``: the hypergradient's norm; ``skipped``: it was non-finite)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After the epoch (``record``: what the run's ``metrics.jsonl`` gets for it)."""
