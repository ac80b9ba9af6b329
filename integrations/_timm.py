"""timm: a callback for timm-style training loops and ``train_timm``, a loop built from timm's own parts.

The pattern, in your own timm loop (``train.py``-shaped)::

    callback = AutoBalanceTimmCallback(class_counts, val_loader=val_loader)
    task = timm.task.ClassificationTask(model, callback.criterion)     # or: loss_fn = callback.criterion
    callback.on_train_start(model)
    for epoch in range(epochs):
        for x, y in loader:
            x = callback.augment(x, y)                               # only with policy=ClassPolicy(...)
            x, y = mixup_fn(x, y)                                    # soft targets are fine
            out = task(x, y)
            optimizer.zero_grad(); out["loss"].backward(); optimizer.step()
            ema.update(model, step=num_updates)
            callback.on_batch_end(model, out["output"], y)           # the hyper-step, after the update
        callback.on_epoch_end(epoch)
    checkpoint["autobalance"] = callback.state_dict()                # α + upper optimizer, resumable

timm's own ``train.py`` needs no callback object: ``train_loss_fn = AutoBalanceCriterion(counts,
auto_step=False).attach(model, loader_eval)``, :class:`AutoBalanceTask` in place of ``ClassificationTask`` (α in
timm's checkpoints) and ``task.criterion.step()`` after each optimizer update (README, "timm's own train.py");
``--device-modules ab_plugin.models`` registers the CIFAR ResNets there.

timm is a core dependency of ab-plugin; it is still imported through ``try_import`` for a clear message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._criterion import AutoBalanceCriterion, ValSource, callback_criterion
from ._eval import evaluate_metrics
from ._imports import try_import

with try_import("timm") as _timm_import:
    import timm
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.task import ClassificationTask
    from timm.utils import ModelEmaV3

__all__ = ["AutoBalanceTask", "AutoBalanceTimmCallback", "TimmRun", "train_timm"]

_TaskBase: type = ClassificationTask if _timm_import.is_successful() else object


class AutoBalanceTask(_TaskBase):
    """timm's ``ClassificationTask`` whose criterion's state (α, its optimizer, counters, buffer) rides in timm's
    checkpoints: ``CheckpointSaver(..., task=task)`` writes it under ``task_state`` and ``resume_task_checkpoint``
    (``train.py --resume``) restores it.

    Args:
        model: the network.
        criterion: the :class:`AutoBalanceCriterion` (``auto_step=False``: call ``task.criterion.step()`` after each
            optimizer update).
        **kwargs: ``ClassificationTask`` options (``device``, ``dtype``, ``verbose``).
    """

    def __init__(self, model: nn.Module, criterion: AutoBalanceCriterion, **kwargs: Any) -> None:
        _timm_import.check()
        if not isinstance(criterion, AutoBalanceCriterion):
            raise TypeError(f"AutoBalanceTask needs an AutoBalanceCriterion, got {type(criterion).__name__}")
        super().__init__(model, criterion=criterion, **kwargs)

    def get_task_state(self, module: nn.Module | None = None, ema: bool = False) -> dict[str, Any]:
        """``{"autobalance": criterion.state_dict()}`` for the trained model (the EMA copy has no α of its own)."""
        return {} if ema else {"autobalance": self.criterion.state_dict()}

    def load_task_state(self, state: dict[str, Any] | None, strict: bool = True, module: nn.Module | None = None,
                        ema: bool = False) -> None:
        if ema:
            return
        if not state or "autobalance" not in state:
            if strict:
                raise ValueError("the checkpoint holds no AutoBalance state (task_state['autobalance']): it was not "
                                 "written by a run with AutoBalanceTask; start α from its init with a new run")
            return
        self.criterion.load_state_dict(state["autobalance"])


class AutoBalanceTimmCallback:
    """Hooks that plug AutoBalance into a timm-style loop; owns the self-tuning criterion.

    Use :attr:`criterion` as the loop's loss (``ClassificationTask(model, callback.criterion)`` or
    ``loss_fn = callback.criterion``). The criterion records the classifier inputs during your forward
    passes; :meth:`on_batch_end` counts the step and takes a hyper-step on α every ``interval`` steps,
    *after* your optimizer step, never touching your optimizer or the model's ``.grad``.

    Args:
        class_counts: training samples per class ``[C]``.
        val_loader: validation batches ``(x, y)`` preprocessed for the model (or a callable returning them);
            may also be given to :meth:`on_train_start`.
        criterion: an existing :class:`AutoBalanceCriterion` (its ``auto_step`` is switched off).
        **criterion_options: options of :class:`AutoBalanceCriterion` (``init``, ``learn``, ``engine``,
            ``interval``, ``upper_lr``, ...; ``policy``, ``pixel_mean``, ``pixel_std`` to learn per-class
            augmentation A as well: then pass each batch through :meth:`augment`; A learns from the steps whose
            targets are the batch's hard labels, i.e. not from mixed batches).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor | None = None,
        *,
        val_loader: ValSource | None = None,
        criterion: AutoBalanceCriterion | None = None,
        **criterion_options: Any,
    ) -> None:
        self.criterion = callback_criterion("AutoBalanceTimmCallback", class_counts, criterion, criterion_options)
        self.val_loader = val_loader
        self.history: list[dict[str, Any]] = []

    def on_train_start(
        self,
        model: nn.Module,
        val_loader: ValSource | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Attach the criterion to ``model`` (call before the first forward of the run)."""
        if val_loader is not None:
            self.val_loader = val_loader
        if self.val_loader is None:
            raise ValueError("AutoBalanceTimmCallback needs a validation loader: pass val_loader=...")
        self.criterion.attach(model, self.val_loader, optimizer=optimizer)

    def augment(self, x: Tensor, y: Tensor) -> Tensor:
        """Augment a training batch with the learned policy (``policy=`` option), before mixup and the forward.

        Args:
            x: ``[B, 3, H, W]`` batch as the model takes it; y: ``[B]`` int labels.

        Returns:
            the augmented batch (same shape and normalisation).
        """
        return self.criterion.augment(x, y)

    def on_batch_end(self, model: nn.Module, logits: Tensor, target: Tensor) -> float | None:
        """After the optimizer step of one batch: hyper-step on α when due.

        Args:
            model: the model being trained (attached here if :meth:`on_train_start` was not called).
            logits: ``[B, C]`` outputs of the batch (unused when the loop's loss was :attr:`criterion`).
            target: the batch's targets ``[B]`` or soft ``[B, C]`` (after mixup); recorded here if the loop's
                loss was another function.

        Returns:
            the hypergradient norm when a hyper-step was taken, else ``None``.
        """
        if not self.criterion.is_attached:
            self.on_train_start(model)
        self.criterion.record(target)  # pairs the captured features only if the loop's loss did not
        return self.criterion.step()

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record (and return) the epoch's counters, α and the given metrics in :attr:`history`."""
        record = {"epoch": epoch, **self.criterion.summary(), **(metrics or {})}
        self.history.append(record)
        return record

    def on_train_end(self) -> None:
        """Remove the criterion's hook from the model."""
        self.criterion.detach()

    def state_dict(self) -> dict[str, Any]:
        """α, the upper optimizer state, counters and history (put it in your checkpoint)."""
        return {"criterion": self.criterion.state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.criterion.load_state_dict(state["criterion"])
        self.history = list(state.get("history", []))


@dataclass
class TimmRun:
    """What :func:`train_timm` built and produced; :meth:`state_dict` is a resumable checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    callback: AutoBalanceTimmCallback
    task: nn.Module
    ema: nn.Module | None = None
    epoch: int = 0  # epochs completed
    num_updates: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def criterion(self) -> AutoBalanceCriterion:
        return self.callback.criterion

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint in timm's layout: ``state_dict`` (model), ``state_dict_ema`` (EMA weights, plain model
        keys, as timm's ``CheckpointSaver`` writes them), ``optimizer`` and ``epoch`` (epochs done, the next
        epoch's index), plus ``scheduler``, ``num_updates``, ``autobalance`` (α and its optimizer) and
        ``history``. Saved with ``torch.save``, timm's ``load_checkpoint(model, path, use_ema=True)`` loads the
        EMA weights and ``resume_checkpoint(model, path, optimizer)`` the model and optimizer."""
        return {
            "state_dict": self.model.state_dict(),
            "state_dict_ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "autobalance": self.callback.state_dict(),
            "epoch": self.epoch,
            "num_updates": self.num_updates,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("state_dict_ema") is not None:
            self.ema.module.load_state_dict(state["state_dict_ema"])
        self.callback.load_state_dict(state["autobalance"])
        self.epoch, self.num_updates = int(state["epoch"]), int(state["num_updates"])
        self.history = list(state.get("history", []))


def train_timm(
    model: nn.Module | str,
    train_loader: Iterable[Sequence[Tensor]],
    val_loader: ValSource,
    class_counts: Sequence[int] | Tensor,
    *,
    epochs: int = 10,
    opt: str = "sgd",
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    sched: str = "cosine",
    warmup_epochs: int = 0,
    mixup: dict[str, Any] | None = None,
    ema_decay: float | None = None,
    criterion_options: dict[str, Any] | None = None,
    eval_loader: Iterable[Sequence[Tensor]] | None = None,
    device: str | torch.device = "cpu",
    max_steps_per_epoch: int | None = None,
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TimmRun:
    """Train with timm's parts and a self-tuning AutoBalance loss.

    Built from ``timm.create_model`` (any registered name, e.g. ``resnet20_cifar``),
    ``timm.optim.create_optimizer_v2``, ``timm.scheduler.create_scheduler_v2`` (per-update stepping),
    ``timm.data.Mixup`` (soft targets, optional), ``timm.utils.ModelEmaV3`` (optional) and
    ``timm.task.ClassificationTask(model, criterion)``.

    Args:
        model: a model or a timm model name (created with ``num_classes = len(class_counts)``).
        train_loader: ``(x [B, 3, H, W] float, y [B])`` batches, preprocessed for the model (e.g. by
            ``timm.data.create_transform(**resolve_data_config(model=model))``); batches of odd size skip mixup.
        val_loader: validation batches for the hyper-steps (see :class:`AutoBalanceCriterion`).
        class_counts: training samples per class ``[C]``.
        epochs: total epochs (a resumed run continues up to it).
        opt, lr, weight_decay, momentum: ``create_optimizer_v2`` arguments.
        sched, warmup_epochs: ``create_scheduler_v2`` arguments.
        mixup: ``timm.data.Mixup`` keyword arguments (``num_classes`` is filled in), or ``None``.
        ema_decay: keep a ``ModelEmaV3`` with this decay, or ``None``.
        criterion_options: :class:`AutoBalanceCriterion` options; ``weight_decay`` defaults to ``weight_decay``.
        eval_loader: evaluated (balanced error) after every epoch, with the EMA model when there is one.
        device: where to train.
        max_steps_per_epoch: cut epochs short (smoke tests).
        resume: a :meth:`TimmRun.state_dict` to continue from.
        stop_after: stop once this many epochs are done (an interruption: the schedule still spans ``epochs``).
        log: called with one line per epoch.

    Returns:
        the :class:`TimmRun` (model, optimizer, scheduler, EMA, callback with α, history).
    """
    _timm_import.check()
    import ab_plugin.models  # noqa: F401  (registers the CIFAR ResNets in timm)

    dev = torch.device(device)
    num_classes = len(torch.as_tensor(class_counts))
    if isinstance(model, str):
        model = timm.create_model(model, num_classes=num_classes)
    model = model.to(dev)
    optimizer = create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum)
    steps_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else 0  # type: ignore[arg-type]
    if max_steps_per_epoch is not None and steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    scheduler, _ = create_scheduler_v2(optimizer, sched=sched, num_epochs=epochs, warmup_epochs=warmup_epochs,
                                       step_on_epochs=False, updates_per_epoch=max(1, steps_per_epoch))
    mixup_fn = Mixup(**{**mixup, "num_classes": num_classes}) if mixup else None
    ema = ModelEmaV3(model, decay=ema_decay) if ema_decay else None
    options = {"weight_decay": weight_decay, **(criterion_options or {})}
    callback = AutoBalanceTimmCallback(class_counts, val_loader=val_loader, **options)
    task = ClassificationTask(model, callback.criterion, device=dev, verbose=False)
    run = TimmRun(model, optimizer, scheduler, callback, task, ema)
    if resume is not None:
        run.load_state_dict(resume)
    callback.on_train_start(model, optimizer=optimizer)
    model.train()
    last = epochs if stop_after is None else min(epochs, stop_after)
    while run.epoch < last:
        total, count = 0.0, 0
        for i, batch in enumerate(train_loader):
            if max_steps_per_epoch is not None and i >= max_steps_per_epoch:
                break
            x, y = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
            if mixup_fn is not None and x.shape[0] % 2 == 0:
                x, y = mixup_fn(x, y)
            out = task(x, y)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            run.num_updates += 1
            if ema is not None:
                ema.update(model, step=run.num_updates)
            callback.on_batch_end(model, out["output"], y)
            scheduler.step_update(num_updates=run.num_updates)
            total, count = total + float(out["loss"].detach()), count + 1
        run.epoch += 1
        scheduler.step(run.epoch)
        metrics: dict[str, Any] = {"train_loss": total / max(1, count), "lr": optimizer.param_groups[0]["lr"]}
        if eval_loader is not None:
            m = evaluate_metrics(ema.module if ema is not None else model, eval_loader, num_classes, dev)
            metrics.update(accuracy=m.accuracy, balanced_error=m.balanced_error,
                           worst_class_error=m.worst_class_error)
        record = callback.on_epoch_end(run.epoch, metrics)
        run.history.append(record)
        if log is not None:
            extra = f" balanced error {metrics['balanced_error']:.3f}" if "balanced_error" in metrics else ""
            log(f"epoch {run.epoch}/{epochs}: loss {metrics['train_loss']:.3f}{extra}, "
                f"hyper-steps {record['hyper_steps']}")
    callback.on_train_end()
    return run
