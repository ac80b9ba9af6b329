"""Backbones: CIFAR ResNets (registered in timm's registry) and any timm model by name.

The CIFAR ResNets follow He et al. (2016) as used by LDAM-DRW and AutoBalance: a 3x3 stem of 16
channels, 3 stages of ``n`` basic blocks with widths 16/32/64 (stride 2 at stages 2 and 3), global
average pooling and a linear (or cosine, :class:`NormedLinear`) classifier; depth ``6n + 2``
(ResNet-20/32/44/56/110 for ``n`` = 3/5/7/9/18). Shortcut option ``"A"`` (parameter-free: subsample and
zero-pad channels, the default, as in the reference code) or ``"B"`` (1x1 conv + BN). Kaiming-normal
initialisation of conv and linear weights.

They are built the timm way (``build_model_with_cfg`` with a pretrained cfg per variant, so
``features_only=True``, ``out_indices``, ``drop_rate`` and ``drop_path_rate`` work as for timm's own models)
and registered in timm's registry as ``resnet20_cifar`` ... ``resnet110_cifar``: ``timm.create_model(
"resnet32_cifar", num_classes=10)`` works once this module is imported, which is what timm's ``train.py``
does with ``--device-modules ab_plugin.models`` (it imports each named module before creating the model).
Our CLI and :func:`create_backbone` also accept the short names ``resnet20`` ... ``resnet110``. The
``_cifar`` suffix keeps the registry unambiguous next to timm's ImageNet ResNets (``resnet18``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.utils import unwrap_model
from torch import Tensor

__all__ = [
    "CIFAR_DEPTHS",
    "NormedLinear",
    "BasicBlock",
    "CifarResNet",
    "create_backbone",
    "list_backbones",
    "split_model",
    # timm's: the plain module under DDP / DataParallel (``.module``), torch.compile (``._orig_mod``) and timm's
    # EMA wrappers, nested in any order
    "unwrap_model",
]

#: Short CLI name -> blocks per stage ``n`` (depth ``6n + 2``).
CIFAR_DEPTHS: dict[str, int] = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": _CIFAR_MEAN,
        "std": _CIFAR_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{name}_cifar": _cfg() for name in CIFAR_DEPTHS})


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM: ``logits = normalize(x) @ normalize(W).T`` (no bias), values in ``[-1, 1]``.

    ``weight`` is ``[out_features, in_features]`` as in ``nn.Linear`` (each row, one class, is L2-normalised
    in ``forward``); initialised like the LDAM-DRW code (uniform, rows renormalised to unit norm). The
    LDAM scale ``s`` belongs to the loss.

    Shapes: ``x [B, in_features]`` -> ``[B, out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _ShortcutA(nn.Module):
    """Option A shortcut: take every second pixel and zero-pad the channels to ``planes``."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.pad_lo = (planes - in_planes) // 2
        self.pad_hi = planes - in_planes - self.pad_lo

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_lo, self.pad_hi))


class BasicBlock(nn.Module):
    """``relu(drop_path(bn(conv3x3(relu(bn(conv3x3(x)))))) + shortcut(x))``; ``[B, in_planes, H, W] -> [B,
    planes, H / stride, W / stride]``. ``drop_path``: stochastic-depth rate of the residual branch."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                if stride != 2:
                    raise ValueError("option-A shortcut needs stride 2 where the width changes")
                self.shortcut = _ShortcutA(in_planes, planes)
            elif shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ValueError(f"unknown shortcut {shortcut!r}: choose 'A' (zero-pad) or 'B' (1x1 conv)")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.drop_path(out) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with timm's model interface (build it with ``timm.create_model`` or :func:`create_backbone`).

    Args:
        num_blocks: basic blocks per stage ``n`` (depth ``6n + 2``).
        num_classes: classifier outputs; 0 gives an ``nn.Identity`` head (pre-logit features).
        in_chans: input channels.
        normed_head: cosine classifier (:class:`NormedLinear`) instead of ``nn.Linear``.
        shortcut: ``"A"`` (zero-pad, reference) or ``"B"`` (1x1 conv projection).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly from 0 at the first block to this at the last.
        widths: channels of the 3 stages.
        device, dtype: where the parameters are created.

    Shapes: ``forward_features``: ``[B, in_chans, H, W] -> [B, 64, H/4, W/4]``; ``forward_head``:
    ``-> [B, num_classes]`` (``[B, 64]`` with ``pre_logits=True``); ``forward``: ``-> [B, num_classes]``.
    ``feature_info``: ``layer1`` / ``layer2`` / ``layer3`` (reductions 1 / 2 / 4), the feature maps
    ``features_only=True`` returns. Works with ``channels_last`` inputs and weights.
    """

    def __init__(
        self,
        num_blocks: int = 5,
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        normed_head: bool = False,
        shortcut: str = "A",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        widths: tuple[int, int, int] = (16, 32, 64),
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normed_head = normed_head
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(in_chans, w1, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.act1 = nn.ReLU()  # a module, so timm's feature extractors replay the stem exactly
        self._in_planes = w1
        rates = torch.linspace(0, drop_path_rate, 3 * num_blocks).tolist()
        self.layer1 = self._make_layer(w1, num_blocks, 1, shortcut, rates[:num_blocks])
        self.layer2 = self._make_layer(w2, num_blocks, 2, shortcut, rates[num_blocks:2 * num_blocks])
        self.layer3 = self._make_layer(w3, num_blocks, 2, shortcut, rates[2 * num_blocks:])
        self.num_features = self.head_hidden_size = w3
        self.feature_info = [
            {"num_chs": w1, "reduction": 1, "module": "layer1"},
            {"num_chs": w2, "reduction": 2, "module": "layer2"},
            {"num_chs": w3, "reduction": 4, "module": "layer3"},
        ]
        self.fc = self._make_head(num_classes)
        self.apply(_kaiming_init)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _make_layer(
        self, planes: int, n: int, stride: int, shortcut: str, drop_paths: list[float]
    ) -> nn.Sequential:
        layers = []
        for s, dp in zip([stride] + [1] * (n - 1), drop_paths, strict=True):
            layers.append(BasicBlock(self._in_planes, planes, s, shortcut, dp))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.normed_head:
            return NormedLinear(self.num_features, num_classes)
        return nn.Linear(self.num_features, num_classes)

    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        """The classifier module (``"fc"`` with ``name_only``)."""
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0: identity)."""
        if global_pool not in (None, "avg"):
            raise ValueError("CifarResNet only supports global_pool='avg'")
        self.num_classes = num_classes
        p = next(self.parameters())
        self.fc = self._make_head(num_classes).to(device=p.device, dtype=p.dtype)
        if isinstance(self.fc, nn.Linear):
            nn.init.kaiming_normal_(self.fc.weight)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass to save memory (timm interface)."""
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, 64, H/4, W/4]`` feature map."""
        x = self.act1(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, dropout and classifier: ``[B, 64, h, w] -> [B, num_classes]``
        (``[B, 64]`` with ``pre_logits``)."""
        x = x.mean(dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _kaiming_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)


def _create_cifar_resnet(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    if pretrained:
        raise ValueError(f"no pretrained weights for {name}: pass pretrained=False")
    return build_model_with_cfg(
        CifarResNet,
        f"{name}_cifar",
        pretrained,
        num_blocks=CIFAR_DEPTHS[name],
        feature_cfg={"out_indices": (0, 1, 2)},
        **kwargs,
    )


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-20 for CIFAR (3 x 3 basic blocks, ~0.27 M parameters)."""
    return _create_cifar_resnet("resnet20", pretrained, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-32 for CIFAR (3 x 5 basic blocks, ~0.46 M parameters)."""
    return _create_cifar_resnet("resnet32", pretrained, **kwargs)


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-44 for CIFAR (3 x 7 basic blocks, ~0.66 M parameters)."""
    return _create_cifar_resnet("resnet44", pretrained, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-56 for CIFAR (3 x 9 basic blocks, ~0.85 M parameters)."""
    return _create_cifar_resnet("resnet56", pretrained, **kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-110 for CIFAR (3 x 18 basic blocks, ~1.7 M parameters)."""
    return _create_cifar_resnet("resnet110", pretrained, **kwargs)


def list_backbones() -> list[str]:
    """Short names of the CIFAR ResNets in timm's registry (``resnet20`` ... ``resnet110``), shallowest first.

    Any other timm model name (``timm.list_models()``) is accepted as a backbone too.
    """
    names = [n.removesuffix("_cifar") for n in timm.list_models("resnet*_cifar")]
    return sorted(names, key=lambda n: int(n.removeprefix("resnet")))


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, module)


def _checkpoint_state(path: str) -> dict[str, Tensor]:
    """The state dict in checkpoint ``path`` (a state_dict, or a dict with a ``state_dict`` / ``model`` key, as
    timm's ``load_checkpoint`` reads it); a missing or unreadable file is a one-line ``ValueError`` naming it."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(path, use_ema=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"--pretrained-file {path}: not a PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"--pretrained-file {path}: holds no state dict of tensors")
    return state


def _head_names(model: nn.Module) -> tuple[str, ...]:
    """Module paths of ``model``'s classifier (``pretrained_cfg["classifier"]``: one name or a tuple)."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier")
    return (head,) if isinstance(head, str) else tuple(head or ())


def _is_head(key: str, heads: tuple[str, ...]) -> bool:
    """Whether state-dict entry ``key`` belongs to one of the classifier modules ``heads``."""
    return any(key == h or key.startswith(h + ".") for h in heads)


def _check_fits(model: nn.Module, state: dict[str, Tensor], path: str, name: str) -> None:
    """Every non-classifier entry of ``model`` is in ``state`` with its shape, and ``state`` holds nothing but
    the model's entries (the classifier's may differ); else a one-line ``ValueError`` naming the file."""
    heads = _head_names(model)
    own = {k: v for k, v in model.state_dict().items() if not _is_head(k, heads)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not _is_head(k, heads)]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise ValueError(
            f"--pretrained-file {path} does not fit backbone {name!r}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong)} mis-shaped entries (e.g. {first!r}); is it a checkpoint of another network?"
        )


def _load_backbone(model: nn.Module, path: str, name: str) -> None:
    """Load checkpoint ``path`` into ``model`` except the classifier (which keeps its fresh initialisation)."""
    state = _checkpoint_state(path)
    _check_fits(model, state, path, name)
    heads = _head_names(model)
    model.load_state_dict({k: v for k, v in state.items() if not _is_head(k, heads)}, strict=False)


def check_backbone(name: str, *, pretrained: bool = False, pretrained_file: str | None = None,
                   label: str = "backbone") -> None:
    """A one-line ``ValueError`` for a backbone name that does not exist, a CIFAR ResNet asked for published
    weights it has none of, or a ``pretrained_file`` that is not a file (what :func:`create_backbone` needs
    before it builds anything; the CLI calls it before loading data, with ``label="--backbone"``)."""
    from pathlib import Path

    if name.removesuffix("_cifar") in list_backbones():
        if pretrained and pretrained_file is None:
            raise ValueError(f"backbone {name!r} has no published weights: give a checkpoint with --pretrained-file")
    elif not timm.is_model(name):
        raise ValueError(f"unknown {label} {name!r}: choose one of resnet20..resnet110 or a timm model name "
                         "(timm.list_models())")
    if pretrained_file is not None and not Path(pretrained_file).is_file():
        raise ValueError(f"--pretrained-file {pretrained_file}: no such file")


def create_backbone(name: str, num_classes: int, *, normed_head: bool = False, pretrained: bool = False,
                    pretrained_file: str | None = None, **kwargs: Any) -> nn.Module:
    """A backbone with ``num_classes`` outputs, randomly initialised unless ``pretrained`` / ``pretrained_file``.

    Args:
        name: ``resnet20`` / ``resnet32`` / ``resnet44`` / ``resnet56`` / ``resnet110`` (CIFAR ResNets, also
            with the ``_cifar`` suffix) or any timm model name (``timm.list_models()``); nothing is downloaded
            unless ``pretrained`` asks for timm's weights that are not in its cache.
        num_classes: classifier outputs.
        normed_head: cosine classifier (:class:`NormedLinear`, for LDAM) instead of the linear one. For
            timm models the classifier named in ``pretrained_cfg["classifier"]`` must be an ``nn.Linear``.
        pretrained: timm's pretrained weights of ``name`` from timm's own source (its local cache, else the hub);
            the classifier is re-initialised by timm when ``num_classes`` differs from the weights'. CIFAR
            ResNets have no published weights: they need ``pretrained_file``.
        pretrained_file: a local checkpoint (a state_dict, or a dict with ``state_dict`` / ``model``) in the
            model's own key layout: timm models load it through ``pretrained_cfg_overlay=dict(file=...)``,
            CIFAR ResNets directly; the classifier's entries are skipped (it keeps its fresh initialisation for
            ``num_classes``). A missing file, or one whose entries are not the backbone's, is a one-line
            ``ValueError`` naming it.
        kwargs: passed to the model constructor (e.g. ``shortcut="B"``, ``drop_rate``, ``in_chans``).

    Returns:
        A module with timm's interface (``forward_features``, ``forward_head``, ``get_classifier``).
        Input ``[B, 3, H, W]`` float, normalised; output ``[B, num_classes]`` logits.
    """
    check_backbone(name, pretrained=pretrained, pretrained_file=pretrained_file)
    short = name.removesuffix("_cifar")
    if short in list_backbones():
        model = timm.create_model(f"{short}_cifar", num_classes=num_classes, normed_head=normed_head, **kwargs)
        if pretrained_file is not None:
            _load_backbone(model, pretrained_file, name)
        return model
    state = None
    if pretrained_file is not None:
        state = _checkpoint_state(pretrained_file)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)))
    elif pretrained:
        kwargs["pretrained"] = True
    kwargs.setdefault("pretrained", False)
    try:
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
    except (RuntimeError, OSError) as e:
        if not kwargs["pretrained"]:
            raise
        if state is not None:  # timm's own message is several lines: say which entries do not fit
            _check_fits(timm.create_model(name, num_classes=num_classes, **{**kwargs, "pretrained": False}),
                        state, pretrained_file, name)
        where = pretrained_file or "timm's source"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"pretrained weights of {name!r} from {where} did not load: {msg}") from None
    if state is not None:  # timm loads non-strictly when it drops the classifier: check every entry landed
        _check_fits(model, state, pretrained_file, name)
    if normed_head:
        path = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
        head = model.get_classifier()
        if not isinstance(path, str) or not isinstance(head, nn.Linear):
            raise ValueError(
                f"normed_head needs a single nn.Linear classifier; {name!r} has {type(head).__name__}"
            )
        _set_submodule(model, path, NormedLinear(head.in_features, head.out_features).to(head.weight.device))
    return model


class _StopForward(Exception):
    def __init__(self, features: Tensor) -> None:
        super().__init__()
        self.features = features


def _features_until(model: nn.Module, head: nn.Module, attr: str) -> Callable[[Tensor], Tensor]:
    """``x -> input of head`` by running ``model`` and stopping in a forward pre-hook of ``head``."""

    def features_fn(x: Tensor) -> Tensor:
        def stop(_: nn.Module, args: tuple[Any, ...]) -> None:
            raise _StopForward(args[0])

        handle = head.register_forward_pre_hook(stop)
        try:
            model(x)
        except _StopForward as s:
            return s.features
        finally:
            handle.remove()
        raise RuntimeError(f"split_model: {type(model).__name__} never called its classifier {attr!r}")

    return features_fn


def split_model(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], nn.Module]:
    """Split a classifier into ``(features_fn, classifier)`` with ``classifier(features_fn(x)) == model(x)``.

    - timm-interface models (``forward_features`` + ``forward_head`` + ``get_classifier``):
      ``features_fn(x) = model.forward_head(model.forward_features(x), pre_logits=True)``.
    - other models with a final ``fc`` / ``classifier`` / ``head`` module (e.g. torchvision): ``features_fn``
      runs ``model`` until the classifier's input and stops there (a forward pre-hook; nothing is mutated).

    Wrappers (DDP, ``torch.compile``) are unwrapped first (:func:`unwrap_model`, timm's).

    Shapes: ``features_fn``: ``[B, 3, H, W] -> [B, D]``; ``classifier``: ``[B, D] -> [B, C]``.
    """
    model = unwrap_model(model)
    if all(hasattr(model, a) for a in ("forward_features", "forward_head", "get_classifier")):
        classifier = model.get_classifier()
        if isinstance(classifier, nn.Module):

            def features_fn(x: Tensor) -> Tensor:
                return model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]

            return features_fn, classifier
    for attr in ("fc", "classifier", "head"):
        classifier = getattr(model, attr, None)
        if isinstance(classifier, nn.Module):
            return _features_until(model, classifier, attr), classifier
    raise ValueError(
        f"split_model: {type(model).__name__} has no timm interface and no fc/classifier/head module: "
        "wrap it so that it exposes forward_features / forward_head / get_classifier"
    )
