"""``AutoBalanceCriterion``: a self-tuning loss to drop into any training loop as its ``criterion``.

The smallest possible integration::

    criterion = AutoBalanceCriterion(class_counts).attach(model, val_loader)
    for x, y in train_loader:                 # your loop, your optimizer, your schedule
        loss = criterion(model(x), y)         # y: labels [B] or soft targets [B, C] (mixup / cutmix)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

``forward`` returns the parametric loss ``w_y · CE(Δ ⊙ z + l, y)`` with the current α (a constant for
the caller's backward), and every ``interval`` training calls it takes one hyper-step on α: a
hypergradient from :mod:`ab_plugin.hypergrad` (the ``head`` engine by default: implicit differentiation
with θ restricted to the classifier, on the classifier inputs captured from your own forward passes)
and one step of its own upper optimizer. The caller's optimizer, the model's weights and their
``.grad`` buffers, the BatchNorm running statistics and the global RNG are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ab_plugin.bilevel import Bilevel, Pipeline, full_precision
from ab_plugin.config import Config
from ab_plugin.hypergrad import HypergradEngine, UnrolledEngine, create_engine
from ab_plugin.hypergrad._engines import frozen_norm_stats
from ab_plugin.losses import ParametricCrossEntropy, Sharing, create_loss, create_sharing
from ab_plugin.models import split_model, unwrap_model
from ab_plugin.objectives import create_objective
from ab_plugin.policies import ClassPolicy, policy_from_module
from ab_plugin.upper import UpperLevel, UpperOptimizer

from ._live_policy import LivePolicy
from ._val_stream import Batch, ValSource, ValStream, as_source

__all__ = ["AutoBalanceCriterion", "ValSource"]

_STATE_FORMAT = 3
_DEFAULTS = Config()  # one set of defaults for the CLI's search and for the criterion


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _make_hook(owner: AutoBalanceCriterion, module: nn.Module, *, capture: bool, trigger: bool) -> Callable[..., None]:
    """A forward pre-hook for the caller's training forwards (``module.training`` and grad enabled).

    ``trigger``: first run a deferred hyper-step (before the new forward builds its graph);
    ``capture``: record ``module``'s input (detached) for the next :meth:`AutoBalanceCriterion.record`.
    It keeps weak references only, and a deep copy of the model (e.g. timm's ``ModelEmaV3``) inherits the
    hook but is ignored by it (identity check), so an EMA forward never pollutes the buffer.
    """
    owner_ref, module_ref = weakref.ref(owner), weakref.ref(module)

    def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if mod is not module_ref():
            return
        crit = owner_ref()
        if crit is None or not crit._capturing or not (mod.training and torch.is_grad_enabled()):
            return
        if trigger and crit._due:
            crit._due = False
            crit.hyper_step()
        if capture and args and isinstance(args[0], Tensor):
            crit._pending = args[0].detach()

    return hook


@dataclass
class _Attachment:
    """What :meth:`AutoBalanceCriterion.attach` binds (never saved, never a submodule)."""

    model: nn.Module
    features: Callable[[Tensor], Tensor]
    classifier: nn.Module
    optimizer: torch.optim.Optimizer | None
    handles: list[Any] = field(default_factory=list)


@contextlib.contextmanager
def _model_untouched(model: nn.Module) -> Iterator[None]:
    """Norm-layer running statistics, every submodule's train/eval mode and the global RNG are restored on exit."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [[b.detach().clone() for b in m.buffers(recurse=False)] for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    dev = _device_of(model)
    rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices), frozen_norm_stats(model):
            yield
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for m, bufs in zip(norms, saved, strict=True):
                for b, s in zip(m.buffers(recurse=False), bufs, strict=True):
                    if not torch.equal(b, s):  # an in-place write would break the caller's pending backward
                        b.copy_(s)


class AutoBalanceCriterion(nn.Module):
    """A parametric cross-entropy that tunes its own α on a validation loader while you train.

    Args:
        class_counts: training samples per class ``[C]`` (used for the ``la`` / ``cdt`` / ``vs`` inits and the
            frequency sharing bases).
        init: starting point of α: ``neutral`` (plain CE), ``la`` (``l = τ log π``), ``cdt``, ``vs``.
        tau, gamma: the LA / CDT init strengths.
        learn: which of ``class_weight``, ``logit_bias``, ``logit_scale`` the upper level tunes.
        sharing: ``"poly:K"`` (a frequency dictionary; the default ``poly:3``), ``"hat:K"``, ``"groups:K"``,
            ``"per_class"`` / ``None`` or a :class:`Sharing`.
        loss: use this :class:`ParametricCrossEntropy` instead of building one (``init``/``learn``/``sharing``
            are then ignored).
        engine: hypergradient engine name (``head`` (default), ``cg``, ``neumann``, ``unrolled``) or an engine.
            ``head`` needs nothing but the forward passes you already run; ``cg`` / ``neumann`` keep the last
            ``hyper_batches`` input batches and run double backward through the whole network; ``unrolled``
            also needs the caller's optimizer (``attach(..., optimizer=opt)``, read, never stepped).
        engine_options: keyword options of the engine (e.g. ``{"iters": 30}`` for ``head``).
        interval: lower steps (training calls) between hyper-steps.
        start_step: no hyper-step before this many training calls (the paper's warm-up with α fixed).
        hyper_batches: how many of the latest training batches a hyper-step uses.
        val_batches: validation batches per hyper-step (cycling through the loader); ``None``: the whole
            loader.
        val_every: reuse the validation features for this many hyper-steps (``head`` engine only).
        objective: validation objective name (``balanced``, ``worst-class``, ``cvar``, ``worst-group``,
            ``eo-gap``, ``blend``) or a callable ``(logits [B, C], y [B], groups [B] | None) -> scalar``.
        upper_optimizer: ``adam`` | ``sgd`` or a callable ``params -> torch.optim.Optimizer``.
        upper_lr, upper_momentum, upper_weight_decay: upper optimizer settings.
        clip: largest L2 norm of a hypergradient (0 disables clipping).
        upper_warmup: hyper-steps over which the upper lr ramps up linearly (0: none).
        upper_decay: scale the upper lr by the attached optimizer's current lr over its lr at the first
            hyper-step (α's steps decay with your schedule).
        average_from: average α from this hyper-step on; :meth:`use_average` puts the average into α (what
            to export at the end of training). ``None``: no averaging.
        weight_decay: the L2 term of the inner problem (use your optimizer's weight decay).
        auto_step: take hyper-steps inside :meth:`forward`; ``False`` leaves it to :meth:`step` (what the
            timm / Lightning callbacks do, after the optimizer step).
        save_buffer: keep the buffered training features (or inputs) in :meth:`state_dict` so that a resumed
            run takes exactly the same next hyper-step.
        policy: a learnable :class:`~ab_plugin.policies.ClassPolicy` (A) to learn beside α (``head`` engine
            only); the loop augments each training batch with :meth:`augment` before its forward.
        pixel_mean, pixel_std: the per-channel normalisation of the training batches (the policy works on
            ``[0, 1]`` images); ``None``: the batches are in ``[0, 1]``.
        augment_hypergrad: with a policy, ``backbone`` adds the backbone's response to A to its hypergradient
            (:func:`~ab_plugin.hypergrad.backbone_policy_grad`, about 4 training steps of extra work per hyper-step;
            needs ``attach(..., optimizer=opt)``); ``head`` leaves it out; ``auto`` (the default, as the CLI's
            search) is ``backbone`` for a :class:`~ab_plugin.policies.ClassPolicy`.
        augment_entropy: with a policy, weight of the gate-entropy bonus on the upper objective.

    Shapes: ``forward(logits [B, C], target [B] int or [B, C] float) -> scalar``.

    State: :meth:`state_dict` holds α (the loss's raw parameters), the upper optimizer's state, the step
    counters, the validation loader position and (``save_buffer``) the training buffer. α is never a leaf
    of the caller's graph: its parameters have ``requires_grad=False`` except inside a hyper-step, so an
    optimizer built from ``module.parameters()`` that happens to include them never changes them.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        init: str = _DEFAULTS.init,
        tau: float = _DEFAULTS.tau,
        gamma: float = _DEFAULTS.gamma,
        learn: Sequence[str] = _DEFAULTS.learn,
        sharing: str | Sharing | None = _DEFAULTS.sharing,
        loss: ParametricCrossEntropy | None = None,
        engine: str | HypergradEngine = _DEFAULTS.engine,
        engine_options: dict[str, Any] | None = None,
        interval: int = _DEFAULTS.interval,
        start_step: int = 0,
        hyper_batches: int = _DEFAULTS.hyper_batches,
        val_batches: int | None = _DEFAULTS.hyper_batches,
        val_every: int = 1,
        objective: str | Callable[..., Tensor] = _DEFAULTS.objective,
        upper_optimizer: UpperOptimizer = _DEFAULTS.upper_optimizer,
        upper_lr: float = _DEFAULTS.upper_lr,
        upper_momentum: float = _DEFAULTS.upper_momentum,
        upper_weight_decay: float = _DEFAULTS.upper_weight_decay,
        clip: float = _DEFAULTS.clip,
        upper_warmup: int = 0,
        upper_decay: bool = _DEFAULTS.upper_decay,
        average_from: int | None = None,
        weight_decay: float = _DEFAULTS.weight_decay,
        auto_step: bool = True,
        save_buffer: bool = True,
        policy: ClassPolicy | None = None,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        augment_hypergrad: str = _DEFAULTS.augment_hypergrad,
        augment_entropy: float = _DEFAULTS.augment_entropy,
    ) -> None:
        super().__init__()
        if interval < 1 or hyper_batches < 1 or val_every < 1 or (val_batches is not None and val_batches < 1):
            raise ValueError("interval, hyper_batches, val_batches and val_every must be >= 1")
        self.val_stream = ValStream(val_batches)  # the resumable cycle through the validation loader
        if start_step < 0 or clip < 0:
            raise ValueError("start_step and clip must be >= 0")
        counts = torch.as_tensor(class_counts).long()
        if loss is None:
            shared = create_sharing(sharing, counts) if isinstance(sharing, str) else sharing
            loss = create_loss("autobalance", counts, init=init, tau=tau, gamma=gamma, learn=learn, sharing=shared)
        elif loss.num_classes != counts.numel():
            raise ValueError(f"loss has {loss.num_classes} classes but class_counts has {counts.numel()}")
        self.loss = loss
        self.register_buffer("class_counts", counts.clone(), persistent=False)
        self.interval, self.start_step = int(interval), int(start_step)
        self.auto_step, self.save_buffer, self.upper_decay = bool(auto_step), bool(save_buffer), bool(upper_decay)
        self.live_policy = LivePolicy(policy, pixel_mean, pixel_std) if policy is not None else None
        engine = create_engine(engine, **(engine_options or {})) if isinstance(engine, str) else engine
        self.core = Bilevel(
            loss, engine, create_objective(objective) if isinstance(objective, str) else objective,
            policy=policy, hyper_batches=int(hyper_batches), weight_decay=weight_decay,
            upper=dict(optimizer=upper_optimizer, lr=upper_lr, momentum=upper_momentum,
                       weight_decay=upper_weight_decay, clip=clip, warmup_steps=upper_warmup,
                       average_from=average_from),
            augment_hypergrad=augment_hypergrad, augment_entropy=augment_entropy, val_max_uses=int(val_every))
        if policy is not None and not self.uses_features:
            raise ValueError("learning an augmentation policy needs the head engine (engine='head')")
        for h in self.core.hparams.all:
            h.requires_grad_(False)
        self.steps = 0  # lower steps counted (saved)
        self._peak_lr: float | None = None  # the attached optimizer's lr at the first hyper-step (saved)
        # runtime (not saved)
        self._attached: _Attachment | None = None
        self._pending: Tensor | None = None
        self._due = False
        self._capturing = True

    # ------------------------------------------------------------------------------------------ set-up
    @property
    def num_classes(self) -> int:
        """``C``."""
        return self.loss.num_classes

    @property
    def uses_features(self) -> bool:
        """Whether the engine works on captured classifier inputs (``head``) rather than input batches."""
        return self.core.uses_features

    @property
    def engine(self) -> HypergradEngine:
        return self.core.engine

    @property
    def upper(self) -> UpperLevel:
        """The upper level (α's optimizer, schedule and average)."""
        return self.core.upper

    @property
    def is_attached(self) -> bool:
        return self._attached is not None

    @property
    def model(self) -> nn.Module | None:
        """The attached model (not a submodule: it is neither saved nor moved with the criterion)."""
        return None if self._attached is None else self._attached.model

    def attach(
        self,
        model: nn.Module,
        val_loader: ValSource,
        *,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> AutoBalanceCriterion:
        """Bind the model whose logits this criterion receives and the validation data; returns ``self``.

        Registers forward pre-hooks that act on training forwards only (``module.training`` and grad
        enabled): one on the classifier (``split_model(model)[1]``) recording its input, detached, for the
        ``head`` engine; one on the model recording the input batch for the other engines and running their
        deferred hyper-step (see :meth:`forward`). Wrappers (DDP, ``torch.compile``) are unwrapped.

        Args:
            model: the network, ``model(x) -> logits [B, C]``; timm-interface models and models with a final
                ``fc`` / ``classifier`` / ``head`` are supported (see :func:`ab_plugin.models.split_model`).
            val_loader: validation batches ``(x, y)`` / ``(x, y, groups)`` preprocessed for ``model``, or a
                zero-argument callable returning such an iterable.
            optimizer: the caller's optimizer, read and never stepped: by the ``unrolled`` engine, by
                ``upper_decay`` (its current lr) and, with a policy and ``augment_hypergrad="backbone"``, by the
                backbone term (its lr times ``interval`` stands for the backbone's inverse curvature).
        """
        self.detach()
        net = unwrap_model(model)
        features, classifier = split_model(net)
        if isinstance(self.engine, UnrolledEngine) and optimizer is None:
            raise ValueError("the unrolled engine needs the training optimizer: attach(model, val, optimizer=opt)")
        if self.core.hparams.policy and self.core.augment_hypergrad == "backbone" and optimizer is None:
            raise ValueError("the backbone term of the policy's hypergradient scales with the training lr: "
                             "attach(model, val, optimizer=opt), or pass augment_hypergrad='head'")
        source = as_source(val_loader)
        handles = [net.register_forward_pre_hook(_make_hook(self, net, capture=not self.uses_features, trigger=True))]
        if self.uses_features:
            handles.append(classifier.register_forward_pre_hook(_make_hook(self, classifier, capture=True,
                                                                           trigger=False)))
        self._attached = _Attachment(net, features, classifier, optimizer, handles)
        self.to(_device_of(net))
        self.val_stream.bind(source)
        self.core.set_val_features([], -1)
        return self

    def detach(self) -> None:
        """Remove the hook and forget the model (α, counters and the buffer stay)."""
        if self._attached is not None:
            for h in self._attached.handles:
                h.remove()
        self._attached = None
        self.val_stream.unbind()
        self._pending = None

    # --------------------------------------------------------------------------------------- the loss
    def augment(self, x: Tensor, y: Tensor) -> Tensor:
        """Augment a training batch with the learned policy (call it before the batch's forward).

        Args:
            x: ``[B, 3, H, W]`` float batch as the model takes it (normalised with ``pixel_mean`` / ``pixel_std``).
            y: ``[B]`` int labels (before any mixup).

        Returns:
            the augmented batch, same shape, normalisation and dtype (no graph).
        """
        if self.live_policy is None:
            raise RuntimeError("this AutoBalanceCriterion has no policy: pass policy=ClassPolicy(...) to learn one")
        return self.live_policy(x, y)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The parametric loss with the current α (a constant for the caller's backward).

        Args:
            logits: ``[B, C]`` model outputs (any float dtype; the loss is computed in float32).
            target: class labels ``[B]`` or soft targets ``[B, C]`` (timm / torchvision mixup, cutmix).

        A training call (criterion in train mode, grad enabled, ``logits`` requiring grad) also pairs the
        captured classifier input with ``target`` in the buffer and, with ``auto_step``, counts one lower step;
        when a hyper-step is due the ``head`` engine takes it here (before computing the returned loss, so
        it uses the new α; only the classifier is involved, the caller's pending graph is safe), the other
        engines at the start of the model's next training forward, after the caller's backward and optimizer
        step (their train-mode double-backward passes through the whole network would otherwise run while the
        caller's graph is held, and may write module state that graph saved, e.g. restored norm statistics).
        """
        if self.training and torch.is_grad_enabled() and logits.requires_grad:
            self.record(target)
            if self.auto_step and self._count_step():
                if self.uses_features:
                    self.hyper_step()  # classifier-only work: safe while the caller's graph is alive
                else:
                    self._due = True  # runs at the start of the next training forward of the model
        return self.loss(full_precision(logits), target)

    def record(self, target: Tensor) -> bool:
        """Pair the last captured training input with ``target`` (``[B]`` or ``[B, C]``); ``False`` if none."""
        pending, self._pending = self._pending, None
        if pending is None:
            return False
        if pending.shape[0] != target.shape[0]:
            warnings.warn(
                f"AutoBalanceCriterion: captured batch of {pending.shape[0]} does not match targets of "
                f"{target.shape[0]}; batch skipped (is the attached model the one producing the logits?)",
                RuntimeWarning, stacklevel=3,
            )
            return False
        if not self.uses_features:
            self.core.push(target, inputs=pending)
            return True
        last = None if self.live_policy is None else self.live_policy.last_for(target)
        inputs, draws = last if last is not None else (None, None)
        self.core.push(target, features=pending, inputs=inputs, draws=draws)
        return True

    def _count_step(self) -> bool:
        self.steps += 1
        return self.steps > self.start_step and self.steps % self.interval == 0 and bool(self.core.hparams)

    def step(self) -> float | None:
        """Count one lower step and take a hyper-step now when due (call it after the optimizer step).

        Returns:
            the hypergradient norm when a hyper-step was taken, else ``None``.
        """
        if self._count_step():
            return self.hyper_step()
        return None

    # ---------------------------------------------------------------------------------- hyper-step
    @contextlib.contextmanager
    def _hparams_live(self) -> Iterator[None]:
        hparams = self.core.hparams.all
        for h in hparams:
            h.requires_grad_(True)
        self._capturing = False
        try:
            yield
        finally:
            self._capturing = True
            for h in hparams:
                h.requires_grad_(False)

    def _pipeline(self, device: torch.device) -> Pipeline:
        att = self._attached
        assert att is not None
        live = self.live_policy

        def train_input(x: Tensor, y: Tensor, draws: dict[str, Tensor] | None) -> Tensor:
            # the caller's training inputs are already augmented; with draws, the policy's output is rebuilt
            return x if draws is None or live is None else live.apply(x, y, draws)

        def val_batches(k: int | None) -> list[Batch]:
            # k batches (the backbone term's one): the first of those the current validation features came from
            if k is None:
                return self.val_stream.next(device)
            return (self.val_stream.last or self.val_stream.next(device))[:k]

        return Pipeline(att.model, att.features, att.classifier, train_input, lambda x: x, val_batches,
                        optimizer=att.optimizer)

    def _lr_scale(self) -> float:
        """The attached optimizer's lr over its lr at the first hyper-step (``upper_decay``), else 1."""
        opt = self._attached.optimizer if self._attached is not None else None
        if not self.upper_decay or opt is None:
            return 1.0
        lr = float(opt.param_groups[0]["lr"])
        if self._peak_lr is None:
            self._peak_lr = lr
        return lr / self._peak_lr if self._peak_lr > 0 else 1.0

    @contextlib.contextmanager
    def _hyper(self) -> Iterator[tuple[Pipeline, float]]:
        """The hyper-step's pipeline and backbone step, with the caller's module state, RNG and α's
        ``requires_grad`` restored on exit."""
        att = self._attached
        if att is None:
            raise RuntimeError(
                "AutoBalanceCriterion is not attached: call criterion.attach(model, val_loader) before training "
                "(to train with α fixed, use criterion.loss instead)"
            )
        if not self.core.buffered:
            raise RuntimeError(
                "AutoBalanceCriterion has no training batches: the attached model's "
                f"{'classifier ' + type(att.classifier).__name__ if self.uses_features else 'forward'} was not "
                "called in a training forward (train mode, grad enabled) before the loss; attach the model that "
                "produces the logits"
            )
        device = _device_of(att.model)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            stack.enter_context(torch.autocast(device.type, enabled=False))
            stack.enter_context(_model_untouched(att.model))
            stack.enter_context(self._hparams_live())
            lr = float(att.optimizer.param_groups[0]["lr"]) if att.optimizer is not None else 0.0
            yield self._pipeline(device), lr * self.interval

    def hyper_step(self) -> float | None:
        """One upper step on α now; returns the (unclipped) hypergradient norm, ``None`` when skipped.

        Uses the buffered training batches and fresh validation batches; touches neither the model's
        weights, ``.grad`` buffers, norm statistics nor the global RNG (all restored), and keeps no graph.
        A non-finite hypergradient is skipped with a ``RuntimeWarning``.
        """
        if not self.core.hparams:
            return None
        with self._hyper() as (pipeline, backbone_step):
            norm = self.core.step(pipeline, step=self.steps, lr_scale=self._lr_scale(), backbone_step=backbone_step)
        if norm is None:
            warnings.warn(f"non-finite hypergradient at step {self.steps}: hyper-step skipped",
                          RuntimeWarning, stacklevel=2)
        return norm

    def hypergradient(self) -> list[Tensor]:
        """The hypergradient the next hyper-step would take, computed now without stepping: one tensor per
        raw tensor of α (``loss.hparameters()``), then of the policy's A; the caller's state is untouched."""
        with self._hyper() as (pipeline, backbone_step):
            return [g.detach() for g in self.core.hypergradient(pipeline, step=self.steps,
                                                                backbone_step=backbone_step)]

    def use_average(self) -> bool:
        """Put α's average since ``average_from`` into α (call once training is over); ``False`` if none."""
        return self.upper.use_average()

    @property
    def hyper_steps(self) -> int:
        return self.upper.steps

    @property
    def skipped_hyper_steps(self) -> int:
        return self.upper.skipped

    @property
    def last_hypergrad_norm(self) -> float | None:
        return self.upper.last_norm

    # ------------------------------------------------------------------------------------ reporting
    @property
    def alpha(self) -> dict[str, list[float]]:
        """Per-class ``class_weight``, ``logit_bias``, ``logit_scale`` (what a policy file stores)."""
        return self.loss.per_class()

    @property
    def augmentation(self) -> dict[str, Any] | None:
        """The learned policy as a policy file's ``augmentation`` section; ``None`` without a policy."""
        return None if self.live_policy is None else policy_from_module(self.live_policy.policy)

    def summary(self) -> dict[str, Any]:
        """Counters and α, ready for a logger."""
        return {
            "steps": self.steps,
            "hyper_steps": self.hyper_steps,
            "skipped_hyper_steps": self.skipped_hyper_steps,
            "hypergrad_norm": self.last_hypergrad_norm,
            "alpha": self.alpha,
        }

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes}, engine={getattr(self.engine, 'name', type(self.engine).__name__)}, "
                f"interval={self.interval}, learn={list(self.loss.learn)}")

    # -------------------------------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        """The bilevel core's state (upper optimizer, (``save_buffer``) the training buffer), counters and the
        validation position."""
        return {
            "format": _STATE_FORMAT,
            "bilevel": self.core.state_dict(buffer=self.save_buffer),
            "steps": self.steps,
            "peak_lr": self._peak_lr,
            "val_position": self.val_stream.position,
            "due": self._due,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError("not an AutoBalanceCriterion state of this version (format mismatch): save it with "
                             "state_dict(), or start the run's α again")
        self.core.load_state_dict(state["bilevel"])
        self.steps = int(state["steps"])
        self._peak_lr = state.get("peak_lr")
        self._due = bool(state.get("due", False))
        self.val_stream.restore(state.get("val_position", 0))
        self._pending = None
        if self.live_policy is not None:
            self.live_policy.forget()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> AutoBalanceCriterion:
        out = super()._apply(fn, recurse)
        self.upper.to(self.loss.class_weight_raw.device)  # the optimizer state follows the parameters
        return out


def callback_criterion(owner: str, class_counts: Sequence[int] | Tensor | None,
                       criterion: AutoBalanceCriterion | None, options: dict[str, Any]) -> AutoBalanceCriterion:
    """The criterion a training-loop callback drives: the given one, or one built from the options.

    Callbacks take their hyper-steps explicitly (``step()`` after the caller's optimizer step), so
    the criterion's own per-call stepping is switched off.
    """
    if criterion is None:
        if class_counts is None:
            raise ValueError(f"{owner} needs class_counts (or an AutoBalanceCriterion)")
        criterion = AutoBalanceCriterion(class_counts, **options)
    elif options:
        raise ValueError("pass either criterion=... or criterion options, not both")
    criterion.auto_step = False
    return criterion
