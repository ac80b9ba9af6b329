"""One training loop for everything: baselines, the bilevel search and the retrain.

The loop is the lower level; when a hypergradient engine is attached it also takes upper steps on
α every ``interval`` iterations once the warm-up is over. State is checkpointed atomically every
epoch and a resumed run continues bit-for-bit on CPU.
"""

from __future__ import annotations

import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bilevel import Bilevel, Draws, Pipeline
from .callbacks import TrainerCallback
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
from .hypergrad import HypergradEngine
from .io import append_jsonl, load_checkpoint, save_checkpoint, write_jsonl
from .losses import ParametricCrossEntropy
from .losses._functional import drw_weights
from .mixing import mix_images, mix_targets, sample_mix, split_mix
from .models import split_model
from .objectives import Metrics, compute_metrics
from .schedule import lr_at

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


_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen backbone's norm layer: always eval mode (its running statistics stay as loaded)."""
    return nn.Module.train(self, False)


class Trainer:
    """Trains ``model`` with ``loss`` on ``train``; with ``upper`` it also learns α (a search).

    Args:
        model: a classifier with timm's ``forward_features`` / ``forward_head`` / ``get_classifier``.
        loss: the parametric loss (holds α).
        train: the training split: uint8 images in memory, or a file list decoded (and, with its recipe,
            cropped) by ``cfg.loader_workers`` DataLoader workers.
        cfg: the run configuration.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        policy: a :class:`~ab_plugin.policies.ClassPolicy` (its ``sample_params(x, y)`` draws, applied as
            ``policy(x01, y, draws)``, are kept for the hyper-step's replay) or ``None``.
        upper: engine, objective and validation split of a search, or ``None`` for plain training.
        monitor: without ``upper``, a validation split whose metrics each epoch's record holds (``val``), as a
            search's does; evaluation only (eval mode, no gradient), so training is the same with or without it.
        run_dir: where the checkpoint and per-epoch metrics go; ``None`` keeps everything in memory.
        callbacks: :class:`TrainerCallback` instances (a ``policy`` that is one is called first).

    The training recipe applies to every run kind: ``cfg.mixup`` / ``cfg.cutmix`` mix each augmented,
    normalised batch until ``cfg.mixup_off`` (:mod:`ab_plugin.mixing`; the mix's draws travel with the
    policy's, so the buffer's replay is the same mix) and train on soft targets; ``cfg.drw_from`` gives the
    loss the class-balanced deferred weights of ``train``'s counts; ``cfg.rebalance_from`` keeps it plain
    cross-entropy until then.

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
        monitor: Split | None = None,
        run_dir: str | Path | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        for cb in callbacks:
            if not isinstance(cb, TrainerCallback):
                raise TypeError(f"Trainer callbacks subclass ab_plugin.TrainerCallback, got {type(cb).__name__}")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.drw_from is not None:  # the one place --drw-from reaches a loss, whatever built it
            loss.defer_weights(drw_weights(train.class_counts()), cfg.drw_from)
        if cfg.rebalance_from is not None:
            if upper is not None:  # α's hypergradient assumes the lower level trains with α all along
                raise ValueError("--rebalance-from is for baselines and retrains: a search applies the α it learns "
                                 "from the start")
            loss.defer_rebalancing(cfg.rebalance_from)
        self.loss = loss.to(self.device)
        self.policy = policy.to(self.device) if policy is not None else None
        self.train_data, self.upper = train, upper
        # the split whose metrics every epoch records (``record["val"]``): the upper level's, else ``monitor``
        self.val_split = upper.val if upper is not None else monitor
        self.mean, self.std = tuple(mean), tuple(std)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # a policy with hooks (cuda's curriculum) runs them first: the other callbacks see what it records
        self.callbacks = [*([self.policy] if isinstance(self.policy, TrainerCallback) else []), *callbacks]
        self.features, self.classifier = split_model(self.model)
        groups = self._param_groups()  # before DDP, which must see the frozen parameters as frozen
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
        self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=False)
        self.bilevel = self._make_bilevel() if upper is not None else None
        if self.bilevel is not None and not self.bilevel.uses_features and (cfg.mixup or cfg.cutmix):
            # those engines recompute training batches with fresh draws: a fresh mix would not match the targets
            raise ValueError(f"--mixup / --cutmix need the head engine in a search (the {cfg.engine} engine does "
                             "not replay the mix its buffered targets were made with): use --engine head")
        if self.bilevel is not None and hasattr(policy, "bank_draws"):
            # the bank's mixture reaches the training loss through the head engine's weighted targets only; a
            # mixed image has two classes' mixtures
            if not self.bilevel.uses_features or cfg.mixup or cfg.cutmix:
                raise ValueError("--augment bank is learned by the head engine on unmixed batches: use --engine head "
                                 "without --mixup / --cutmix")
        self.pipeline = Pipeline(self.model, self.features, self.classifier, self._train_input,
                                 lambda x: self._model_input(x), self._val_batches, self._autocast, self.optimizer)
        self.state = TrainState()
        self._bad_in_row = 0
        self._amp = cfg.amp and self.device.type == "cuda"
        if is_distributed():
            torch.manual_seed(cfg.seed + rank())  # the ranks' augmentations draw different random numbers

    # set-up --------------------------------------------------------------------------------------
    def _param_groups(self) -> Any:
        """What the model's SGD trains: every parameter in one group (the default); with ``freeze_backbone``
        only the classifier's (the backbone's get ``requires_grad`` False and its norm layers stay in eval
        mode); with ``backbone_lr_scale < 1`` the classifier's group first, then the backbone's, whose
        ``lr_scale`` multiplies the scheduled lr at every step."""
        cfg = self.cfg
        if not cfg.freeze_backbone and cfg.backbone_lr_scale == 1.0:
            return self.model.parameters()
        head_ids = {id(p) for p in self.classifier.parameters()}
        head = [p for p in self.model.parameters() if id(p) in head_ids]
        backbone = [p for p in self.model.parameters() if id(p) not in head_ids]
        if not head:
            raise ValueError("--freeze-backbone / --backbone-lr-scale need a model whose classifier has parameters")
        if cfg.freeze_backbone:
            for p in backbone:
                p.requires_grad_(False)
            head_modules = {id(m) for m in self.classifier.modules()}
            for m in self.model.modules():
                if id(m) not in head_modules and isinstance(m, _NORM_LAYERS):
                    m.train = types.MethodType(_stay_in_eval, m)  # model.train() leaves it in eval mode
                    m.eval()
            return [{"params": head, "lr_scale": 1.0}]
        return [{"params": head, "lr_scale": 1.0}, {"params": backbone, "lr_scale": cfg.backbone_lr_scale}]

    def _make_bilevel(self) -> Bilevel:
        c = self.cfg
        per_epoch = self.steps_per_epoch / c.interval  # hyper-steps per upper epoch
        total = int((c.epochs - self.upper_start_epoch) * per_epoch)
        upper = dict(optimizer=c.upper_optimizer, lr=c.upper_lr, momentum=c.upper_momentum,
                     weight_decay=c.upper_weight_decay, clip=c.clip,
                     warmup_steps=round(c.upper_warmup_epochs * per_epoch),
                     average_from=int(total * (1 - c.upper_average)) if c.upper_average > 0 else None)
        # validation features no older than the buffered training features (hyper_batches steps), so the
        # classifier the head engine solves for sees both sides with about the same backbone
        return Bilevel(self.loss, self.upper.engine, self.upper.objective, policy=self.policy,
                       hyper_batches=c.hyper_batches, weight_decay=c.weight_decay, upper=upper,
                       augment_hypergrad=c.augment_hypergrad, augment_entropy=c.augment_entropy,
                       val_max_age=c.hyper_batches)

    @property
    def learns(self) -> bool:
        """Whether this run has an upper level with something to learn (α or A)."""
        return self.bilevel is not None and bool(self.bilevel.hparams)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def upper_start_epoch(self) -> int:
        return int(round(self.cfg.upper_start * self.cfg.epochs))

    # forward paths ------------------------------------------------------------------------------
    def _model_input(self, x: torch.Tensor, y: torch.Tensor | None = None, draws: Draws | None = None, *,
                     augment: bool = False) -> torch.Tensor:
        """A batch as stored (uint8 or [0, 1] float) -> the model's input: augmented (with ``draws`` when given,
        else fresh ones) when ``augment``, normalised, mixed when ``draws`` hold a mix, channels-last when
        configured. ``y`` may be soft targets when ``draws`` hold a mix (it carries the labels)."""
        policy_draws, mix = split_mix(draws)
        x01 = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        if augment and self.policy is not None:
            x01 = self.policy(x01, y if mix is None else mix["mix_labels"], policy_draws)
        xn = normalize(x01, self.mean, self.std)
        if augment and mix is not None:
            xn = mix_images(xn, mix)
        return xn.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else xn

    def _train_input(self, x: torch.Tensor, y: torch.Tensor, draws: Draws | None) -> torch.Tensor:
        return self._model_input(x, y, draws, augment=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp)

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
        if self.learns:
            self.bilevel.upper.use_average()  # a search exports α averaged over its last part (if set)
        return self.state

    def _epoch(self) -> None:
        cfg, st = self.cfg, self.state
        epoch = st.epoch
        t0 = time.perf_counter()
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch)
        self.loss.set_progress(epoch / cfg.epochs)
        upper_active = self.learns and epoch >= self.upper_start_epoch
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
                cb.on_step_end(self, st.step, loss_value)
        if self.val_split is not None:
            # one pass over the validation split per epoch, after its training: the epoch's validation metrics
            # (what a pruner reads) and, with an upper level, the head engine's features for the next hyper-steps
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
            cb.on_epoch_end(self, epoch, record)
        if self.run_dir is not None:
            self.save(self.run_dir / CHECKPOINT)
            if is_rank_zero():
                append_jsonl(self.run_dir / METRICS, record)

    def _draws(self, x: torch.Tensor, y: torch.Tensor) -> Draws | None:
        """The batch's random draws: the policy's (first, as without a mix), then the mix's (until ``mixup_off``),
        in one dict."""
        cfg = self.cfg
        draws = self.policy.sample_params(x, y) if self.policy is not None else None
        if cfg.mixup_off is not None and self.state.epoch >= cfg.mixup_off * cfg.epochs:
            return draws
        mix = sample_mix(y, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix)
        return draws if mix is None else {**(draws or {}), **mix}

    def _lower_step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        cfg, st = self.cfg, self.state
        lr = lr_at(st.step, self.steps_per_epoch, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr
        draws = self._draws(x, y)
        with self._autocast():
            inputs = self._train_input(x, y, draws)
            feats, logits = self._lower(inputs)
            logits = logits.float()
        _, mix = split_mix(draws)
        # a mixed batch trains on (and is buffered with) soft targets [B, C]
        target = y if mix is None else mix_targets(logits.shape[1], mix, *inputs.shape[-2:])
        # the union's loss on every rank; DDP averages the ranks' gradients of N × their share into the union's
        loss = union_share(self.loss)(logits, target)
        if not torch.isfinite(loss):
            self._bad(f"non-finite training loss at step {st.step}")
            st.skipped_steps += 1
            return None
        self._bad_in_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        (loss * world_size() if is_distributed() else loss).backward(
            inputs=[p for p in self.model.parameters() if p.requires_grad])
        self.optimizer.step()
        if self.bilevel is not None:
            self.bilevel.push(target, features=feats, inputs=x, draws=draws)
        return float(loss.detach())

    @torch.no_grad()
    def _validation_pass(self) -> Metrics:
        val = self._rank_part(self.val_split)
        logits, feats = self.predict(val)
        y = val.targets.to(self.device)
        g = val.groups.to(self.device) if val.groups is not None else None
        if self.bilevel is not None:
            self.bilevel.set_val_features([(feats, y, g) if g is not None else (feats, y)], self.state.step)
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

    def _hyper_step(self) -> None:
        st, cfg = self.state, self.cfg
        lr = lr_at(st.step, self.steps_per_epoch, cfg)
        norm = self.bilevel.step(self.pipeline, step=st.step, lr_scale=lr / cfg.lr if cfg.upper_decay else 1.0,
                                 backbone_step=lr * cfg.interval)
        if norm is None:
            st.skipped_hyper_steps += 1
            self._bad(f"non-finite hypergradient at step {st.step}")
        else:
            self._bad_in_row = 0
            st.hyper_steps += 1
        for cb in self.callbacks:
            cb.on_hyper_step(self, st.step, self.bilevel.upper.last_norm, norm is None)

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
            "format": 3,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss.state_dict(),
            "policy": self.policy.state_dict() if self.policy is not None else None,
            # the bilevel core's shared part; its training buffer differs between ranks (below)
            "bilevel": self.bilevel.state_dict(buffer=False) if self.bilevel is not None else None,
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
            "bilevel_buffer": self.bilevel.state_dict()["buffer"] if self.bilevel is not None else [],
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
        if self.bilevel is not None and ck.get("bilevel") is not None:
            self.bilevel.load_state_dict({**ck["bilevel"], "buffer": part["bilevel_buffer"]})

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        if ck.get("format") != 3:
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
        self.loader.load_state_dict(ck["loader"])
        self.state = TrainState(**ck["state"])
        self._load_rank_state(ck)

    def save(self, path: Path) -> None:
        """Rank 0 writes (atomically); every rank returns once the file is complete."""
        if self.bilevel is not None:
            check_same(self.bilevel.hparams.all, "α")
        state = self.state_dict()  # a collective on several ranks: every rank builds it
        if is_rank_zero():
            save_checkpoint(path, state)
        barrier()

    def load(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
