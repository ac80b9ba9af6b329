"""Apply an exported per-class policy outside the search: batched tensors and torchvision v2 pipelines."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2 import functional as TF

from ._bank import BankPolicy
from ._file import PolicyFile, PolicyFileError, load_policy, policy_to_module
from ._policy import ClassPolicy

__all__ = ["PerClassTransform", "PerClassTransformV2"]

PolicyModule = ClassPolicy | BankPolicy
"""The modules a policy file's augmentation loads as: kind ``ops`` and kind ``bank``."""
PolicySource = PolicyFile | PolicyModule | str | os.PathLike


def _as_module(policy: Any, crop_flip: bool | None = None) -> PolicyModule:
    module = _load_module(policy)
    if crop_flip is None or bool(crop_flip) == module.crop_flip:
        return module
    import copy

    module = copy.deepcopy(module) if module is policy else module  # never change the caller's live module
    module.crop_flip = bool(crop_flip)  # both kinds read it on every call
    return module


def _load_module(policy: Any) -> PolicyModule:
    if isinstance(policy, PolicyModule):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        policy = load_policy(policy)
    if not isinstance(policy, PolicyFile):
        raise TypeError(
            f"expected a PolicyFile, ClassPolicy, BankPolicy, path or zoo name, got {type(policy).__name__}")
    module = policy_to_module(policy)
    if module is None:
        raise PolicyFileError(
            "policy has no augmentation section (augmentation is null); export it from a search with a "
            "learned or fixed augmentation policy"
        )
    return module


def _device_of(module: PolicyModule) -> torch.device:
    """The device of a policy module's tensors (both kinds hold at least their logits)."""
    return next(itertools.chain(module.parameters(), module.buffers())).device


class PerClassTransform:
    """Non-differentiable batched per-class augmentation: ``transform(x, y) -> x``.

    Draws fresh random parameters on every call and runs under ``torch.no_grad``. Works on any device:
    the policy is copied once to each new device it meets (a snapshot when a live module is given).

    Either kind of policy: ``ops`` (a :class:`ClassPolicy`) applies each of its class's ops with the class's
    probability and magnitude; ``bank`` (a :class:`~ab_plugin.policies.BankPolicy`) draws each image's strength
    ``s`` from its class's mixture over the bank and applies ``s`` ops at magnitude ``s / max_d`` (strength 0:
    no op).

    When the policy says ``crop_flip: true`` (what a search with the default augmentation exports), each image
    first gets the search's random crop (zero-padded by ``padding`` pixels, 4 by default, then cropped back)
    and a horizontal flip with probability 0.5, then its class's ops; ``crop_flip=False`` leaves both to the
    rest of the pipeline.

    Args:
        policy: a :class:`PolicyFile`, a :class:`ClassPolicy` or :class:`~ab_plugin.policies.BankPolicy`, a path
            to a policy file or a zoo name.
        crop_flip: ``None``: as the policy says; ``True`` / ``False``: do / skip the built-in crop + flip.

    Call:
        x: ``[B, 3, H, W]`` (or one image ``[3, H, W]``) uint8 in ``[0, 255]`` or float in ``[0, 1]``.
        y: ``[B]`` int labels (or an int for one image).
        returns: same shape, dtype and device as ``x``.
    """

    def __init__(self, policy: PolicySource, *, crop_flip: bool | None = None) -> None:
        self.policy = _as_module(policy, crop_flip)
        self._by_device: dict[torch.device, PolicyModule] = {}

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` of the policy."""
        return self.policy.num_classes

    @property
    def crop_flip(self) -> bool:
        """Whether the transform does the random crop + horizontal flip itself (before the per-class ops)."""
        return self.policy.crop_flip

    def _module_for(self, device: torch.device) -> PolicyModule:
        own = _device_of(self.policy)
        if device == own or (device.type == own.type and device.index is None):
            return self.policy
        if device not in self._by_device:
            import copy

            self._by_device[device] = copy.deepcopy(self.policy).to(device)
        return self._by_device[device]

    def __call__(self, x: Tensor, y: Tensor | int) -> Tensor:
        single = x.ndim == 3
        xb = x[None] if single else x
        yb = torch.as_tensor(y, device=x.device).reshape(-1).long()
        if xb.ndim != 4:
            raise ValueError(f"expected images [B, 3, H, W] or [3, H, W], got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            xf = xb.float().div_(255.0)
        elif x.is_floating_point():
            xf = xb if x.dtype in (torch.float32, torch.float64) else xb.float()
        else:
            raise TypeError(f"expected uint8 or float images, got {x.dtype}")
        module = self._module_for(x.device)
        with torch.no_grad():
            out = module(xf, yb)
        if x.dtype == torch.uint8:
            out = out.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
        else:
            out = out.to(x.dtype)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policy.extra_repr()})"


def _is_label(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return (
        isinstance(v, Tensor)
        and not isinstance(v, tv_tensors.TVTensor)
        and v.ndim == 0
        and not v.is_floating_point()
        and not v.is_complex()
        and v.dtype != torch.bool
    )


class PerClassTransformV2(Transform):
    """torchvision ``transforms.v2`` transform applying the policy of the sample's own label.

    Use on ``(image, label)`` samples, e.g. with ``dataset = ImageFolder(root, transform=None)``::

        pipeline = v2.Compose([v2.ToImage(), PerClassTransformV2(pf), v2.ToDtype(torch.float32, scale=True)])
        image, label = pipeline(dataset[i])  # (PIL image, int) -> (float tensor [3, H, W], int)

    (``ImageFolder`` has no joint ``transforms=`` argument, so apply the pipeline to whole samples, e.g. in
    a thin wrapper dataset's ``__getitem__``.) The image (``tv_tensors.Image``, a plain ``[3, H, W]``
    tensor, uint8 or float, or a PIL image) is transformed with class ``label``'s policy; the label and
    other entries pass through.

    v2's ``Transform.forward`` hands ``make_params`` only the inputs it will transform (images), never the
    int label, so this class overrides ``forward`` to read the label from the flattened sample and then
    follows v2's rules for which entries are images.

    Crop and flip: a policy with ``crop_flip: true`` (the default of a search) makes this transform do the
    search's random crop (4-pixel zero padding) and horizontal flip (p = 0.5) before the per-class ops, as in
    training. Do not add ``v2.RandomCrop`` / ``v2.RandomHorizontalFlip`` to the same pipeline then (images would
    be cropped and flipped twice), or pass ``crop_flip=False`` to keep your own; :attr:`crop_flip` says which.

    Args:
        policy: a :class:`PolicyFile` (kind ``ops`` or ``bank``), a :class:`ClassPolicy` or
            :class:`~ab_plugin.policies.BankPolicy`, a path to a policy file or a zoo name.
        crop_flip: ``None``: as the policy says; ``True`` / ``False``: do / skip the built-in crop + flip.
    """

    def __init__(self, policy: PolicySource, *, crop_flip: bool | None = None) -> None:
        super().__init__()
        self._apply = PerClassTransform(policy, crop_flip=crop_flip)

    @property
    def crop_flip(self) -> bool:
        """Whether the transform does the random crop + horizontal flip itself (before the per-class ops)."""
        return self._apply.crop_flip

    def _image(self, inpt: Any, label: int) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            t = TF.pil_to_tensor(inpt.convert("RGB"))
            return TF.to_pil_image(self._apply(t, label))
        if isinstance(inpt, tv_tensors.Image) or (
            isinstance(inpt, Tensor) and not isinstance(inpt, tv_tensors.TVTensor)
        ):
            if inpt.ndim != 3 or inpt.shape[0] != 3:
                raise ValueError(f"PerClassTransformV2 expects one RGB image [3, H, W], got {tuple(inpt.shape)}")
            out = self._apply(inpt.as_subclass(Tensor), label)
            return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out
        raise TypeError(f"PerClassTransformV2 supports image classification samples only, got {type(inpt).__name__}")

    def forward(self, *inputs: Any) -> Any:
        """Transform the image(s) of one sample with the policy of its label (see the class docstring)."""
        sample = inputs if len(inputs) > 1 else inputs[0]
        flat, spec = tree_flatten(sample)
        labels = [v for v in flat if _is_label(v)]
        if not labels:
            raise ValueError(
                "PerClassTransformV2 needs the class label in the sample, e.g. transform((image, label)); "
                "got no int label"
            )
        label = int(labels[0])
        if not 0 <= label < self._apply.num_classes:
            raise ValueError(f"label {label} is outside [0, {self._apply.num_classes}) of the policy")
        candidates = [not _is_label(v) for v in flat]
        needs = self._needs_transform_list(flat)
        out = [self._image(v, label) if n and c else v for v, n, c in zip(flat, needs, candidates, strict=True)]
        return tree_unflatten(out, spec)

    def extra_repr(self) -> str:
        return self._apply.policy.extra_repr()
