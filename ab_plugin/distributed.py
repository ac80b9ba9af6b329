"""Multi-rank runs on ``torch.distributed`` (started by ``torchrun``): every cross-rank reduction lives here.

A run on N ranks computes what one process computes on the union of the ranks' batches. Losses and
validation objectives are not means of per-rank values (a weighted mean ``Σwℓ/Σw``, per-class means),
so they are evaluated on the union of the ranks' outputs (:func:`union_share`) and the rank's share of
each gradient is summed across ranks (:func:`all_reduce_sum_`). Outside a process group of two or more
ranks every function here is the single-process identity.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a default process group of two or more ranks is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_rank_zero() -> bool:
    """The rank that writes files and prints (always true in a single process)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (``cuda:LOCAL_RANK``) for a CUDA device under torchrun; any other device as it is."""
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    return torch.device("cuda", int(os.environ["LOCAL_RANK"]))


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Inside, this process is a rank of the group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1):
    NCCL for CUDA, gloo for CPU; the group is closed on the way out. Without torchrun (one process), or with a
    group already running, nothing happens."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or dist.is_initialized():
        yield
        return
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # torchrun's agent store outlives a restart of the worker group, and with it the previous attempt's
    # peer addresses: each attempt reads and writes its own key space, so no rank dials a dead peer
    store, rank_, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            store=dist.PrefixStore(f"ab_plugin/attempt_{attempt}", store), rank=rank_, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def restarted() -> bool:
    """Whether ``torchrun --max-restarts`` restarted this worker group after a failure (resume is implied)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """In place: each tensor becomes its sum over the ranks."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t)


def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """In place: each tensor becomes its mean over the ranks."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t)
            t.div_(dist.get_world_size())


def gather_rows(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (detached; ranks may differ in the first dimension only), in rank order."""
    t = t.detach().contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return [o[: int(s.item())] for o, s in zip(out, sizes, strict=True)]


def cat_ranks(t: torch.Tensor) -> torch.Tensor:
    """The rows of every rank's ``t`` concatenated in rank order (``t`` itself in a single process)."""
    return torch.cat(gather_rows(t)) if is_distributed() else t


def check_same(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Raise ``RuntimeError`` unless ``tensors`` are bit-for-bit the same on every rank (a desynchronised run
    would otherwise go on silently with a different α per rank)."""
    if not is_distributed() or not tensors:
        return
    mine = torch.cat([t.detach().flatten().float() for t in tensors])
    if not all(torch.equal(mine, other) for other in gather_rows(mine)):
        raise RuntimeError(f"{what} differs between ranks: every rank must run the same code on the same data")


def gather_objects(obj: object) -> list[object]:
    """Every rank's picklable ``obj`` in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def union_share(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn(outputs, *labels)`` evaluated on the union of all ranks' rows, differentiable through this rank's.

    The other ranks' outputs enter as constants, so the value is ``fn`` of the union on every rank and the
    gradients of the ranks sum to the union's gradient (:func:`all_reduce_sum_`). Second derivatives sum
    too when ``fn`` is a sum over rows scaled by anything independent of the outputs (the parametric loss:
    ``Σ w_i ℓ_i / Σ w_i``): its cross-row second derivatives are zero. ``labels`` are row tensors or ``None``.
    """
    if not is_distributed():
        return fn

    def share(outputs: torch.Tensor, *labels: torch.Tensor | None) -> torch.Tensor:
        parts = gather_rows(outputs)
        parts[rank()] = outputs
        union = [None if y is None else cat_ranks(y) for y in labels]
        return fn(torch.cat(parts), *union)

    return share


def shard(n: int, rank_: int | None = None, world: int | None = None) -> slice:
    """Rows of rank ``rank_`` when ``n`` rows are split in rank order (earlier ranks take one more)."""
    r, w = rank() if rank_ is None else rank_, world_size() if world is None else world
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))
