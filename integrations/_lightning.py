"""Lightning: ``AutoBalanceCallback`` owns α, its upper optimizer and their checkpoint state.

Install the extra: ``pip install 'ab-plugin[lightning]'``. The LightningModule computes its training loss
with the callback's criterion. Two equivalent patterns:

1. Let the callback provide it (default ``criterion_attr="criterion"``): during ``fit`` / ``validate`` /
   ``test`` the callback sets ``pl_module.criterion`` to its criterion (a plain attribute, not a submodule, so
   the module's ``state_dict`` and ``parameters()`` are unchanged) and puts the original back at teardown::

       class LitClassifier(L.LightningModule):
           def __init__(self, net):
               super().__init__()
               self.net = net
               self.criterion = nn.CrossEntropyLoss()        # replaced by AutoBalance during fit
           def training_step(self, batch, batch_idx):
               x, y = batch
               return self.criterion(self.net(x), y)
           def configure_optimizers(self):
               return torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)

       callback = AutoBalanceCallback(class_counts, val_loader=val_loader)
       L.Trainer(callbacks=[callback]).fit(LitClassifier(net), train_loader)

2. Assign it yourself: ``self.criterion = callback.criterion`` in ``__init__`` (then it is a submodule and α
   is saved in the module's ``state_dict`` too; load such a checkpoint with the same module definition).

Resume: α, the upper optimizer's state and the step counters are the callback's state (Lightning stores it
under ``checkpoint["callbacks"]["AutoBalanceCallback"]``); ``trainer.fit(module, ckpt_path=...)`` with a new
callback continues with the same α.

Hyper-steps run in ``on_train_batch_end`` (after the optimizer step) every ``interval`` training batches.
With ``policy=ClassPolicy(...)`` (and ``pixel_mean`` / ``pixel_std``, the batches' normalisation) the callback
also learns per-class augmentation A: ``on_train_batch_start`` augments each ``(x, y)`` batch's images in place.
Validation batches for them come from ``val_loader`` or, if not given, from the trainer's validation
dataloader (``fit(val_dataloaders=...)``, the datamodule's or the module's ``val_dataloader``); they must be
``(x, y)`` batches that the network (``model_attr``) takes as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from ab_plugin.models import split_model

from ._criterion import AutoBalanceCriterion, ValSource, callback_criterion
from ._imports import try_import

with try_import("lightning", extra="lightning") as _lightning_import:
    import lightning.pytorch as pl

__all__ = ["AutoBalanceCallback"]

_Base: type = pl.Callback if _lightning_import.is_successful() else object
_MISSING = object()
_NET_ATTRS = ("model", "net", "network", "backbone", "classifier_model")


def _first_loader(loaders: Any) -> Any:
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    return loaders


class AutoBalanceCallback(_Base):
    """A Lightning ``Callback`` that tunes the training loss's α with implicit hypergradients.

    Args:
        class_counts: training samples per class ``[C]``.
        val_loader: validation ``(x, y)`` batches for the hyper-steps (default: the trainer's validation
            dataloader).
        criterion: an existing :class:`AutoBalanceCriterion` (its ``auto_step`` is switched off).
        model_attr: attribute (dotted path) of the LightningModule holding the network that produces the
            logits; default: the first of ``model``, ``net``, ``network``, ``backbone`` that
            :func:`ab_plugin.models.split_model` accepts, else the LightningModule itself.
        criterion_attr: attribute of the LightningModule set to the criterion during fit (``None``: do not
            touch the module; then assign ``self.criterion = callback.criterion`` yourself).
        log_metrics: log ``autobalance/hyper_steps`` and ``autobalance/hypergrad_norm`` each epoch.
        **criterion_options: options of :class:`AutoBalanceCriterion` (``interval``, ``engine``, ...).

    Attributes:
        criterion: the self-tuning loss (use it as the module's training loss).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor | None = None,
        *,
        val_loader: ValSource | None = None,
        criterion: AutoBalanceCriterion | None = None,
        model_attr: str | None = None,
        criterion_attr: str | None = "criterion",
        log_metrics: bool = True,
        **criterion_options: Any,
    ) -> None:
        _lightning_import.check()
        super().__init__()
        self.criterion = callback_criterion("AutoBalanceCallback", class_counts, criterion, criterion_options)
        self.val_loader = val_loader
        self.model_attr, self.criterion_attr, self.log_metrics = model_attr, criterion_attr, log_metrics
        self._original: Any = _MISSING
        self._trainer: pl.Trainer | None = None
        self._pl_module: pl.LightningModule | None = None
        self._warned_unused = False

    # ------------------------------------------------------------------------------------ wiring
    def _inject(self, pl_module: pl.LightningModule) -> None:
        attr = self.criterion_attr
        if attr is None or getattr(pl_module, attr, None) is self.criterion:
            return
        if attr in pl_module._modules:
            self._original = pl_module._modules.pop(attr)
        else:
            self._original = pl_module.__dict__.pop(attr, _MISSING)
        object.__setattr__(pl_module, attr, self.criterion)

    def _restore(self, pl_module: pl.LightningModule) -> None:
        attr = self.criterion_attr
        if attr is None or pl_module.__dict__.get(attr) is not self.criterion:
            return
        del pl_module.__dict__[attr]
        if self._original is not _MISSING:
            setattr(pl_module, attr, self._original)
        self._original = _MISSING

    def _network(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.model_attr is not None:
            net = pl_module.get_submodule(self.model_attr)
            split_model(net)  # raises a clear error when it has no classifier
            return net
        for attr in _NET_ATTRS:
            net = getattr(pl_module, attr, None)
            if isinstance(net, nn.Module):
                try:
                    split_model(net)
                except ValueError:
                    continue
                return net
        try:
            split_model(pl_module)
        except ValueError:
            raise ValueError(
                "AutoBalanceCallback could not find the network in the LightningModule: pass model_attr='...' "
                f"(tried {', '.join(_NET_ATTRS)} and the module itself)"
            ) from None
        return pl_module

    def _val_batches(self) -> Iterable[Sequence[Tensor]]:
        """The validation source when none was given: the trainer's validation dataloader."""
        trainer, pl_module = self._trainer, self._pl_module
        assert trainer is not None and pl_module is not None
        loader = _first_loader(trainer.val_dataloaders)
        if loader is None and trainer.datamodule is not None and hasattr(trainer.datamodule, "val_dataloader"):
            loader = _first_loader(trainer.datamodule.val_dataloader())
        if loader is None:  # fit(val_dataloaders=...) before the validation loop loaded it: load it now
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
            loader = _first_loader(trainer.val_dataloaders)
        if loader is None:
            raise ValueError(
                "AutoBalanceCallback has no validation data: pass val_loader=... or give the trainer a "
                "validation dataloader (fit(..., val_dataloaders=...))"
            )
        return loader

    # ------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._pl_module = trainer, pl_module
        self._inject(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore(pl_module)
        self.criterion.detach()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = self._network(pl_module)
        self._warned_unused = False
        self.criterion.attach(net, self.val_loader if self.val_loader is not None else self._val_batches,
                              optimizer=trainer.optimizers[0] if trainer.optimizers else None)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # with a learned policy the batch's images are replaced by augmented ones, so training_step sees them as
        # usual: in the batch list (default collate), or written into the collated tensor of a tuple batch
        if self.criterion.live_policy is None or not isinstance(batch, (tuple, list)) or len(batch) < 2:
            return
        augmented = self.criterion.augment(batch[0], batch[1])
        if isinstance(batch, list):
            batch[0] = augmented
        else:
            batch[0].copy_(augmented)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, (tuple, list)) and len(batch) > 1 and self.criterion.record(batch[1]):
            # the batch's features were still unpaired: training_step computed its loss with something else
            self._warn_unused(pl_module)
        self.criterion.step()

    def _warn_unused(self, pl_module: pl.LightningModule) -> None:
        if self._warned_unused:
            return
        self._warned_unused = True
        where = f"pl_module.{self.criterion_attr}" if self.criterion_attr else "callback.criterion"
        warnings.warn(
            f"AutoBalanceCallback: {type(pl_module).__name__}.training_step did not call the callback's criterion "
            f"({where}), so the model trains with another loss while α is learned for nothing: compute the "
            "training loss with it, or set criterion_attr= to the attribute training_step uses",
            RuntimeWarning, stacklevel=2)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.log_metrics:
            return
        pl_module.log("autobalance/hyper_steps", float(self.criterion.hyper_steps), on_epoch=True)
        if self.criterion.last_hypergrad_norm is not None:
            pl_module.log("autobalance/hypergrad_norm", float(self.criterion.last_hypergrad_norm), on_epoch=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.criterion.detach()

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """α, the upper optimizer state, counters, validation position and training buffer."""
        return {"criterion": self.criterion.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.criterion.load_state_dict(state_dict["criterion"])
