"""One training loop for everything: baselines, the bilevel search and the retrain.

The loop is the lower level; when a hypergradient engine is attached it also takes upper steps on
α every ``interval`` iterations once the warm-up is over. State is checkpointed atomically every
epoch and a resumed run continues bit-for-bit on CPU.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .data import ImageData, TensorLoader, normalize
from .hypergrad import HypergradEngine, HyperProblem, frozen_norm_stats
from .io import append_jsonl, load_checkpoint, save_checkpoint, write_jsonl
from .losses import ParametricCrossEntropy
from .models import split_model
from .objectives import Metrics, compute_metrics

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NumericalError(RuntimeError):
    """Too many consecutive non-finite losses or hypergradients."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available: use --device cpu or auto")
    return torch.device(name)


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


@dataclass
class Callback:
    """Hooks the loop calls; subclass and override what you need. ``trainer`` is the running loop."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None: ...
    def on_hyper_step(self, trainer: Trainer, step: int, grad_norm: float, skipped: bool) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None: ...


@dataclass
class UpperLevel:
    """What turns a training run into a search: the engine, the objective and the validation split."""

    engine: HypergradEngine
    objective: Callable[..., torch.Tensor]
    val: ImageData


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # lower iterations completed
    hyper_steps: int = 0
    skipped_steps: int = 0
    skipped_hyper_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    """Trains ``model`` with ``loss`` on ``train``; with ``upper`` it also learns α (a search).

    Args:
        model: a classifier with timm's ``forward_features`` / ``forward_head`` / ``get_classifier``.
        loss: the parametric loss (holds α).
        train: the training split (uint8 images in memory).
        cfg: the run configuration.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        policy: augmentation module ``policy(x01, y) -> x01`` or ``None``.
        upper: the upper level (engine, objective, validation split) or ``None`` for plain training.
        test: evaluated at the end of training (and reported per epoch when ``eval_test`` is set).
        run_dir: where the checkpoint and per-epoch metrics go; ``None`` keeps everything in memory.
        callbacks: objects with the :class:`Callback` hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: ParametricCrossEntropy,
        train: ImageData,
        cfg: Config,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        policy: nn.Module | None = None,
        upper: UpperLevel | None = None,
        test: ImageData | None = None,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Any] = (),
        eval_test: bool = False,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss = loss.to(self.device)
        self.policy = policy.to(self.device) if policy is not None else None
        self.train_data, self.test, self.upper = train, test, upper
        self.mean, self.std = tuple(mean), tuple(std)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.eval_test = eval_test
        self.features, self.classifier = split_model(self.model)
        self.loader = TensorLoader(train, cfg.batch_size, shuffle=True, drop_last=len(train) >= cfg.batch_size,
                                   device=self.device, seed=cfg.seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=False)
        self.hparams: list[torch.Tensor] = list(loss.hparameters())
        if policy is not None and hasattr(policy, "hparameters"):
            self.hparams += list(policy.hparameters())
        self.upper_optimizer = self._make_upper_optimizer() if upper is not None and self.hparams else None
        self.state = TrainState()
        self._train_buffer: deque = deque(maxlen=cfg.hyper_batches)
        self._val_features: list[tuple[torch.Tensor, ...]] = []
        self._bad_in_row = 0
        self._amp = cfg.amp and self.device.type == "cuda"

    # set-up --------------------------------------------------------------------------------------
    def _make_upper_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        if c.upper_optimizer == "adam":
            return torch.optim.Adam(self.hparams, lr=c.upper_lr, weight_decay=c.upper_weight_decay)
        return torch.optim.SGD(self.hparams, lr=c.upper_lr, momentum=c.upper_momentum,
                               weight_decay=c.upper_weight_decay)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def upper_start_epoch(self) -> int:
        return int(round(self.cfg.upper_start * self.cfg.epochs))

    # forward paths ------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor, y: torch.Tensor, augment: bool) -> torch.Tensor:
        x01 = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        if augment and self.policy is not None:
            x01 = self.policy(x01, y)
        xn = normalize(x01, self.mean, self.std)
        return xn.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else xn

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp)

    def train_forward(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        with self._autocast():
            return (model or self.model)(self._prepare(x, y, True)).float()

    def val_forward(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        with self._autocast():
            return (model or self.model)(self._prepare(x, None, False)).float()

    def augment_features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with frozen_norm_stats(self.model), self._autocast():
            return self.features(self._prepare(x, y, True)).float()

    @torch.no_grad()
    def predict(self, data: ImageData, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, C]`` and features ``[N, D]`` of ``data`` in eval mode (no augmentation)."""
        was = self.model.training
        self.model.eval()
        logits, feats = [], []
        loader = TensorLoader(data, batch_size, shuffle=False, device=self.device)
        for x, _, _ in loader:
            with self._autocast():
                f = self.features(self._prepare(x, None, False))
                logits.append(self.classifier(f).float())
            feats.append(f.float())
        self.model.train(was)
        return torch.cat(logits), torch.cat(feats)

    def evaluate(self, data: ImageData) -> Metrics:
        logits, _ = self.predict(data)
        groups = data.groups.to(self.device) if data.groups is not None else None
        return compute_metrics(logits, data.targets.to(self.device), data.num_classes, groups)

    # the loop -----------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainState:
        if resume:
            self.load(self.run_dir / CHECKPOINT)
            # epochs logged after the checkpoint (a kill between the two writes) are redone
            write_jsonl(self.run_dir / METRICS, self.state.history)
        self.model.train()
        while self.state.epoch < self.cfg.epochs:
            self._epoch()
        return self.state

    def _epoch(self) -> None:
        cfg, st = self.cfg, self.state
        epoch = st.epoch
        t0 = time.perf_counter()
        for cb in self.callbacks:
            getattr(cb, "on_epoch_start", lambda *a: None)(self, epoch)
        self.loss.set_progress(epoch / cfg.epochs)
        upper_active = self.upper_optimizer is not None and epoch >= self.upper_start_epoch
        record: dict[str, Any] = {"epoch": epoch + 1}
        if self.upper is not None:
            # one pass over the validation split per epoch: it gives the epoch's validation metrics
            # and the head engine's validation features
            val_metrics = self._validation_pass(keep_features=upper_active)
            record["val"] = val_metrics.to_dict()
        total, count = 0.0, 0
        for x, y, _ in self.loader:
            loss_value = self._lower_step(x, y)
            if loss_value is not None:
                total, count = total + loss_value, count + 1
            st.step += 1
            if upper_active and st.step % cfg.interval == 0:
                self._hyper_step()
            for cb in self.callbacks:
                getattr(cb, "on_step_end", lambda *a: None)(self, st.step, loss_value)
        record.update({
            "train_loss": total / max(1, count),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
            "upper_active": upper_active,
            "hyper_steps": st.hyper_steps,
            "skipped_steps": st.skipped_steps,
            "skipped_hyper_steps": st.skipped_hyper_steps,
            "alpha": self.loss.per_class(),
        })
        if self.eval_test and self.test is not None:
            record["test"] = self.evaluate(self.test).to_dict()
        st.seconds += record["seconds"]
        st.epoch += 1
        st.history.append(record)
        for cb in self.callbacks:
            getattr(cb, "on_epoch_end", lambda *a: None)(self, epoch, record)
        if self.run_dir is not None:
            self.save(self.run_dir / CHECKPOINT)
            append_jsonl(self.run_dir / METRICS, record)

    def _lower_step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        cfg, st = self.cfg, self.state
        lr = lr_at(st.step, self.steps_per_epoch, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with self._autocast():
            feats = self.features(self._prepare(x, y, True))
            logits = self.classifier(feats).float()
        loss = self.loss(logits, y)
        if not torch.isfinite(loss):
            self._bad(f"non-finite training loss at step {st.step}")
            st.skipped_steps += 1
            return None
        self._bad_in_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=[p for p in self.model.parameters() if p.requires_grad])
        self.optimizer.step()
        if self.upper is not None:
            self._train_buffer.append((feats.detach().float(), y, x))
        return float(loss.detach())

    @torch.no_grad()
    def _validation_pass(self, keep_features: bool) -> Metrics:
        val = self.upper.val
        logits, feats = self.predict(val)
        y = val.targets.to(self.device)
        g = val.groups.to(self.device) if val.groups is not None else None
        self._val_features = [(feats, y, g) if g is not None else (feats, y)] if keep_features else []
        return compute_metrics(logits, y, val.num_classes, g)

    def _val_batches(self) -> list[tuple[torch.Tensor, ...]]:
        val = self.upper.val
        n = min(len(val), self.cfg.hyper_batches * self.cfg.batch_size)
        gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + self.state.step)
        idx = torch.randperm(len(val), generator=gen)[:n]
        sub = val.subset(idx)
        loader = TensorLoader(sub, self.cfg.batch_size, shuffle=False, device=self.device)
        return [b if b[2] is not None else b[:2] for b in loader]

    def _hyper_step(self) -> None:
        st = self.state
        engine = self.upper.engine
        problem = HyperProblem(
            model=self.model,
            loss=self.loss,
            hparams=self.hparams,
            objective=self.upper.objective,
            train_batches=[(x, y) for _, y, x in self._train_buffer],
            val_batches=[] if engine.needs_features else self._val_batches(),
            train_forward=self.train_forward,
            val_forward=self.val_forward,
            optimizer=self.optimizer,
            weight_decay=self.cfg.weight_decay,
            classifier=self.classifier,
            features=self.features,
            augment_features=self.augment_features,
            train_features=[(f, y) for f, y, _ in self._train_buffer],
            val_features=self._val_features,
            augment_learned=self.policy is not None and bool(list(getattr(self.policy, "hparameters", list)())),
        )
        grads = engine(problem)
        norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)))
        skipped = not math.isfinite(norm)
        if skipped:
            st.skipped_hyper_steps += 1
            self._bad(f"non-finite hypergradient at step {st.step}")
        else:
            self._bad_in_row = 0
            scale = min(1.0, self.cfg.clip / (norm + 1e-12)) if self.cfg.clip > 0 else 1.0
            ramp = (st.epoch - self.upper_start_epoch + 1) / max(1e-9, self.cfg.upper_warmup_epochs)
            for group in self.upper_optimizer.param_groups:
                group["lr"] = self.cfg.upper_lr * min(1.0, ramp)
            for h, g in zip(self.hparams, grads, strict=True):
                h.grad = (g * scale).to(h.dtype)
            self.upper_optimizer.step()
            self.upper_optimizer.zero_grad(set_to_none=True)
            st.hyper_steps += 1
        for cb in self.callbacks:
            getattr(cb, "on_hyper_step", lambda *a: None)(self, st.step, norm, skipped)

    def _bad(self, what: str) -> None:
        self._bad_in_row += 1
        warnings.warn(f"{what}: step skipped ({self._bad_in_row} in a row)", RuntimeWarning, stacklevel=3)
        if self._bad_in_row >= self.cfg.max_bad_steps:
            raise NumericalError(
                f"{self._bad_in_row} non-finite steps in a row: lower --lr / --upper-lr or use --clip; "
                "the last good α is in the last checkpoint"
            )

    # checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        st = self.state
        return {
            "format": 1,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss.state_dict(),
            "policy": self.policy.state_dict() if self.policy is not None else None,
            "upper_optimizer": self.upper_optimizer.state_dict() if self.upper_optimizer else None,
            "loader": self.loader.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "state": {k: getattr(st, k) for k in ("epoch", "step", "hyper_steps", "skipped_steps",
                                                   "skipped_hyper_steps", "history", "seconds")},
            "train_buffer": list(self._train_buffer),
            "num_classes": self.train_data.num_classes,
        }

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        if ck.get("num_classes") != self.train_data.num_classes:
            raise ValueError(
                f"checkpoint has {ck.get('num_classes')} classes but the data has {self.train_data.num_classes}: "
                "resume with the same dataset, or start a new run folder"
            )
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.loss.load_state_dict(ck["loss"])
        if self.policy is not None and ck.get("policy") is not None:
            self.policy.load_state_dict(ck["policy"])
        if self.upper_optimizer is not None and ck.get("upper_optimizer") is not None:
            self.upper_optimizer.load_state_dict(ck["upper_optimizer"])
        self.loader.load_state_dict(ck["loader"])
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        self.state = TrainState(**ck["state"])
        self._train_buffer.clear()
        self._train_buffer.extend(tuple(t.to(self.device) for t in b) for b in ck.get("train_buffer", []))

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.state_dict())

    def load(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
