"""Validation batches for hyper-steps: a resumable cycle through the caller's validation loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

Batch = tuple[Tensor, ...]
#: Validation data: a re-iterable of ``(x, y)`` / ``(x, y, groups)`` batches (a ``DataLoader``, a list), or a
#: zero-argument callable returning such an iterable. ``x`` must be what ``model(x)`` takes (already
#: normalised / preprocessed); batches are moved to the model's device.
ValSource = Iterable[Sequence[Tensor]] | Callable[[], Iterable[Sequence[Tensor]]]


def as_source(val_loader: ValSource) -> Callable[[], Iterable[Sequence[Tensor]]]:
    """A zero-argument callable giving a fresh pass over ``val_loader``."""
    if callable(val_loader) and not hasattr(val_loader, "__iter__"):
        return val_loader  # type: ignore[return-value]
    if hasattr(val_loader, "__iter__"):
        return lambda: val_loader  # type: ignore[return-value]
    raise TypeError(f"val_loader must be an iterable of batches or a callable, got {type(val_loader).__name__}")


def to_device(batch: Sequence[Any], device: torch.device) -> Batch:
    """``(x, y[, groups])`` on ``device``; targets must be int labels ``[B]``."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            "validation batches must be (x, y) or (x, y, groups) tuples of tensors, "
            f"got {type(batch).__name__}"
        )
    out = tuple(t.to(device, non_blocking=True) if isinstance(t, Tensor) else torch.as_tensor(t, device=device)
                for t in batch[:3])
    if out[1].ndim != 1 or out[1].is_floating_point():
        raise ValueError(
            f"validation targets must be int class labels [B], got {out[1].dtype} {tuple(out[1].shape)}: "
            "the validation objective needs hard labels (no mixup on the validation loader)"
        )
    return out


class ValStream:
    """``per_call`` batches at a time (``None``: one whole pass), cycling through the source but never taking
    a batch twice in one call. :attr:`position` (batches taken in the current pass) survives a checkpoint:
    after :meth:`restore`, the next :meth:`bind` continues where the saved run was."""

    def __init__(self, per_call: int | None) -> None:
        if per_call is not None and per_call < 1:
            raise ValueError("val_batches must be >= 1 or None")
        self.per_call = per_call
        self.position = 0
        self.last: list[Batch] = []  # the batches of the last call to next()
        self._source: Callable[[], Iterable[Sequence[Tensor]]] | None = None
        self._iter: Iterator[Sequence[Tensor]] | None = None
        self._skip = 0

    def bind(self, source: Callable[[], Iterable[Sequence[Tensor]]]) -> None:
        """Read from ``source``: a fresh pass, or the restored position."""
        self._source, self._iter, self.position = source, None, self._skip

    def unbind(self) -> None:
        self._source, self._iter, self.last = None, None, []

    def restore(self, position: int) -> None:
        self._skip = self.position = int(position)
        self._iter, self.last = None, []

    def next(self, device: torch.device) -> list[Batch]:
        if self._source is None:
            raise RuntimeError("no validation source bound")
        if self.per_call is None:
            out = [to_device(b, device) for b in self._source()]
        else:
            out = self._cycle(device)
        if not out:
            raise ValueError("the validation loader yielded no batches")
        self.last = out
        return out

    def _cycle(self, device: torch.device) -> list[Batch]:
        out: list[Batch] = []
        continuing = self._iter is not None or self._skip > 0
        start = self.position if continuing else 0  # where this call began in the current pass
        restarted = False
        while len(out) < self.per_call:
            if self._iter is None:
                if restarted:
                    break  # a whole pass was taken in this call
                self._iter = iter(self._source())
                if self._skip:  # resumed: continue where the saved run was
                    for _ in range(self._skip):
                        next(self._iter, None)
                    self._skip = 0
                else:
                    restarted = True
            elif restarted and start and self.position >= start:
                break  # wrapped around to where this call began
            batch = next(self._iter, None)
            if batch is None:
                self._iter, self.position = None, 0
                if not restarted and not start:
                    break
                continue
            self.position += 1
            out.append(to_device(batch, device))
        return out
