"""The multi-rank sampler: each rank's shard of a global batch, deterministic, disjoint, covering, resumable."""

from __future__ import annotations

import itertools

import torch

from ab_plugin.data import ImageData, TensorLoader


def _data(n: int = 37) -> ImageData:
    # the image's first pixel is its index, so batches can be traced back to samples
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageData(images, torch.arange(n) % 3, [str(c) for c in range(3)])


def _ids(batch) -> list[int]:
    return batch[0][:, 0, 0, 0].tolist()


def _epochs(loader: TensorLoader, epochs: int) -> list[list[int]]:
    return [_ids(b) for _ in range(epochs) for b in loader]


def test_shards_are_disjoint_and_their_union_is_the_single_process_batch():
    one = _epochs(TensorLoader(_data(), 8, drop_last=True, seed=3), 2)
    ranks = [_epochs(TensorLoader(_data(), 8, drop_last=True, seed=3, shard=(r, 2)), 2) for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    assert all(len(a) == len(b) == 4 and not set(a) & set(b) for a, b in zip(*ranks, strict=True))
    assert one[:4] != one[4:8]  # a new order per epoch


def test_the_order_is_deterministic_for_a_seed():
    a = _epochs(TensorLoader(_data(), 8, seed=5, shard=(1, 2)), 2)
    assert a == _epochs(TensorLoader(_data(), 8, seed=5, shard=(1, 2)), 2)
    assert a != _epochs(TensorLoader(_data(), 8, seed=6, shard=(1, 2)), 2)


def test_a_shard_resumes_mid_epoch_from_its_state():
    loader = TensorLoader(_data(), 8, seed=3, shard=(1, 2))
    head = [_ids(b) for b in itertools.islice(loader, 3)]
    state = loader.state_dict()
    rest = _epochs(loader, 2)
    resumed = TensorLoader(_data(), 8, seed=3, shard=(1, 2))
    resumed.load_state_dict(state)
    assert _epochs(resumed, 2) == rest
    assert head + rest[:2] == _epochs(TensorLoader(_data(), 8, seed=3, shard=(1, 2)), 1)
