"""The bilevel core: the one hyper-step that every driver of the upper level shares.

A driver runs the lower level its own way (the search :class:`~ab_plugin.trainer.Trainer` owns its loop,
DDP and checkpoints; :class:`~ab_plugin.integrations.AutoBalanceCriterion` hooks into a caller's loop) and
hands the core what a hyper-step needs through a small seam:

- :meth:`Bilevel.push` after each training step: the batch's targets with its detached classifier
  inputs and / or its input batch and augmentation draws;
- :meth:`Bilevel.step` when a hyper-step is due: assembles the engine's problem (captured features for
  the ``head`` engine, input batches for the full-model engines), replays the newest batch's augmentation
  with a graph to the policy A, adds the backbone term and the entropy bonus to A's hypergradient, and
  steps α and A with the :class:`~ab_plugin.upper.UpperLevel`;
- :meth:`Bilevel.state_dict` / :meth:`Bilevel.load_state_dict`.

The driver describes its model and data with a :class:`Pipeline`, passed to each step; it also keeps the
step's side effects in bounds (the criterion restores the caller's module state, the Trainer needs none).
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .hypergrad import FeatureProblem, HypergradEngine, ModelProblem, backbone_policy_grad, uses_features
from .hypergrad._engines import frozen_norm_stats, full_precision
from .losses import ParametricCrossEntropy
from .upper import UpperLevel

__all__ = ["Bilevel", "Hyperparameters", "Pipeline", "full_precision"]

Batch = tuple[Tensor, ...]
Draws = dict[str, Tensor]
#: ``(logits [B, C], y [B], groups [B] | None) -> scalar``
Objective = Callable[..., Tensor]
AUGMENT_HYPERGRADS = ("auto", "head", "backbone")


@dataclass(frozen=True)
class Hyperparameters:
    """What the upper level learns: α (the loss's raw tensors) and A (the policy's), in that order."""

    loss: tuple[nn.Parameter, ...]
    policy: tuple[nn.Parameter, ...] = ()

    @property
    def all(self) -> list[nn.Parameter]:
        """α then A: the order of every hypergradient list."""
        return [*self.loss, *self.policy]

    def __bool__(self) -> bool:
        return bool(self.loss or self.policy)


@dataclass
class Pipeline:
    """How a driver's batches reach its model; the core calls it and never owns it.

    Attributes:
        model: the network, ``model(x) -> logits [B, C]``.
        features: ``x -> [B, D]`` classifier inputs; ``classifier``: ``[B, D] -> [B, C]``.
        train_input: ``(inputs, y [B], draws) -> x``: a buffered batch as the model takes it in training. With
            ``draws`` the recorded augmentation is replayed exactly, with a graph to A; with ``None`` the batch
            goes in as the driver's training forward would take it (the Trainer draws a fresh augmentation, the
            criterion's inputs are already the model's inputs).
        val_input: ``x -> x``: a validation batch as the model takes it (no augmentation).
        val_batches: ``k -> [(x, y[, groups])]``: the validation batches of this hyper-step, ``k`` of them or
            (``None``) the driver's default count; a call with ``k`` gives the first ``k`` of a default call.
        autocast: a context for the forward passes (the lower level's mixed precision); none by default.
        optimizer: the lower optimizer, read by the ``unrolled`` engine and never stepped.
    """

    model: nn.Module
    features: Callable[[Tensor], Tensor]
    classifier: nn.Module
    train_input: Callable[[Tensor, Tensor, Draws | None], Tensor]
    val_input: Callable[[Tensor], Tensor]
    val_batches: Callable[[int | None], list[Batch]]
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    optimizer: torch.optim.Optimizer | None = None

    @property
    def device(self) -> torch.device:
        first = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        return torch.device("cpu") if first is None else first.device

    def train_logits(self, inputs: Tensor, y: Tensor, draws: Draws | None = None,
                     model: nn.Module | None = None) -> Tensor:
        """``[B, C]`` float32 training logits of a buffered batch, by ``model`` (a functional copy) or :attr:`model`."""
        with self.autocast():
            return full_precision((model or self.model)(self.train_input(inputs, y, draws)))

    def val_logits(self, x: Tensor, model: nn.Module | None = None) -> Tensor:
        """``[B, C]`` float32 logits of a validation batch (no augmentation)."""
        with self.autocast():
            return full_precision((model or self.model)(self.val_input(x)))


@dataclass
class _Entry:
    """One buffered training batch: targets ``[B]`` / ``[B, C]`` with what the engine kind reads."""

    target: Tensor
    features: Tensor | None = None  # detached classifier inputs [B, D]
    inputs: Tensor | None = None  # the batch as the driver buffered it (for replay and the full-model engines)
    draws: Draws | None = None  # the augmentation draws of ``inputs`` (replay)

    def to_state(self) -> dict[str, Any]:
        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu().clone()

        return {"target": cpu(self.target), "features": cpu(self.features), "inputs": cpu(self.inputs),
                "draws": None if self.draws is None else {k: cpu(v) for k, v in self.draws.items()}}


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    was = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was)


class _ValFeatures:
    """Cached validation features: recomputed when older than ``max_age`` lower steps or used ``max_uses``
    times (``None``: no bound of that kind)."""

    def __init__(self, max_age: int | None, max_uses: int | None) -> None:
        self.max_age, self.max_uses = max_age, max_uses
        self.batches: list[Batch] = []
        self.step, self.uses = -1, 0

    def set(self, batches: list[Batch], step: int) -> None:
        self.batches, self.step, self.uses = batches, step, 0

    def clear(self) -> None:
        self.set([], -1)

    def get(self, step: int, compute: Callable[[], list[Batch]]) -> list[Batch]:
        stale = (not self.batches or (self.max_age is not None and step - self.step > self.max_age)
                 or (self.max_uses is not None and self.uses >= self.max_uses))
        if stale:
            self.set(compute(), step)
        self.uses += 1
        return self.batches


class Bilevel:
    """The upper level's state and its hyper-step, for any lower loop.

    Args:
        loss: the parametric loss (its ``hparameters()`` are α).
        engine: the hypergradient engine; its ``problem`` kind decides what :meth:`push` must be given.
        objective: the validation objective ``(logits, y, groups | None) -> scalar``.
        policy: a learnable augmentation policy (its ``hparameters()`` are A) or ``None``.
        hyper_batches: how many of the newest training batches a hyper-step uses.
        weight_decay: the L2 coefficient of the inner problem (the lower optimizer's).
        upper: keyword options of the :class:`~ab_plugin.upper.UpperLevel` (optimizer, lr, clip, ...).
        augment_hypergrad: ``head`` (A's hypergradient from the classifier's refit only) or ``backbone`` (plus
            the backbone's response to A, :func:`~ab_plugin.hypergrad.backbone_policy_grad`; ``head`` engine);
            ``auto``: ``backbone``, but ``head`` for a bank, whose backbone term costs a double backward through
            every strength of the bank and moved its estimate little (``benchmarks/RESULTS.md``).
        augment_entropy: weight of the policy's gate-entropy bonus on the upper objective.
        val_max_age, val_max_uses: when the ``head`` engine's validation features are recomputed: once older
            than this many lower steps, or after this many hyper-steps used them (``None``: no such bound).
    """

    def __init__(
        self,
        loss: ParametricCrossEntropy,
        engine: HypergradEngine,
        objective: Objective,
        *,
        policy: nn.Module | None = None,
        hyper_batches: int,
        weight_decay: float,
        upper: Mapping[str, Any] | None = None,
        augment_hypergrad: str = "head",
        augment_entropy: float = 0.0,
        val_max_age: int | None = None,
        val_max_uses: int | None = None,
    ) -> None:
        if augment_hypergrad not in AUGMENT_HYPERGRADS:
            raise ValueError(f"augment_hypergrad must be one of {', '.join(AUGMENT_HYPERGRADS)}, "
                             f"got {augment_hypergrad!r}")
        if hyper_batches < 1:
            raise ValueError(f"hyper_batches must be >= 1, got {hyper_batches}")
        self.loss, self.engine, self.objective, self.policy = loss, engine, objective, policy
        learned = tuple(policy.hparameters()) if policy is not None and hasattr(policy, "hparameters") else ()
        self.hparams = Hyperparameters(tuple(loss.hparameters()), learned)
        self.weight_decay = float(weight_decay)
        self.augment_entropy = float(augment_entropy)
        if augment_hypergrad == "auto":
            augment_hypergrad = "head" if self._bank else "backbone"
        self.augment_hypergrad = augment_hypergrad
        self.upper = UpperLevel(self.hparams.all, **dict(upper or {}))
        self._buffer: deque[_Entry] = deque(maxlen=int(hyper_batches))
        self._val = _ValFeatures(val_max_age, val_max_uses)

    @property
    def uses_features(self) -> bool:
        """Whether the engine works on captured classifier inputs (``head``) rather than input batches."""
        return uses_features(self.engine)

    @property
    def buffered(self) -> int:
        """Training batches held for the next hyper-step."""
        return len(self._buffer)

    @property
    def targets(self) -> list[Tensor]:
        """The buffered batches' targets, oldest first (``[B]`` labels or ``[B, C]`` soft targets)."""
        return [e.target for e in self._buffer]

    # ------------------------------------------------------------------------------------------ seam
    def push(self, target: Tensor, *, features: Tensor | None = None, inputs: Tensor | None = None,
             draws: Draws | None = None) -> None:
        """Buffer one training batch (the oldest beyond ``hyper_batches`` is dropped).

        Args:
            target: ``[B]`` labels or ``[B, C]`` soft targets.
            features: ``[B, D]`` classifier inputs of the batch (the ``head`` engine needs them).
            inputs: the batch as :attr:`Pipeline.train_input` takes it (the full-model engines need it; with a
                learned policy, the ``head`` engine replays the newest one).
            draws: the augmentation draws that made the batch's training input from ``inputs``.
        """
        name = getattr(self.engine, "name", type(self.engine).__name__)
        if self.uses_features and features is None:
            raise ValueError(f"the {name} engine needs the batch's classifier inputs (features=...)")
        if not self.uses_features and inputs is None:
            raise ValueError(f"the {name} engine needs the batch's inputs (inputs=...)")
        replayable = bool(self.hparams.policy) and draws is not None and inputs is not None
        if self.uses_features:
            if self._buffer:  # only the newest batch is ever replayed: older ones keep their features alone
                self._buffer[-1].inputs = self._buffer[-1].draws = None
            if not replayable:
                inputs = draws = None
        else:
            features = None  # the full-model engines recompute everything from the inputs
        self._buffer.append(_Entry(target.detach(), None if features is None else full_precision(features.detach()),
                                   None if inputs is None else inputs.detach(), draws if replayable else None))

    def set_val_features(self, batches: list[Batch], step: int) -> None:
        """Validation features ``[(features [B, D], y[, groups])]`` the driver computed at lower step ``step``
        (an empty list: recompute them at the next hyper-step)."""
        self._val.set(batches, step)

    def step(self, pipeline: Pipeline, *, step: int, lr_scale: float = 1.0,
             backbone_step: float = 0.0) -> float | None:
        """One hyper-step on α and A.

        Args:
            pipeline: the driver's model and data.
            step: the driver's lower step count (the validation features' age is counted in it).
            lr_scale: factor on the upper learning rate (e.g. the lower schedule's lr over its peak).
            backbone_step: the backbone's inverse-curvature stand-in of the backbone term, the lower learning
                rate times the lower steps per hyper-step (``augment_hypergrad="backbone"``).

        Returns:
            the hypergradient norm, or ``None`` when a non-finite hypergradient was skipped.
        """
        return self.upper.step(self.hypergradient(pipeline, step=step, backbone_step=backbone_step),
                               lr_scale=lr_scale)

    def hypergradient(self, pipeline: Pipeline, *, step: int, backbone_step: float = 0.0) -> list[Tensor]:
        """The hypergradient :meth:`step` takes, one tensor per :attr:`Hyperparameters.all` entry (α, then A)."""
        if not self._buffer:
            raise RuntimeError("no training batches were pushed before the hyper-step")
        problem = self._feature_problem(pipeline, step) if self.uses_features else self._model_problem(pipeline)
        grads = self.engine(problem)
        if self.uses_features:  # the other engines' θ holds the backbone already
            grads = self._with_backbone_term(grads, pipeline, backbone_step)
        return self._with_entropy_bonus(grads)

    # -------------------------------------------------------------------------------------- problems
    def _feature_problem(self, p: Pipeline, step: int) -> FeatureProblem:
        device = p.device
        train = [(e.features.to(device), e.target.to(device)) for e in self._buffer]
        newest = self._buffer[-1]
        if newest.draws is not None and self._bank:
            # the newest batch at every strength of the bank, A's graph in the targets' mixture weights
            with torch.no_grad():
                feats = self._bank_forward(p, newest, device, p.features)
            train[-1] = (feats, self._bank_targets(train[-1][1]))
        elif newest.draws is not None:
            # the newest batch's features rebuilt with a graph from A, from the draws it was trained with; it
            # keeps its share (one batch of the buffer) of the training loss
            with _mode(p.model, True), frozen_norm_stats(p.model), p.autocast():
                x = p.train_input(newest.inputs.to(device), train[-1][1], _draws_on(newest.draws, device))
                train[-1] = (full_precision(p.features(x)), train[-1][1])
        val = self._val.get(step, lambda: self._val_features(p))
        return FeatureProblem(p.classifier, self.loss, self.objective, self.hparams.all, train, val,
                              self.weight_decay)

    @property
    def _bank(self) -> bool:
        """Whether A is an augmentation bank's mixture, learned through the expected loss
        (:class:`~ab_plugin.policies.BankPolicy`): A then reaches the training loss through per-sample weights."""
        return bool(self.hparams.policy) and hasattr(self.policy, "bank_draws")

    def _bank_forward(self, p: Pipeline, entry: _Entry, device: torch.device,
                      head: Callable[[Tensor], Tensor]) -> Tensor:
        """``head`` of the buffered batch at every strength of the bank, the same draws at each (``[K * B, ...]``,
        strength-major), in training mode without moving the normalisation statistics."""
        y = entry.target.to(device)
        with _mode(p.model, True), frozen_norm_stats(p.model), p.autocast():
            return torch.cat([full_precision(head(p.train_input(entry.inputs.to(device), y, d)))
                              for d in self.policy.bank_draws(_draws_on(entry.draws, device))])

    def _bank_targets(self, y: Tensor) -> Tensor:
        """``[K * B, C]`` soft targets ``π_{y,k} · onehot(y)`` of :meth:`_bank_forward`'s rows: the loss's mean per
        unit of target mass then gives each image its expected loss over the bank, one image's share."""
        weights = self.policy.weights(y)  # [B, K], graph to A
        onehot = nn.functional.one_hot(y.long(), self.policy.num_classes).to(weights.dtype)
        return (weights.T[:, :, None] * onehot[None]).reshape(-1, onehot.shape[1])

    @torch.no_grad()
    def _val_features(self, p: Pipeline) -> list[Batch]:
        out = []
        with _mode(p.model, False):
            for x, *rest in p.val_batches(None):
                with p.autocast():
                    out.append((full_precision(p.features(p.val_input(x))), *rest))
        return out

    def _model_problem(self, p: Pipeline) -> ModelProblem:
        device = p.device
        train = [(e.inputs.to(device), e.target.to(device)) for e in self._buffer]

        def train_forward(x: Tensor, y: Tensor, fmodel: nn.Module | None = None) -> Tensor:
            return p.train_logits(x, y, None, fmodel)

        def val_forward(x: Tensor, fmodel: nn.Module | None = None) -> Tensor:
            return p.val_logits(x, fmodel)

        return ModelProblem(p.model, self.loss, self.objective, self.hparams.all, train, p.val_batches(None),
                            train_forward, val_forward, self.weight_decay, p.optimizer)

    # ------------------------------------------------------------------------------ A's extra terms
    def _with_backbone_term(self, grads: Sequence[Tensor], p: Pipeline, step_size: float) -> list[Tensor]:
        """Adds the backbone's response to A (on the newest training batch, replayed, and one validation batch)."""
        newest = self._buffer[-1]
        if self.augment_hypergrad != "backbone" or newest.draws is None:
            return list(grads)
        device = p.device
        head = {id(q) for q in p.classifier.parameters()}
        backbone = [q for q in p.model.parameters() if q.requires_grad and id(q) not in head]
        if not backbone:  # a frozen backbone (--freeze-backbone) does not respond to A
            return list(grads)
        x, y, draws = newest.inputs.to(device), newest.target.to(device), _draws_on(newest.draws, device)
        xv, yv, *gv = p.val_batches(1)[0]

        def train_loss() -> Tensor:
            if self._bank:
                return self.loss(self._bank_forward(p, newest, device, p.model), self._bank_targets(y))
            with _mode(p.model, True), frozen_norm_stats(p.model):
                return self.loss(p.train_logits(x, y, draws), y)

        def val_loss() -> Tensor:
            with _mode(p.model, False):
                return self.objective(p.val_logits(xv), yv, gv[0] if gv else None)

        extra = backbone_policy_grad(train_loss, val_loss, backbone, self.hparams.policy, step_size)
        n = len(self.hparams.loss)
        return [*grads[:n], *(g + e for g, e in zip(grads[n:], extra, strict=True))]

    def _with_entropy_bonus(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """Hypergradients of the objective minus ``augment_entropy`` x the policy's mean gate entropy."""
        if not self.augment_entropy or not self.hparams.policy:
            return list(grads)
        extra = torch.autograd.grad(-self.augment_entropy * self.policy.gate_entropy(), self.hparams.all,
                                    allow_unused=True)
        return [g if e is None else g + e for g, e in zip(grads, extra, strict=True)]

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self, *, buffer: bool = True) -> dict[str, Any]:
        """The upper level's state and (``buffer``) the training buffer, on the CPU."""
        return {"format": 1, "upper": self.upper.state_dict(),
                "buffer": [e.to_state() for e in self._buffer] if buffer else []}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the validation features are recomputed at the next step."""
        if not isinstance(state, Mapping) or state.get("format") != 1:
            raise ValueError("not a bilevel state (format mismatch): save it with Bilevel.state_dict()")
        self.upper.load_state_dict(state["upper"])
        self._buffer.clear()
        self._buffer.extend(_Entry(**e) for e in state.get("buffer", []))
        self._val.clear()


def _draws_on(draws: Draws, device: torch.device) -> Draws:
    return {k: v.to(device) for k, v in draws.items()}

