"""``--augment bank``: a per-class mixture over a fixed bank of augmentation strengths, learned through the
expected training loss (personalised augmentation, PDA, with a hypergradient that carries signal).

Class ``y`` holds mixture weights ``π_y`` over ``K`` strengths ``s_0 = 0 < s_1 < ... < s_{K-1}`` of CUDA's
strength-dependent augmentation (:mod:`._cuda_ops`: strength ``s`` applies ``s`` ops at magnitude ``s / max_d``;
strength 0 is the crop + flip alone). The lower level trains on

``Σ_k π_{y,k} · ℓ(f(A_{s_k}(x)), y)``,

estimated by drawing one strength per image from ``π_y`` (one forward pass, as plain training). The upper level
differentiates the expectation itself: a hyper-step computes the newest batch at *every* strength with the same
draws (common random numbers: the same ops, signs, directions and crop; only the strength differs, and the
strengths are nested, ``s_j`` applies the first ``s_j`` of the ``s_k`` ops drawn for ``s_k > s_j``), and ``π``
enters the training loss as a per-sample weight, like the class weight ``w_y``, which the head engine handles
exactly. The estimate then carries no noise from which strength an image happened to get.

``π_y = softmax((D θ)_y)`` over the bank, ``D`` the loss's sharing basis (identity: one row per class), so the
upper level learns ``k × K`` numbers. A warm start can take CUDA's levels: until the upper phase begins the
policy runs CUDA's curriculum (:class:`~ab_plugin.policies.CudaPolicy`), then ``π`` starts from the levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ab_plugin.losses._sharing import expand_basis, fit_basis

from ._cuda import APPLY_PROBABILITY, CudaPolicy
from ._cuda_ops import MAX_D, cuda_augment
from ._curriculum import GAMMA, TRIALS
from ._policy import DEFAULT_OPS, POLICIES

if TYPE_CHECKING:
    from ab_plugin.trainer import Trainer

__all__ = ["BankPolicy", "DEFAULT_STRENGTHS", "bank_mixture"]

DEFAULT_STRENGTHS: tuple[int, ...] = (0, 2, 4, 6, 8, 10)
"""The bank: CUDA strengths 0 (crop + flip only) to its highest level 10, every other level."""

_FLOOR = 1e-6
"""Smallest mixture weight a fit from given probabilities aims at (log 0 has no logit)."""


def bank_mixture(num_classes: int, num_strengths: int, spread: float,
                 at: Tensor | None = None, apply_probability: float = 1.0) -> Tensor:
    """Mixture weights ``[C, K]``: ``1 - spread`` on a chosen strength per class, ``spread`` uniform over the bank.

    Args:
        num_classes: ``C``.
        num_strengths: ``K``.
        spread: mass in ``[0, 1]`` spread evenly over all ``K`` strengths.
        at: int64 ``[C]`` bank index of each class's chosen strength (``None``: index 0, the identity).
        apply_probability: of the chosen mass, the share on ``at`` (the rest on index 0), as CUDA applies its
            level to that share of the images.

    Returns:
        float32 ``[C, K]``, rows summing to 1.
    """
    if not 0.0 <= spread <= 1.0 or not 0.0 <= apply_probability <= 1.0:
        raise ValueError(f"spread and apply_probability must lie in [0, 1], got {spread}, {apply_probability}")
    at = torch.zeros(num_classes, dtype=torch.long) if at is None else at.long().cpu()
    chosen = torch.zeros(num_classes, num_strengths, dtype=torch.float64)
    chosen[:, 0] = 1.0 - apply_probability
    chosen[torch.arange(num_classes), at] += apply_probability
    return ((1.0 - spread) * chosen + spread / num_strengths).float()


class BankPolicy(CudaPolicy):
    """Per-class mixture weights ``π [C, K]`` over a bank of CUDA strengths, learned by the expected loss.

    Args:
        num_classes: ``C``.
        strengths: the bank, strictly increasing non-negative CUDA strengths starting at 0.
        basis: optional sharing matrix ``D [C, k]`` (``None``: identity).
        init_spread: the initial mixture is ``1 - init_spread`` on strength 0 plus ``init_spread`` spread evenly
            over the bank (:func:`bank_mixture`); near the identity, as the other learned kinds start.
        learnable: the mixture logits are an ``nn.Parameter`` (else a buffer; :meth:`hparameters` is empty).
        warm_start: run CUDA's curriculum until :meth:`start_from_levels` (the Trainer's upper phase) and then
            start ``π`` from its levels.
        crop_flip: the random crop + flip first (off: a pipeline that crops and flips itself).
        ops, gamma, trials, max_d, apply_probability, padding: CUDA's (:class:`CudaPolicy`).

    Attributes:
        mixture_logit: ``[k, K]`` raw logits (``π_y = softmax((D θ)_y)``).
        following: bool buffer, whether CUDA's curriculum drives the augmentation now.
    """

    mixture_logit: Tensor
    following: Tensor
    basis: Tensor | None

    def __init__(self, num_classes: int, *, strengths: Sequence[int] = DEFAULT_STRENGTHS,
                 basis: Tensor | None = None, init_spread: float = 0.1, learnable: bool = True,
                 warm_start: bool = False, ops: Sequence[str] = DEFAULT_OPS, gamma: float = GAMMA,
                 trials: int = TRIALS, max_d: float = MAX_D, apply_probability: float = APPLY_PROBABILITY,
                 crop_flip: bool = True, padding: int = 4) -> None:
        strengths = tuple(int(s) for s in strengths)
        steps = zip(strengths, strengths[1:], strict=False)
        if len(strengths) < 2 or strengths[0] != 0 or any(b <= a for a, b in steps):
            raise ValueError(f"bank strengths must increase from 0 and hold at least 2, got {list(strengths)}")
        super().__init__(num_classes, ops=ops, gamma=gamma, trials=trials, max_level=strengths[-1], max_d=max_d,
                         apply_probability=apply_probability, padding=padding)
        self.strengths = strengths
        self.learnable, self.crop_flip = bool(learnable), bool(crop_flip)
        if basis is not None:
            basis = torch.as_tensor(basis).detach().float().contiguous()
            if basis.ndim != 2 or basis.shape[0] != num_classes or basis.shape[1] < 1:
                raise ValueError(f"basis must be a [num_classes={num_classes}, k] matrix, got {tuple(basis.shape)}")
        self.register_buffer("basis", basis)
        self.register_buffer("strength_values", torch.tensor(strengths, dtype=torch.long))
        self.register_buffer("following", torch.tensor(bool(warm_start)))
        raw = self._fit(bank_mixture(num_classes, len(strengths), float(init_spread)))
        if self.learnable:
            self.mixture_logit = nn.Parameter(raw)
        else:
            self.register_buffer("mixture_logit", raw)

    # ------------------------------------------------------------------------------------------ mixture
    @property
    def num_strengths(self) -> int:
        """``K``."""
        return len(self.strengths)

    @property
    def mixture(self) -> Tensor:
        """``[C, K]`` mixture weights ``π`` (rows sum to 1; differentiable)."""
        return torch.softmax(expand_basis(self.basis, self.mixture_logit), dim=1)

    def _fit(self, probabilities: Tensor) -> Tensor:
        """Raw ``[k, K]`` logits whose softmax is closest to ``probabilities`` ``[C, K]`` (exact for the identity
        basis; least squares in centred log space otherwise)."""
        log = probabilities.double().clamp_min(_FLOOR).log()
        log = log - log.mean(dim=1, keepdim=True)  # softmax ignores a row's constant: fit the centred logs
        return fit_basis(self.basis, log).float()

    def load_mixture(self, probabilities: Tensor | Sequence[Sequence[float]]) -> None:
        """Set ``π`` to ``probabilities`` ``[C, K]`` (rows non-negative, summing to 1)."""
        p = torch.as_tensor(probabilities, dtype=torch.float64)
        if p.shape != (self.num_classes, self.num_strengths):
            raise ValueError(f"mixture must be [{self.num_classes}, {self.num_strengths}], got {tuple(p.shape)}")
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones(1,
                                                                                          dtype=p.dtype), atol=1e-4):
            raise ValueError("mixture rows must be finite, non-negative and sum to 1")
        with torch.no_grad():
            self.mixture_logit.copy_(self._fit(p).to(self.mixture_logit))

    def hparameters(self) -> list[nn.Parameter]:
        """The learnable mixture logits (empty when ``learnable=False``)."""
        return [self.mixture_logit] if isinstance(self.mixture_logit, nn.Parameter) else []

    def gate_entropy(self) -> Tensor:
        """Mean entropy of the classes' mixtures in nats (``0`` .. ``log K``), differentiable: the upper
        objective's entropy bonus (``--augment-entropy``) keeps a mixture from collapsing early."""
        return -(self.mixture * torch.log_softmax(expand_basis(self.basis, self.mixture_logit), dim=1)).sum(1).mean()

    def weights(self, y: Tensor) -> Tensor:
        """``[B, K]`` mixture weights of labels ``y`` ``[B]`` (differentiable in the mixture logits)."""
        return self.mixture[y.long()]

    def mean_strength(self) -> list[float]:
        """``[C]`` expected strength ``Σ_k π_{c,k} s_k`` per class (plain floats)."""
        with torch.no_grad():
            return (self.mixture @ self.strength_values.to(self.mixture)).tolist()

    # ----------------------------------------------------------------------------------------- sampling
    def sample_params(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """CUDA's draws (:meth:`CudaPolicy.sample_params`) plus ``level_noise`` ``[B]`` uniform in ``[0, 1)``,
        which picks each image's strength from its class's mixture (nothing depends on the parameters)."""
        draws = super().sample_params(x, y, generator)
        dev = generator.device if generator is not None else x.device
        draws["level_noise"] = torch.rand(int(x.shape[0]), generator=generator, device=dev).to(x.device)
        return draws

    def bank_draws(self, draws: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """``K`` copies of one batch's draws, copy ``k`` forcing bank strength ``k`` on every image (common
        random numbers: only the strength differs between copies)."""
        b = draws["level_noise"].shape[0]
        dev = draws["level_noise"].device
        return [{**draws, "bank_index": torch.full((b,), k, dtype=torch.long, device=dev)}
                for k in range(self.num_strengths)]

    def bank_index(self, y: Tensor, draws: dict[str, Tensor]) -> Tensor:
        """int64 ``[B]`` each image's bank index: forced (``bank_index`` in ``draws``) or drawn from ``π_y`` by
        inverting its cumulative weights at ``level_noise``."""
        if "bank_index" in draws:
            return draws["bank_index"]
        with torch.no_grad():
            cdf = torch.cumsum(self.mixture[y.long()], dim=1)  # [B, K]
            k = (cdf <= draws["level_noise"][:, None].to(cdf)).sum(dim=1)
        return k.clamp_max(self.num_strengths - 1)

    def forward(self, x: Tensor, y: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Augment each image at a strength of its class's mixture (or at CUDA's level while it is followed).

        Args:
            x: ``[B, 3, H, W]`` float images in ``[0, 1]``.
            y: ``[B]`` int64 labels in ``[0, C)``.
            params: draws from :meth:`sample_params` (or :meth:`bank_draws`) to replay; fresh when ``None``.

        Returns:
            ``[B, 3, H, W]`` augmented images (no graph to the mixture: :meth:`weights` carries it).
        """
        params = self.sample_params(x, y) if params is None else params
        y = torch.as_tensor(y, device=x.device).long()
        if bool(self.following) and "bank_index" not in params:
            return super().forward(x, y, params)
        strength = self.strength_values.to(x.device)[self.bank_index(y, params)]
        return self.augment(x, strength, params)

    def augment(self, x: Tensor, strength: Tensor, params: dict[str, Tensor]) -> Tensor:
        """:meth:`CudaPolicy.augment`, without the crop + flip when ``crop_flip`` is off."""
        if self.crop_flip:
            return super().augment(x, strength, params)
        return cuda_augment(x, strength, params, self.ops, self.max_d)

    # ----------------------------------------------------------------------------- CUDA's warm start
    def start_from_levels(self) -> None:
        """Stop following CUDA's curriculum and start ``π`` from its levels: each class's level goes to the
        nearest bank strength, weighted as CUDA applies it (``apply_probability`` of the images, the rest at 0),
        with the usual spread (``0.1``) over the whole bank so that every strength keeps a gradient."""
        bank = self.strength_values.cpu().double()
        nearest = (self.levels.cpu().double()[:, None] - bank[None, :]).abs().argmin(dim=1)
        self.load_mixture(bank_mixture(self.num_classes, self.num_strengths, 0.1, nearest, self.apply_probability))
        self.following.fill_(False)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """The first epoch of the upper phase starts ``π`` from CUDA's levels (:meth:`start_from_levels`)."""
        if bool(self.following) and trainer.learns and epoch >= trainer.upper_start_epoch:
            self.start_from_levels()

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """CUDA's level update while it is followed; the expected strength per class goes into ``record``
        (under :data:`MEAN_STRENGTH_KEY`)."""
        if bool(self.following):
            super().on_epoch_end(trainer, epoch, record)
        record[MEAN_STRENGTH_KEY] = self.mean_strength()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, strengths={list(self.strengths)}, ops={list(self.ops)}, "
                f"max_d={self.max_d:g}, basis_rank={self.mixture_logit.shape[0]}, learnable={self.learnable}, "
                f"crop_flip={self.crop_flip}, following={bool(self.following)}")


MEAN_STRENGTH_KEY = "augmentation_mean_strength"
"""Key of the expected strength per class ``[C]`` in each epoch's record of a bank policy's run."""


@POLICIES.register("bank")
def _bank(num_classes: int, *, basis: Tensor | None = None, **kw: Any) -> BankPolicy:
    return BankPolicy(num_classes, basis=basis, **kw)
