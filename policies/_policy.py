"""Class-conditional differentiable augmentation policy ``A_y`` (the PDA part of AutoBalance)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ab_plugin._registry import Registry
from ab_plugin.losses._sharing import expand_basis, fit_basis

from . import _ops
from ._cutout import Cutout
from ._ops import COLOR_OPS, GEOMETRIC_OPS, OPS

__all__ = ["ClassPolicy", "create_policy", "list_policies", "DEFAULT_OPS", "POLICIES", "LEARNED_KINDS",
           "LOGIT_LIMIT"]

DEFAULT_OPS: tuple[str, ...] = (
    "translate",
    "rotate",
    "shear",
    "scale",
    "brightness",
    "contrast",
    "saturation",
    "cutout",
)
"""Default learned ops. ``flip`` is left out because ``crop_flip`` already flips with probability 0.5."""


LOGIT_LIMIT: float = 120.0
"""Raw logits are clamped to ``±LOGIT_LIMIT`` when loaded; ``sigmoid(±120)`` is exactly 1 / 0 in float32."""

_NOISE_EPS = 1e-7

_CUTOUT = Cutout(OPS["cutout"].max_value)
"""Stateless here (side, centre and gate come per call), so one instance outside any module's parameters."""

_COLOR_FNS = {
    "brightness": _ops.adjust_brightness,
    "contrast": _ops.adjust_contrast,
    "saturation": _ops.adjust_saturation,
}


def _exact_logit(p: Tensor) -> Tensor:
    """Float logits ``z`` (dtype of ``p``) with ``sigmoid(z) == p`` bit for bit wherever reachable.

    Starts from the float64 logit and walks by one ulp (``nextafter``) until ``torch.sigmoid`` in
    ``p``'s dtype reproduces ``p``; so ``sigmoid`` values exported from a module load back exactly.
    ``p = 0`` / ``1`` map to ``∓LOGIT_LIMIT``. ``p`` must be the full ``[C, n]`` matrix the module
    evaluates, so that the same elementwise kernel path is used on both sides.

    Args:
        p: ``[C, n]`` probabilities in ``[0, 1]``.

    Returns:
        ``[C, n]`` logits, same dtype as ``p``.
    """
    z = torch.logit(p.double()).clamp(-LOGIT_LIMIT, LOGIT_LIMIT).to(p.dtype)
    up = torch.full_like(z, math.inf)
    down = torch.full_like(z, -math.inf)
    for _ in range(64):
        s = torch.sigmoid(z)
        low, high = s < p, s > p
        if not bool((low | high).any()):
            break
        z = torch.where(low, torch.nextafter(z, up), torch.where(high, torch.nextafter(z, down), z))
    return z


class ClassPolicy(nn.Module):
    """Per-class differentiable augmentation policy: image ``x`` of class ``y`` gets ``A_y(x)``.

    Every op ``o`` has, per class ``c``, a probability ``p[c, o] = sigmoid((D @ probability_logit)[c, o])``
    and (except ``flip``) a magnitude ``m[c, o] = sigmoid((D @ magnitude_logit)[c, o])``, both in
    ``(0, 1)``; ``D`` is the sharing basis ``[C, k]`` (identity when ``basis=None``). The magnitude maps
    to a physical range per op (see :data:`ab_plugin.policies.OPS`: rotate up to 30 degrees,
    translate up to 0.3 of the image size, brightness/contrast/saturation factors ``1 ± 0.5 m``,
    shear factor up to 0.3, zoom ``1 ± 0.3 m``, cutout square up to half the shorter side).

    Differentiability (as kornia's ``OperationBase``, but class-conditional and batched):

    - magnitudes are reparameterised: a random sign / direction / position is drawn per image as
      non-differentiable noise and the magnitude scales it;
    - whether an op fires is a straight-through relaxed Bernoulli gate: exactly 0/1 forward, the
      gradient of ``sigmoid((logit p + logit u) / temperature)`` backward, so ``probability_logit``
      gets a gradient (:func:`ab_plugin.policies._ops.relaxed_bernoulli_gate`).

    Application order, whatever the order of ``ops``: the standard CIFAR crop (zero pad
    ``padding``) and flip when ``crop_flip`` (not learned, exact pixel copies); one bilinear affine
    warp composed by ``kornia.geometry`` (scale and mirror, shear, rotate about the centre, translate);
    brightness, contrast, saturation (``kornia.enhance``); cutout (a kornia ``OperationBase``,
    :class:`ab_plugin.policies._cutout.Cutout`). A batch applies each image's own class row: the same
    as applying the policy image by image with the same draws.

    Args:
        num_classes: number of classes ``C``.
        ops: op names (subset of :data:`~ab_plugin.policies.OPS`), in parameter-column order.
        basis: optional sharing matrix ``D`` ``[C, k]`` (e.g. one-hot frequency groups or frequency
            features); ``None`` is the identity (one free value per class).
        init_probability: initial per-class probability of every op, in ``(0, 1)``.
        init_magnitude: initial per-class magnitude of every op, in ``(0, 1)``.
        learnable: raw logits are ``nn.Parameter`` (else buffers, :meth:`hparameters` is empty).
        crop_flip: apply the standard random crop + horizontal flip first.
        temperature: relaxed Bernoulli temperature (> 0).
        padding: zero padding of the random crop, in pixels.

    Attributes:
        probability_logit: ``[k, n_ops]`` raw probability logits.
        magnitude_logit: ``[k, n_magnitude_ops]`` raw magnitude logits (ops with a magnitude only, in
            ``ops`` order; ``flip`` has none).
    """

    probability_logit: Tensor
    magnitude_logit: Tensor
    basis: Tensor | None
    temperature: Tensor

    def __init__(
        self,
        num_classes: int,
        ops: Sequence[str] = DEFAULT_OPS,
        *,
        basis: Tensor | None = None,
        init_probability: float = 0.5,
        init_magnitude: float = 0.3,
        learnable: bool = True,
        crop_flip: bool = True,
        temperature: float = 0.1,
        padding: int = 4,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        ops = tuple(ops) if not isinstance(ops, str) else (ops,)
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown augmentation op(s) {unknown}; choose from {sorted(OPS)}")
        if len(set(ops)) != len(ops):
            raise ValueError(f"augmentation ops must be unique, got {list(ops)}")
        for name, v in (("init_probability", init_probability), ("init_magnitude", init_magnitude)):
            if not 0.0 < float(v) < 1.0:
                raise ValueError(f"{name} must be in the open interval (0, 1), got {v}")
        if not float(temperature) > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if int(padding) < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.num_classes = int(num_classes)
        self.ops: tuple[str, ...] = ops
        self.magnitude_ops: tuple[str, ...] = tuple(op for op in ops if OPS[op].has_magnitude)
        self.learnable = bool(learnable)
        self.crop_flip = bool(crop_flip)
        self.padding = int(padding)
        self._op_index = {op: i for i, op in enumerate(self.ops)}
        self._mag_index = {op: i for i, op in enumerate(self.magnitude_ops)}

        if basis is not None:
            basis = torch.as_tensor(basis).detach().to(torch.float32)
            if basis.ndim != 2 or basis.shape[0] != self.num_classes or basis.shape[1] < 1:
                raise ValueError(
                    f"basis must be a [num_classes={self.num_classes}, k] matrix, got shape {tuple(basis.shape)}"
                )
            if not bool(torch.isfinite(basis).all()):
                raise ValueError("basis contains non-finite values")
            basis = basis.contiguous()
        self.register_buffer("basis", basis)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

        c = self.num_classes
        prob = self._fit(torch.full((c, len(self.ops)), float(init_probability), dtype=torch.float32))
        mag = self._fit(torch.full((c, len(self.magnitude_ops)), float(init_magnitude), dtype=torch.float32))
        if self.learnable:
            self.probability_logit = nn.Parameter(prob)
            self.magnitude_logit = nn.Parameter(mag)
        else:
            self.register_buffer("probability_logit", prob)
            self.register_buffer("magnitude_logit", mag)

    # ----------------------------------------------------------------- parameters
    @property
    def num_basis(self) -> int:
        """Number of raw rows ``k`` (``C`` for the identity basis)."""
        return self.num_classes if self.basis is None else int(self.basis.shape[1])

    def has_identity_basis(self) -> bool:
        """Whether ``D`` is the identity (``basis=None`` or an explicit ``eye(C)``)."""
        b = self.basis
        if b is None:
            return True
        return b.shape[0] == b.shape[1] and bool(torch.equal(b, torch.eye(b.shape[0], dtype=b.dtype, device=b.device)))

    def _expand(self, raw: Tensor) -> Tensor:
        """``D @ raw``: ``[k, n]`` raw values -> ``[C, n]`` per-class logits."""
        return expand_basis(self.basis, raw)

    def _fit(self, target: Tensor) -> Tensor:
        """Raw ``[k, n]`` logits whose per-class sigmoid is ``target`` ``[C, n]``.

        Exact for the identity basis, least squares in logit space otherwise."""
        if self.has_identity_basis():
            return fit_basis(None, target, inverse=_exact_logit)
        return fit_basis(self.basis, target, inverse=lambda p: torch.logit(p.double().clamp(1e-6, 1.0 - 1e-6)))

    @property
    def probability(self) -> Tensor:
        """``[C, n_ops]`` per-class op probabilities in ``(0, 1)`` (differentiable)."""
        return torch.sigmoid(self._expand(self.probability_logit))

    @property
    def magnitude(self) -> Tensor:
        """``[C, n_magnitude_ops]`` per-class magnitudes in ``(0, 1)`` (differentiable)."""
        return torch.sigmoid(self._expand(self.magnitude_logit))

    def hparameters(self) -> list[nn.Parameter]:
        """Learnable raw parameters (for the upper-level optimizer); empty when ``learnable=False``."""
        out: list[nn.Parameter] = []
        for p in (self.probability_logit, self.magnitude_logit):
            if isinstance(p, nn.Parameter) and p.numel() > 0:
                out.append(p)
        return out

    def gate_entropy(self) -> Tensor:
        """Mean Bernoulli entropy of the per-class op probabilities, in nats (``0`` .. ``log 2``), differentiable.

        A bonus on it in the upper objective keeps gates from collapsing to never / always while the
        validation signal on them is weak (the straight-through gradient reaches only the images near a gate's
        threshold)."""
        z = self._expand(self.probability_logit)
        p = torch.sigmoid(z)
        # H(p) = softplus(z) - p z, stable for large |z|
        return (nn.functional.softplus(z) - p * z).mean()

    def per_class(self) -> dict[str, dict[str, list[float]]]:
        """Expanded per-class values, ``{op: {"probability": [C], "magnitude": [C]}}`` (no ``magnitude`` for
        ``flip``); plain Python floats, the format of a policy file's ``augmentation.per_class``."""
        with torch.no_grad():
            prob = self.probability.detach().cpu().tolist()
            mag = self.magnitude.detach().cpu().tolist()
        out: dict[str, dict[str, list[float]]] = {}
        for op in self.ops:
            i = self._op_index[op]
            entry = {"probability": [float(row[i]) for row in prob]}
            if op in self._mag_index:
                j = self._mag_index[op]
                entry["magnitude"] = [float(row[j]) for row in mag]
            out[op] = entry
        return out

    def load_per_class(self, per_class: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
        """Set the raw parameters from :meth:`per_class` output.

        Exact inverse for the identity basis (``per_class()`` afterwards returns the same floats, when the
        values came from a module of the same dtype); for another basis the raw values are the least-squares
        fit in logit space (values clamped to ``[1e-6, 1 - 1e-6]``).

        Args:
            per_class: ``{op: {"probability": [C], "magnitude": [C]}}`` for exactly this policy's ops.

        Raises:
            ValueError: ops or lengths do not match, values outside ``[0, 1]`` or not finite.
        """
        if set(per_class) != set(self.ops):
            raise ValueError(
                f"per-class policy has ops {sorted(per_class)} but this ClassPolicy has {sorted(self.ops)}"
            )
        c = self.num_classes

        def column(op: str, key: str) -> list[float]:
            vals = per_class[op].get(key)
            if vals is None or len(vals) != c:
                n = "missing" if vals is None else f"length {len(vals)}"
                raise ValueError(f"per-class {op}.{key} is {n}; expected {c} values (one per class)")
            out = [float(v) for v in vals]
            if not all(0.0 <= v <= 1.0 for v in out):  # also rejects NaN
                raise ValueError(f"per-class {op}.{key} must lie in [0, 1]")
            return out

        def matrix(rows: list[list[float]], like: Tensor) -> Tensor:
            t = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), c).T
            return t.to(dtype=like.dtype, device=like.device).contiguous()

        prob_rows = [column(op, "probability") for op in self.ops]
        mag_rows = [column(op, "magnitude") for op in self.magnitude_ops]
        with torch.no_grad():
            pl, ml = self.probability_logit, self.magnitude_logit
            pl.copy_(self._fit(matrix(prob_rows, pl)))
            ml.copy_(self._fit(matrix(mag_rows, ml)))

    # ----------------------------------------------------------------- sampling
    def sample_params(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw all random quantities for one batch (nothing depends on the learnable parameters).

        Args:
            x: ``[B, C, H, W]`` batch (only its size and device are used).
            y: ``[B]`` labels (unused by the draws; kept so the signature matches :meth:`forward`).
            generator: optional ``torch.Generator``; draws happen on its device, then move to ``x.device``.

        Returns:
            dict of tensors on ``x.device``:
            ``crop_offset`` ``[B, 2]`` int64 (top, left) in ``[0, 2 padding]`` and ``crop_flip`` ``[B]`` bool
            (when ``crop_flip``); ``gate_noise`` ``[B, n_ops]`` uniform in ``(0, 1)``; ``sign`` ``[B, n_ops]``
            ``±1.0``; ``translate_direction`` ``[B, 2]`` unit vectors; ``shear_axis`` ``[B]`` bool (True: x);
            ``cutout_center`` ``[B, 2]`` centre ``(x, y)`` as a fraction of ``(W, H)`` in ``[0, 1)``.
        """
        del y
        b = int(x.shape[0])
        dev = generator.device if generator is not None else x.device
        kw: dict[str, Any] = {"generator": generator, "device": dev}
        p: dict[str, Tensor] = {}
        if self.crop_flip:
            p["crop_offset"] = torch.randint(0, 2 * self.padding + 1, (b, 2), dtype=torch.long, **kw)
            p["crop_flip"] = torch.rand(b, **kw) < 0.5
        n = len(self.ops)
        if n:
            p["gate_noise"] = torch.rand(b, n, **kw).clamp_(_NOISE_EPS, 1.0 - _NOISE_EPS)
            p["sign"] = torch.where(torch.rand(b, n, **kw) < 0.5, -1.0, 1.0)
        if "translate" in self.ops:
            phi = torch.rand(b, **kw) * (2.0 * math.pi)
            p["translate_direction"] = torch.stack([torch.cos(phi), torch.sin(phi)], -1)
        if "shear" in self.ops:
            p["shear_axis"] = torch.rand(b, **kw) < 0.5
        if "cutout" in self.ops:
            p["cutout_center"] = torch.rand(b, 2, **kw)
        return {k: v.to(x.device) for k, v in p.items()}

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, y: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Augment each image with its own class's policy.

        Args:
            x: ``[B, 3, H, W]`` float images in ``[0, 1]`` on the module's device.
            y: ``[B]`` int64 labels in ``[0, C)``.
            params: draws from :meth:`sample_params` to replay (same ``params`` and parameters give the same
                output, bitwise on CPU); sampled fresh when ``None``.

        Returns:
            ``[B, 3, H, W]`` augmented images, differentiable w.r.t. ``x``, ``probability_logit`` and
            ``magnitude_logit``.
        """
        y = self._checked_labels(x, y)
        if params is None:
            params = self.sample_params(x, y)

        out = x
        if self.crop_flip:
            out = _ops.crop_flip(out, params["crop_offset"], params["crop_flip"], self.padding)
        if not self.ops:
            return out

        dtype = x.dtype
        y = y.long()
        gate = _ops.relaxed_bernoulli_gate(
            self._expand(self.probability_logit).to(dtype)[y],
            params["gate_noise"],
            self.temperature.to(dtype),
        )  # [B, n_ops], exactly 0/1 forward
        mag = torch.sigmoid(self._expand(self.magnitude_logit)).to(dtype)[y]  # [B, n_mag]
        sign = params["sign"].to(dtype)

        def g(op: str) -> Tensor:
            return gate[:, self._op_index[op]]

        def m(op: str) -> Tensor:
            return mag[:, self._mag_index[op]]

        def signed(op: str) -> Tensor:
            return sign[:, self._op_index[op]] * m(op) * OPS[op].max_value

        out = self._warp(out, g, m, signed, params)
        for op in COLOR_OPS:
            if op in self._op_index:
                new = _COLOR_FNS[op](out, 1.0 + signed(op))
                out = torch.lerp(out, new, g(op)[:, None, None, None])  # exact at gate 0 / 1

        if "cutout" in self._op_index:
            out = _CUTOUT.erase(out, m("cutout"), params["cutout_center"].to(dtype), g("cutout"))
        return out

    def _checked_labels(self, x: Tensor, y: Tensor) -> Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"x must be a float [B, C, H, W] batch, got {x.dtype} {tuple(x.shape)}")
        y = torch.as_tensor(y, device=x.device)
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
            raise ValueError(f"y must be integer labels [B={x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
        if y.device.type == "cpu" and y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {int(y.min())}..{int(y.max())}")
        if x.shape[1] != 3 and any(OPS[op].kind == "color" for op in self.ops):
            raise ValueError(f"colour ops need RGB images [B, 3, H, W], got {x.shape[1]} channels")
        return y

    def _warp(self, out: Tensor, g: Callable[[str], Tensor], m: Callable[[str], Tensor],
              signed: Callable[[str], Tensor], params: dict[str, Tensor]) -> Tensor:
        """The gated geometric ops of every sample composed into one kornia affine warp.

        A gate scales its op's parameter (angle, zoom - 1, shear, shift; the mirror's sign): exactly the op
        or the identity forward, and the straight-through gradient reaches the gate through the warp."""
        geo = [op for op in GEOMETRIC_OPS if op in self._op_index]
        if not geo:
            return out
        b, _, h, w = out.shape
        zero = out.new_zeros(b)

        def gated(op: str, value: Callable[[], Tensor]) -> Tensor:
            return g(op) * value() if op in self._op_index else zero

        def shift() -> Tensor:
            length = m("translate") * OPS["translate"].max_value  # [B], fraction of the image size
            return params["translate_direction"].to(out.dtype) * out.new_tensor([float(w), float(h)]) * length[:, None]

        shear = gated("shear", lambda: signed("shear"))
        axis = params["shear_axis"] if "shear" in self._op_index else zero.bool()
        matrix = _ops.affine_matrix(
            translation=g("translate")[:, None] * shift() if "translate" in self._op_index else out.new_zeros(b, 2),
            angle=gated("rotate", lambda: signed("rotate")),
            zoom=1.0 + gated("scale", lambda: signed("scale")),
            shear=torch.stack([torch.where(axis, shear, 0.0), torch.where(axis, 0.0, shear)], -1),
            mirror=1.0 - 2.0 * gated("flip", lambda: torch.ones_like(zero)),
            height=h,
            width=w,
        )
        warped = _ops.warp(out, matrix)
        applied = torch.stack([g(op) for op in geo], 1).gt(0.5).any(dim=1)
        # rows without a geometric op keep their pixels exactly; the identity warp still carries the
        # straight-through gradient to the gates
        keep = out.detach() + (warped - warped.detach()) if torch.is_grad_enabled() else out
        return torch.where(applied[:, None, None, None], warped, keep)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, ops={list(self.ops)}, basis_rank={self.num_basis}, "
            f"learnable={self.learnable}, crop_flip={self.crop_flip}, temperature={float(self.temperature):g}"
        )


POLICIES: Registry[nn.Module | None] = Registry("policy kind")


@POLICIES.register("learned")
def _learned(num_classes: int, *, basis: Tensor | None = None, **kw: Any) -> ClassPolicy:
    kw.setdefault("learnable", True)
    return ClassPolicy(num_classes, basis=basis, **kw)


@POLICIES.register("fixed")
def _fixed(num_classes: int, *, basis: Tensor | None = None, **kw: Any) -> ClassPolicy:
    extra = sorted(set(kw) - {"padding"})
    if extra or basis is not None:
        raise ValueError(f"policy kind 'fixed' takes no options besides padding, got {extra or ['basis']}")
    return ClassPolicy(num_classes, ops=(), learnable=False, crop_flip=True, **kw)


@POLICIES.register("generic")
def _generic(num_classes: int, *, basis: Tensor | None = None, **kw: Any) -> ClassPolicy:
    # one learned policy for every class: the sharing basis is a single all-ones column
    if basis is not None:
        raise ValueError("policy kind 'generic' shares one policy across all classes and takes no basis")
    kw.setdefault("learnable", True)
    return ClassPolicy(num_classes, basis=torch.ones(num_classes, 1), **kw)


@POLICIES.register("none")
def _none(num_classes: int, *, basis: Tensor | None = None, **kw: Any) -> None:
    return None


LEARNED_KINDS: tuple[str, ...] = ("generic", "learned", "bank")
"""Kinds the search learns (``generic``: one policy's op probabilities and magnitudes for all classes;
``learned``: one per class, PDA, shared through the loss's basis; ``bank``: per-class mixture weights over a
bank of strengths, :class:`~ab_plugin.policies.BankPolicy`)."""


def create_policy(kind: str, num_classes: int, *, basis: Tensor | None = None, **kw: Any) -> nn.Module | None:
    """Create an augmentation policy by kind.

    Args:
        kind: ``"learned"`` (learnable per-class :class:`ClassPolicy`, PDA), ``"generic"`` (one learnable
            policy shared by all classes), ``"fixed"`` (the standard CIFAR random crop with 4 px zero padding
            + horizontal flip, no parameters), ``"cuda"`` (CUDA's per-class curriculum,
            :class:`~ab_plugin.policies.CudaPolicy`) or ``"none"`` (no augmentation).
        num_classes: number of classes ``C``.
        basis: optional ``[C, k]`` sharing matrix for ``"learned"``.
        **kw: forwarded to :class:`ClassPolicy` (``"learned"``, ``"generic"``; ``"fixed"`` accepts ``padding``
            only) or :class:`~ab_plugin.policies.CudaPolicy` (``"cuda"``).

    Returns:
        a module ``policy(x, y) -> x`` or ``None`` for ``"none"`` (callers skip augmentation).

    Raises:
        ValueError: unknown kind (the message lists the choices) or options that do not apply.
    """
    return POLICIES.create(kind, num_classes, basis=basis, **kw)


def list_policies() -> list[str]:
    return POLICIES.names()
