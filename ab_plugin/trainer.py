"""One training loop for everything: baselines, the bilevel search and the retrain.

The loop is the lower level; when a hypergradient engine is attached it also takes upper steps on
α every ``interval`` iterations once the warm-up is over. State is checkpointed atomically every
epoch and a resumed run continues bit-for-bit on CPU.
"""

from __future__ import annotations

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
from .data import Split, create_loader, normalize
from .distributed import (
    all_reduce_mean_,
    barrier,
    cat_ranks,
    check_same,
    gather_objects,
    is_distributed,
    is_rank_zero,
    local_device,
    rank,
    shard,
    union_share,
    world_size,
)
from .evaluation import metrics_of, predict
from .hypergrad import FeatureProblem, HypergradEngine, ModelProblem, backbone_policy_grad, frozen_norm_stats
from .io import append_jsonl, load_checkpoint, save_checkpoint, write_jsonl
from .losses import ParametricCrossEntropy
from .models import split_model
from .objectives import Metrics, compute_metrics
from .schedule import lr_at
from .upper import UpperLevel

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NumericalError(RuntimeError):
    """Too many consecutive non-finite losses or hypergradients."""


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means (``auto``: CUDA if available); under torchrun each rank's own GPU."""
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available: use --device cpu or auto")
    return local_device(torch.device(name))


@dataclass
class HyperSetup:
    """What turns a training run into a search: the engine, the objective and the validation split."""

    engine: HypergradEngine
    objective: Callable[..., torch.Tensor]
    val: Split


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # lower iterations completed
    hyper_steps: int = 0
    skipped_steps: int = 0
    skipped_hyper_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class _FeaturesAndLogits(nn.Module):
    """``x -> (features, logits)`` of ``model`` in one forward, so that DDP sees the lower step (its gradient
    hooks need the forward to go through the DDP wrapper) while the features stay available to the buffer."""

    def __init__(self, model: nn.Module, features: Callable[[torch.Tensor], torch.Tensor],
                 classifier: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.split = (features, classifier)  # a tuple: not registered twice as sub-modules

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, classifier = self.split
        feats = features(x)
        return feats, classifier(feats)


class Trainer:
    """Trains ``model`` with ``loss`` on ``train``; with ``upper`` it also learns α (a search).

    Args:
        model: a classifier with timm's ``forward_features`` / ``forward_head`` / ``get_classifier``.
        loss: the parametric loss (holds α).
        train: the training split: uint8 images in memory, or a file list decoded (and, with its recipe,
            cropped) by ``cfg.loader_workers`` DataLoader workers.
        cfg: the run configuration.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        policy: augmentation module ``policy(x01, y) -> x01`` or ``None``.
        upper: engine, objective and validation split of a search, or ``None`` for plain training.
        test: the test split (kept for the caller's evaluation).
        run_dir: where the checkpoint and per-epoch metrics go; ``None`` keeps everything in memory.
        callbacks: objects with any of the hooks ``on_epoch_start(trainer, epoch)``,
            ``on_step_end(trainer, step, loss)``, ``on_hyper_step(trainer, step, norm, skipped)``,
            ``on_epoch_end(trainer, epoch, record)``.

    Under ``torchrun`` (a default process group of N ranks) the run is the single-process run on the
    union of the ranks' batches: each rank takes its ``1/N`` of every global batch of ``cfg.batch_size``,
    the lower level is DDP on the union's loss, hyper-steps compute the union's hypergradient, rank 0
    writes the checkpoint (holding every rank's random state and buffer) and the metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: ParametricCrossEntropy,
        train: Split,
        cfg: Config,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        policy: nn.Module | None = None,
        upper: HyperSetup | None = None,
        test: Split | None = None,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Any] = (),
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
        self.features, self.classifier = split_model(self.model)
        if cfg.batch_size % world_size():
            raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple of the "
                             f"{world_size()} ranks")
        self.loader = create_loader(train, cfg.batch_size, shuffle=True, drop_last=len(train) >= cfg.batch_size,
                                    device=self.device, seed=cfg.seed, num_workers=cfg.loader_workers, augment=True,
                                    shard=(rank(), world_size()))
        self._lower = _FeaturesAndLogits(self.model, self.features, self.classifier)
        if is_distributed():
            self._lower = nn.parallel.DistributedDataParallel(  # starts every rank from rank 0's weights
                self._lower, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=False)
        # the learned policy's raw parameters A (empty for a fixed policy or none)
        self.policy_params: list[torch.Tensor] = list(getattr(policy, "hparameters", list)())
        self.hparams: list[torch.Tensor] = list(loss.hparameters()) + self.policy_params
        self.upper_level = self._make_upper_level() if upper is not None and self.hparams else None
        self.state = TrainState()
        self._train_buffer: deque = deque(maxlen=cfg.hyper_batches)
        self._val_features: list[tuple[torch.Tensor, ...]] = []
        self._val_features_step = -1  # lower step at which the validation features were computed
        self._bad_in_row = 0
        self._amp = cfg.amp and self.device.type == "cuda"
        if is_distributed():
            torch.manual_seed(cfg.seed + rank())  # the ranks' augmentations draw different random numbers

    # set-up --------------------------------------------------------------------------------------
    def _make_upper_level(self) -> UpperLevel:
        c = self.cfg
        per_epoch = self.steps_per_epoch / c.interval  # hyper-steps per upper epoch
        total = int((c.epochs - self.upper_start_epoch) * per_epoch)
        return UpperLevel(
            self.hparams, optimizer=c.upper_optimizer, lr=c.upper_lr, momentum=c.upper_momentum,
            weight_decay=c.upper_weight_decay, clip=c.clip, warmup_steps=round(c.upper_warmup_epochs * per_epoch),
            average_from=int(total * (1 - c.upper_average)) if c.upper_average > 0 else None,
        )

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

    def predict(self, data: Split, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, C]`` and features ``[N, D]`` of ``data`` in eval mode (no augmentation)."""
        return predict(self.model, data, mean=self.mean, std=self.std, device=self.device, batch_size=batch_size,
                       channels_last=self.cfg.channels_last, amp=self._amp, num_workers=self.cfg.loader_workers)

    def evaluate(self, data: Split) -> Metrics:
        return metrics_of(self.predict(data)[0], data)

    # the loop -----------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainState:
        if resume:
            self.load(self.run_dir / CHECKPOINT)
            # epochs logged after the checkpoint (a kill between the two writes) are redone
            if is_rank_zero():
                write_jsonl(self.run_dir / METRICS, self.state.history)
            if self.upper is not None and self.state.epoch > 0:
                self._validation_pass()  # the same features the uninterrupted run holds at this point
        self.model.train()
        while self.state.epoch < self.cfg.epochs:
            self._epoch()
        if self.upper_level is not None:
            self.upper_level.use_average()  # a search exports α averaged over its last part (if set)
        return self.state

    def _epoch(self) -> None:
        cfg, st = self.cfg, self.state
        epoch = st.epoch
        t0 = time.perf_counter()
        for cb in self.callbacks:
            getattr(cb, "on_epoch_start", lambda *a: None)(self, epoch)
        self.loss.set_progress(epoch / cfg.epochs)
        upper_active = self.upper_level is not None and epoch >= self.upper_start_epoch
        record: dict[str, Any] = {"epoch": epoch + 1}
        total, count = 0.0, 0
        for x, y, _ in self.loader:
            loss_value = self._lower_step(x, y)
            if is_distributed():
                # each rank's BatchNorm saw its own shard: averaged, the running statistics are the same on every
                # rank (as the checkpoint holds them) and their means are those of the union's batch
                all_reduce_mean_([b for b in self.model.buffers() if b.is_floating_point()])
            if loss_value is not None:
                total, count = total + loss_value, count + 1
            st.step += 1
            if upper_active and st.step % cfg.interval == 0:
                self._hyper_step()
            for cb in self.callbacks:
                getattr(cb, "on_step_end", lambda *a: None)(self, st.step, loss_value)
        if self.upper is not None:
            # one pass over the validation split per epoch, after its training: the epoch's validation metrics
            # (what a pruner reads) and the head engine's features for the next hyper-steps
            record["val"] = self._validation_pass().to_dict()
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
        st.seconds += record["seconds"]
        st.epoch += 1
        st.history.append(record)
        for cb in self.callbacks:
            getattr(cb, "on_epoch_end", lambda *a: None)(self, epoch, record)
        if self.run_dir is not None:
            self.save(self.run_dir / CHECKPOINT)
            if is_rank_zero():
                append_jsonl(self.run_dir / METRICS, record)

    def _lower_step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        cfg, st = self.cfg, self.state
        lr = lr_at(st.step, self.steps_per_epoch, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with self._autocast():
            feats, logits = self._lower(self._prepare(x, y, True))
            logits = logits.float()
        # the union's loss on every rank; DDP averages the ranks' gradients of N × their share into the union's
        loss = union_share(self.loss)(logits, y)
        if not torch.isfinite(loss):
            self._bad(f"non-finite training loss at step {st.step}")
            st.skipped_steps += 1
            return None
        self._bad_in_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        (loss * world_size() if is_distributed() else loss).backward(
            inputs=[p for p in self.model.parameters() if p.requires_grad])
        self.optimizer.step()
        if self.upper is not None:
            self._train_buffer.append((feats.detach().float(), y, x))
        return float(loss.detach())

    @torch.no_grad()
    def _validation_pass(self) -> Metrics:
        val = self._rank_part(self.upper.val)
        logits, feats = self.predict(val)
        y = val.targets.to(self.device)
        g = val.groups.to(self.device) if val.groups is not None else None
        self._val_features = [(feats, y, g) if g is not None else (feats, y)]
        self._val_features_step = self.state.step
        return compute_metrics(cat_ranks(logits), cat_ranks(y), val.num_classes, None if g is None else cat_ranks(g))

    @staticmethod
    def _rank_part(data: Split) -> Split:
        """This rank's contiguous share of ``data`` (all of it in a single process)."""
        return data.subset(torch.arange(len(data))[shard(len(data))]) if is_distributed() else data

    def _val_batches(self, batches: int | None = None) -> list[tuple[torch.Tensor, ...]]:
        """At most ``batches`` (default ``hyper_batches``) validation batches, drawn afresh (seeded by the step)
        per hyper-step; the first ``k`` batches of a call with ``batches=k`` are those of a default call."""
        val = self.upper.val
        n = min(len(val), (batches or self.cfg.hyper_batches) * self.cfg.batch_size)
        gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + self.state.step)
        idx = torch.randperm(len(val), generator=gen)[:n]
        sub = val.subset(idx)
        loader = create_loader(sub, self.cfg.batch_size, shuffle=False, device=self.device,
                               num_workers=self.cfg.loader_workers, shard=(rank(), world_size()))
        return [b if b[2] is not None else b[:2] for b in loader]

    @torch.no_grad()
    def _fresh_val_features(self) -> list[tuple[torch.Tensor, ...]]:
        """Validation features no older than the buffered training features (``hyper_batches`` steps),
        so the classifier the head engine solves for sees both sides with about the same backbone."""
        if not self._val_features or self.state.step - self._val_features_step > self.cfg.hyper_batches:
            was = self.model.training
            self.model.eval()
            feats = []
            for x, *rest in self._val_batches():
                with self._autocast():
                    feats.append((self.features(self._prepare(x, None, False)).float(), *rest))
            self.model.train(was)
            self._val_features, self._val_features_step = feats, self.state.step
        return self._val_features

    def _feature_problem(self) -> FeatureProblem:
        train = [(f, y) for f, y, _ in self._train_buffer]
        if self.policy_params:
            # the newest batch is recomputed with a graph from the policy parameters to its features;
            # it keeps its share (one batch of the buffer) in the training loss
            _, y, x = self._train_buffer[-1]
            train[-1] = (self.augment_features(x, y), y)
        return FeatureProblem(self.classifier, self.loss, self.upper.objective, self.hparams, train,
                              self._fresh_val_features(), self.cfg.weight_decay)

    def _model_problem(self) -> ModelProblem:
        return ModelProblem(self.model, self.loss, self.upper.objective, self.hparams,
                            [(x, y) for _, y, x in self._train_buffer], self._val_batches(),
                            self.train_forward, self.val_forward, self.cfg.weight_decay, self.optimizer)

    def _hyper_step(self) -> None:
        st, cfg = self.state, self.cfg
        engine = self.upper.engine
        wants_features = getattr(engine, "problem", ModelProblem) is FeatureProblem  # a plain callable gets the model
        problem = self._feature_problem() if wants_features else self._model_problem()
        grads = engine(problem)
        if wants_features:  # the other engines' θ holds the backbone already
            grads = self._with_backbone_term(grads)
        grads = self._with_entropy_bonus(grads)
        lr_scale = lr_at(st.step, self.steps_per_epoch, cfg) / cfg.lr if cfg.upper_decay else 1.0
        norm = self.upper_level.step(grads, lr_scale=lr_scale)
        if norm is None:
            st.skipped_hyper_steps += 1
            self._bad(f"non-finite hypergradient at step {st.step}")
        else:
            self._bad_in_row = 0
            st.hyper_steps += 1
        for cb in self.callbacks:
            getattr(cb, "on_hyper_step", lambda *a: None)(self, st.step, self.upper_level.last_norm, norm is None)

    def _with_backbone_term(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """With ``augment_hypergrad="backbone"`` (called for the head engine only), adds the backbone's response
        to the policy to A's hypergradient (:func:`~ab_plugin.hypergrad.backbone_policy_grad`, on the newest
        training batch and one validation batch, with the backbone's inverse curvature taken as the learning
        rate times the steps per hyper-step)."""
        if self.cfg.augment_hypergrad != "backbone" or not self.policy_params:
            return grads
        head = {id(p) for p in self.classifier.parameters()}
        backbone = [p for p in self.model.parameters() if p.requires_grad and id(p) not in head]
        _, y, x = self._train_buffer[-1]
        xv, yv, *gv = self._val_batches(1)[0]
        seed = self.cfg.seed * 100003 + self.state.step

        def train_loss() -> torch.Tensor:
            with frozen_norm_stats(self.model), self._autocast():
                return self.loss(self.model(self._prepare(x, y, True)).float(), y)

        def val_loss() -> torch.Tensor:
            self.model.eval()
            try:
                return self.upper.objective(self.val_forward(xv), yv, gv[0] if gv else None)
            finally:
                self.model.train()

        step = lr_at(self.state.step, self.steps_per_epoch, self.cfg) * self.cfg.interval
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the augmentation draws leave the run's random stream as it was
            torch.manual_seed(seed)
            extra = backbone_policy_grad(train_loss, val_loss, backbone, self.policy_params, step)
        where = {id(h): i for i, h in enumerate(self.hparams)}
        grads = list(grads)
        for a, e in zip(self.policy_params, extra, strict=True):
            grads[where[id(a)]] = grads[where[id(a)]] + e
        return grads

    def _with_entropy_bonus(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Hypergradients of the objective minus ``augment_entropy`` x the policy's mean gate entropy."""
        weight = self.cfg.augment_entropy
        if not weight or not self.policy_params:
            return grads
        extra = torch.autograd.grad(-weight * self.policy.gate_entropy(), self.hparams, allow_unused=True)
        return [g if e is None else g + e for g, e in zip(grads, extra, strict=True)]

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
            "format": 2,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss.state_dict(),
            "policy": self.policy.state_dict() if self.policy is not None else None,
            "upper": self.upper_level.state_dict() if self.upper_level is not None else None,
            "loader": self.loader.state_dict(),
            "state": {k: getattr(st, k) for k in ("epoch", "step", "hyper_steps", "skipped_steps",
                                                   "skipped_hyper_steps", "history", "seconds")},
            "num_classes": self.train_data.num_classes,
            # what differs between ranks: each rank's part, in rank order, on several ranks
            **({"ranks": gather_objects(self._rank_state())} if is_distributed() else self._rank_state()),
        }

    def _rank_state(self) -> dict[str, Any]:
        return {
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "train_buffer": [tuple(t.cpu() for t in b) for b in self._train_buffer] if is_distributed()
            else list(self._train_buffer),
        }

    def _load_rank_state(self, ck: dict[str, Any]) -> None:
        ranks = ck.get("ranks")
        if (len(ranks) if ranks is not None else 1) != world_size():
            raise ValueError(f"the checkpoint was written by {len(ranks) if ranks else 1} rank(s), this run has "
                             f"{world_size()}: resume with the same number of processes")
        part = ranks[rank()] if ranks is not None else ck
        torch.set_rng_state(part["rng"])
        if part.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(part["cuda_rng"])
        self._train_buffer.clear()
        self._train_buffer.extend(tuple(t.to(self.device) for t in b) for b in part.get("train_buffer", []))

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        if ck.get("format") != 2:
            raise ValueError("the checkpoint was written by an older ab-plugin: start the run again (--overwrite)")
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
        if self.upper_level is not None and ck.get("upper") is not None:
            self.upper_level.load_state_dict(ck["upper"])
        self.loader.load_state_dict(ck["loader"])
        self.state = TrainState(**ck["state"])
        self._load_rank_state(ck)

    def save(self, path: Path) -> None:
        """Rank 0 writes (atomically); every rank returns once the file is complete."""
        check_same(self.hparams, "α")
        state = self.state_dict()  # a collective on several ranks: every rank builds it
        if is_rank_zero():
            save_checkpoint(path, state)
        barrier()

    def load(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
