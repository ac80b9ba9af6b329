"""``--augment cuda``: CUDA's per-class augmentation curriculum as a policy kind, beside the learned ones.

The policy holds the per-class strength levels ``L_c`` (a buffer: the Trainer checkpoint saves them with the
policy's state, so a resumed run continues bit for bit) and augments a training batch like the other kinds: the
fixed crop + flip, then CUDA's strength-dependent ops (:mod:`._cuda_ops`). As a
:class:`~ab_plugin.TrainerCallback` (the Trainer registers a policy that is one) it tests the classes after every
epoch and moves their levels (:mod:`._curriculum`). Nothing here is learned by the search: the search learns α
while CUDA drives the augmentation, and a retrain (or baseline) starts its own curriculum from level 0.

Deviations from ``github.com/sumyeongahn/CUDA_LTR`` besides the op bank (:mod:`._cuda_ops`): the levels move at
the end of each epoch, so none moves before the first one (CUDA's ``cifar/main.py`` lines 89-92 also tests the
untrained model before epoch 1); the tests draw their images and augmentations from a generator seeded by the
run's seed and the epoch, not from the training's random stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ab_plugin.callbacks import TrainerCallback

from . import _ops
from ._cuda_ops import MAX_D, cuda_augment, sample_cuda_draws
from ._curriculum import GAMMA, MAX_LEVEL, TRIALS, trial_accuracies, trial_plan, update_levels
from ._policy import DEFAULT_OPS, POLICIES

if TYPE_CHECKING:
    from ab_plugin.trainer import Trainer

__all__ = ["CudaPolicy", "LEVELS_KEY", "APPLY_PROBABILITY"]

LEVELS_KEY = "augmentation_levels"
"""Key of the levels ``[C]`` (after the epoch's update) in each epoch's record of the run's metrics history."""

APPLY_PROBABILITY: float = 0.5
"""Chance that a training image gets its class's level rather than level 0 (CUDA's ``--aug_prob``,
``cifar/datasets/cifar100.py`` line 206)."""


class CudaPolicy(nn.Module, TrainerCallback):
    """CUDA's curriculum of data augmentation (Ahn et al., ICLR 2023): class ``c`` is augmented at strength
    ``L_c`` (``L_c`` ops drawn with replacement, each at magnitude ``L_c / max_d``), and ``L_c`` rises while
    the model still classifies the class's augmented training images well.

    Args:
        num_classes: ``C``.
        ops: the op bank (names in :data:`~ab_plugin.policies.OPS` with a magnitude).
        gamma: accuracy to exceed at every strength up to ``L_c`` to go up a level (CUDA: 0.6).
        trials: ``T``; class ``c`` is tested on ``T * (s + 1)`` images at each strength ``s <= L_c`` (CUDA: 10).
        max_level: highest level (CUDA: 10).
        max_d: strength at which an op reaches its full range (CUDA: 30).
        apply_probability: chance a training image is augmented at its class's level rather than level 0.
        padding: zero padding of the random crop, in pixels.

    Attributes:
        levels: int64 ``[C]`` current levels in ``[0, max_level]`` (a buffer: in ``state_dict``).
    """

    levels: Tensor

    def __init__(self, num_classes: int, *, ops: Sequence[str] = DEFAULT_OPS, gamma: float = GAMMA,
                 trials: int = TRIALS, max_level: int = MAX_LEVEL, max_d: float = MAX_D,
                 apply_probability: float = APPLY_PROBABILITY, padding: int = 4) -> None:
        super().__init__()
        bad = [op for op in ops if op not in _ops.OPS or not _ops.OPS[op].has_magnitude]
        if bad or not ops:
            raise ValueError(f"cuda ops must be ops with a magnitude, got {list(ops)}")
        if not 0.0 <= gamma < 1.0 or trials < 1 or max_level < 1 or max_d <= 0 or not 0.0 <= apply_probability <= 1.0:
            raise ValueError("cuda needs 0 <= gamma < 1, trials >= 1, max_level >= 1, max_d > 0 and "
                             f"0 <= apply_probability <= 1, got {gamma}, {trials}, {max_level}, {max_d}, "
                             f"{apply_probability}")
        self.num_classes, self.ops = int(num_classes), tuple(ops)
        self.gamma, self.trials, self.max_level, self.max_d = float(gamma), int(trials), int(max_level), float(max_d)
        self.apply_probability, self.padding = float(apply_probability), int(padding)
        self.register_buffer("levels", torch.zeros(self.num_classes, dtype=torch.long))

    def sample_params(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw everything random for one batch (nothing depends on the levels).

        Args:
            x: ``[B, C, H, W]`` batch (only its size and device are used).
            y: ``[B]`` labels (unused; the signature matches :meth:`forward`).
            generator: optional ``torch.Generator``; draws happen on its device, then move to ``x.device``.

        Returns:
            ``crop_offset`` ``[B, 2]`` int64 and ``crop_flip`` ``[B]`` bool (the fixed crop + flip), ``apply``
            ``[B]`` bool (augment at the class's level), and :func:`~._cuda_ops.sample_cuda_draws`'s draws for
            ``max_level`` slots.
        """
        del y
        b = int(x.shape[0])
        dev = generator.device if generator is not None else x.device
        kw: dict[str, Any] = {"generator": generator, "device": dev}
        draws = {
            "crop_offset": torch.randint(0, 2 * self.padding + 1, (b, 2), dtype=torch.long, **kw),
            "crop_flip": torch.rand(b, **kw) < 0.5,
            "apply": torch.rand(b, **kw) < self.apply_probability,
            **sample_cuda_draws(b, self.max_level, len(self.ops), generator, dev),
        }
        return {k: v.to(x.device) for k, v in draws.items()}

    def augment(self, x: Tensor, strength: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Crop + flip, then ``strength[b]`` CUDA ops on image ``b``.

        Args:
            x: ``[B, 3, H, W]`` float images in ``[0, 1]``.
            strength: int64 ``[B]`` in ``[0, max_level]``.
            params: from :meth:`sample_params`.

        Returns:
            ``[B, 3, H, W]`` augmented images in ``[0, 1]``.
        """
        out = _ops.crop_flip(x, params["crop_offset"], params["crop_flip"], self.padding)
        return cuda_augment(out, strength, params, self.ops, self.max_d)

    def forward(self, x: Tensor, y: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Augment each image at its class's level (or at level 0, with probability ``1 - apply_probability``).

        Args:
            x: ``[B, 3, H, W]`` float images in ``[0, 1]``.
            y: ``[B]`` int64 labels in ``[0, C)``.
            params: draws from :meth:`sample_params` to replay; sampled fresh when ``None``.

        Returns:
            ``[B, 3, H, W]`` augmented images.
        """
        params = self.sample_params(x, y) if params is None else params
        y = torch.as_tensor(y, device=x.device).long()
        strength = torch.where(params["apply"], self.levels[y], 0)
        return self.augment(x, strength, params)

    # the curriculum: a Trainer hook after every epoch -------------------------------------------------
    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """Test every class at strengths ``0 .. L_c`` and move its level; the new levels go into ``record``
        (under :data:`LEVELS_KEY`) and the test's wall time, in seconds, under ``LEVELS_KEY + "_seconds"``."""
        t0 = time.perf_counter()
        accuracies = self._accuracies(trainer, epoch)
        with torch.no_grad():
            self.levels.copy_(update_levels(self.levels.cpu(), accuracies, self.gamma, self.max_level))
        record[LEVELS_KEY] = self.levels.tolist()
        record[f"{LEVELS_KEY}_seconds"] = time.perf_counter() - t0

    @torch.no_grad()
    def _accuracies(self, trainer: Trainer, epoch: int) -> Tensor:
        """``[C, max_level + 1]`` accuracy of the model in eval mode on each class's training images augmented at
        each strength up to its level (NaN beyond); on several ranks each tests its share of the images."""
        from ab_plugin.data import create_loader, normalize
        from ab_plugin.distributed import cat_ranks, shard
        from ab_plugin.evaluation import predict_batches

        data, cfg = trainer.train_data, trainer.cfg
        counts = data.class_counts().cpu()
        classes, strengths = trial_plan(self.levels.cpu(), counts, self.trials)
        gen = torch.Generator().manual_seed(cfg.seed * 100019 + epoch)
        index = _draw_members(data.targets.cpu(), counts, classes, gen)
        part = shard(len(index))
        loader = create_loader(data.subset(index[part]), cfg.batch_size, shuffle=False, device=trainer.device,
                               num_workers=cfg.loader_workers, augment=True)
        mine = strengths[part].to(trainer.device)

        def inputs() -> Iterator[Tensor]:
            start = 0
            for x, y, _ in loader:
                x01 = x.float().div_(255.0) if x.dtype == torch.uint8 else x
                k = mine[start:start + len(y)]
                start += len(y)
                yield normalize(self.augment(x01, k, self.sample_params(x01, y, gen)), trainer.mean, trainer.std)

        logits, _ = predict_batches(trainer.model, inputs(), device=trainer.device, channels_last=cfg.channels_last,
                                    amp=cfg.amp, features=False)
        correct = (logits.argmax(dim=1) == classes[part].to(logits.device)).long()  # long: gathered on any backend
        return trial_accuracies(cat_ranks(correct).bool(), classes, strengths, self.num_classes, self.max_level + 1)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, ops={list(self.ops)}, gamma={self.gamma:g}, trials={self.trials}, "
                f"max_level={self.max_level}, max_d={self.max_d:g}")


def _draw_members(targets: Tensor, counts: Tensor, classes: Tensor, generator: torch.Generator) -> Tensor:
    """For every test ``i``, the index of a training image of class ``classes[i]``, uniformly with replacement.

    Args:
        targets: int64 ``[N]`` training labels.
        counts: int64 ``[C]`` images per class (every class in ``classes`` has some).
        classes: int64 ``[K]`` the class of each test.
        generator: CPU generator.

    Returns:
        int64 ``[K]`` indices into the training set.
    """
    by_class = torch.argsort(targets, stable=True)  # the class-0 images first, then class 1, ...
    first = torch.cumsum(counts, 0) - counts
    n = counts[classes]
    pick = (torch.rand(len(classes), generator=generator, dtype=torch.float64) * n).long().clamp_max(n - 1)
    return by_class[first[classes] + pick]


@POLICIES.register("cuda")
def _cuda(num_classes: int, *, basis: Tensor | None = None, **kw: Any) -> CudaPolicy:
    if basis is not None:
        raise ValueError("policy kind 'cuda' has one level per class and takes no basis")
    return CudaPolicy(num_classes, **kw)
