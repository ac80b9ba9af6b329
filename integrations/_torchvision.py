"""torchvision: a ``train_one_epoch`` / ``evaluate`` pair shaped like torchvision's classification reference,
and data helpers for the exported per-class policies.

The criterion is the whole integration: the reference loop's ``criterion = nn.CrossEntropyLoss(...)``
becomes ``AutoBalanceCriterion(class_counts).attach(model, val_loader)`` and nothing else changes (the
hyper-steps happen inside the criterion's forward). An exported policy file augments each sample with
its class's policy:

- per sample, in a ``transforms.v2`` pipeline or timm's ``create_loader``: ``PerClassTransformV2(policy)``
  applied to whole ``(image, label)`` samples by the label-passing wrapper :class:`SampleTransformDataset`
  (around ``ImageFolder``, timm's ``ImageDataset`` or any ``(image, label)`` dataset);
- per batch, in the ``collate_fn`` (where the reference applies MixUp / CutMix): :class:`PerClassCollate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from ab_plugin.data import normalize
from ab_plugin.objectives import compute_metrics

from ._imports import try_import

with try_import("torchvision") as _tv_import:
    import torchvision  # noqa: F401

__all__ = ["PerClassCollate", "SampleTransformDataset", "evaluate", "train_one_epoch"]


class SampleTransformDataset(Dataset):
    """A label-passing wrapper: gives a per-class transform the whole ``(image, label)`` sample.

    A drop-in around ``ImageFolder`` (built with ``transform=None``), timm's ``ImageDataset`` or any dataset of
    ``(image, label)`` pairs, so that an exported per-class policy runs in an ordinary pipeline::

        train_set = SampleTransformDataset(ImageFolder(root), transforms=v2.Compose(
            [v2.ToImage(), PerClassTransformV2("policy.json"), v2.ToDtype(torch.float32, scale=True),
             v2.Normalize(mean, std)]))                              # torchvision v2: one joint pipeline
        loader = timm.data.create_loader(SampleTransformDataset(ImageFolder(root),
            transforms=PerClassTransformV2("policy.json")), input_size=(3, 32, 32), ...)   # timm's loaders

    ``targets``, ``classes`` and ``class_to_idx`` are the wrapped dataset's (as on ``ImageFolder``).
    timm's ``create_loader`` sets the dataset's ``transform`` attribute to its own image transform (resize,
    crop, flip, to tensor, normalise); it runs after the per-class policy, which sees the raw image.

    Args:
        dataset: yields ``(image, label)`` (PIL image or ``[3, H, W]`` tensor, int label).
        transform: applied to the image only, after ``transforms`` (where timm's loader puts its own).
        transforms: applied first, to the whole ``(image, label)`` sample; this is where a
            ``PerClassTransformV2(policy)`` goes (alone or in a ``v2.Compose``), since it needs the label.
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable[[Any], Any] | None = None,
        transforms: Callable[[tuple[Any, Any]], tuple[Any, Any]] | None = None,
    ) -> None:
        self.dataset, self.transform, self.transforms = dataset, transform, transforms

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    # the wrapped dataset's labels, as on ImageFolder (e.g. for a class-balanced sampler); AttributeError if absent
    @property
    def targets(self) -> Any:
        return self.dataset.targets  # type: ignore[attr-defined]

    @property
    def classes(self) -> Any:
        return self.dataset.classes  # type: ignore[attr-defined]

    @property
    def class_to_idx(self) -> Any:
        return self.dataset.class_to_idx  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, label = self.dataset[index]
        if self.transforms is not None:
            image, label = self.transforms((image, label))
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class PerClassCollate:
    """``collate_fn``: batch ``(image, label)`` samples, apply the per-class policy, normalise, then mix.

    Args:
        transform: batched ``transform(x, y) -> x`` (a :class:`ab_plugin.policies.PerClassTransform`), or
            ``None`` for no augmentation.
        mean, std: per-channel normalisation of images scaled to ``[0, 1]`` (``None``: leave in ``[0, 1]``).
        mix: a batch transform ``(x, y) -> (x, y_soft)``, e.g. ``v2.RandomChoice([v2.MixUp(num_classes=C),
            v2.CutMix(num_classes=C)])`` as in the reference; its soft targets go straight to the criterion.

    Returns (call): ``x`` float ``[B, 3, H, W]``, ``y`` int64 ``[B]`` (or float ``[B, C]`` after ``mix``).
    Picklable (for ``num_workers > 0``) when its parts are.
    """

    def __init__(
        self,
        transform: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        mix: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.transform, self.mean, self.std, self.mix = transform, mean, std, mix

    def __call__(self, samples: list[tuple[Any, Any]]) -> tuple[Tensor, Tensor]:
        x, y = default_collate(samples)
        y = torch.as_tensor(y).long()
        if self.transform is not None:
            x = self.transform(x, y)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if self.mean is not None and self.std is not None:
            x = normalize(x, self.mean, self.std)
        if self.mix is not None:
            x, y = self.mix(x, y)
        return x, y


def _hard(target: Tensor) -> Tensor:
    return target.argmax(1) if target.ndim == 2 else target


def train_one_epoch(
    model: nn.Module,
    criterion: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable[Sequence[Tensor]],
    device: torch.device | str,
    epoch: int,
    *,
    print_freq: int | None = None,
    model_ema: Any | None = None,
    model_ema_steps: int = 1,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = None,
    lr_scheduler: Any | None = None,
    max_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """One epoch, as in torchvision's ``references/classification/train.py`` (same argument order).

    ``criterion`` may be an :class:`AutoBalanceCriterion` (then α is tuned along the way) or any loss.
    Targets may be labels ``[B]`` or soft ``[B, C]`` (MixUp / CutMix in the ``collate_fn``).
    ``lr_scheduler`` (optional) is stepped once per iteration; ``model_ema`` is a
    ``torch.optim.swa_utils.AveragedModel`` (``update_parameters``) or timm EMA (``update``).

    Returns:
        ``{"loss", "acc1", "seconds", "steps"}`` averaged over the epoch (accuracy against the argmax of
        soft targets).
    """
    dev = torch.device(device)
    model.train()
    t0 = time.perf_counter()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for i, (image, target) in enumerate(data_loader):
        if max_steps is not None and i >= max_steps:
            break
        image, target = image.to(dev, non_blocking=True), target.to(dev, non_blocking=True)
        with torch.autocast(dev.type, enabled=scaler is not None):
            output = model(image)
            loss = criterion(output, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        if model_ema is not None and i % model_ema_steps == 0:
            (model_ema.update_parameters if hasattr(model_ema, "update_parameters") else model_ema.update)(model)
        b = image.shape[0]
        total_loss += float(loss.detach()) * b
        correct += int((output.detach().argmax(1) == _hard(target)).sum())
        seen, steps = seen + b, steps + 1
        if print_freq and i % print_freq == 0:
            log(f"Epoch: [{epoch}] [{i}] loss {float(loss.detach()):.4f} lr {optimizer.param_groups[0]['lr']:.4g}")
    return {"loss": total_loss / max(1, seen), "acc1": 100.0 * correct / max(1, seen),
            "seconds": time.perf_counter() - t0, "steps": float(steps)}


def evaluate(
    model: nn.Module,
    criterion: Callable[[Tensor, Tensor], Tensor],
    data_loader: Iterable[Sequence[Tensor]],
    device: torch.device | str,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Evaluate like the reference (``inference_mode``), plus the imbalance metrics.

    Returns:
        ``{"loss", "acc1", "balanced_error", "worst_class_error", "per_class_error"}``.
    """
    dev = torch.device(device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    logits, labels, total = [], [], 0.0
    with torch.inference_mode():
        for image, target in data_loader:
            image, target = image.to(dev, non_blocking=True), target.to(dev, non_blocking=True)
            output = model(image)
            total += float(criterion(output, target)) * image.shape[0]
            logits.append(output.float().cpu())
            labels.append(target.cpu())
    for m, training in modes:
        m.training = training
    z, y = torch.cat(logits), torch.cat(labels).long()
    m = compute_metrics(z, y, num_classes or z.shape[1])
    return {"loss": total / max(1, len(y)), "acc1": 100.0 * m.accuracy, "balanced_error": m.balanced_error,
            "worst_class_error": m.worst_class_error, "per_class_error": m.per_class_error}
