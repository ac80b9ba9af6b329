"""TensorLoader / StreamingLoader sampling and resume, batched crop + flip, normalisation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ab_plugin.data import ImageData, TensorLoader, create_dataset, create_loader, normalize, random_crop_flip
from ab_plugin.data._loader import StreamingLoader


def _indexed(n: int, groups: bool = False) -> ImageData:
    """Sample i: every pixel equals i (n <= 256), label i % 3, group i % 2."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    g = torch.arange(n) % 2 if groups else None
    return ImageData(images, torch.arange(n) % 3, ["a", "b", "c"], g, ["even", "odd"] if groups else None)


def _ids(batches: list) -> list[list[int]]:
    return [x[:, 0, 0, 0].tolist() for x, _, _ in batches]


def test_tensor_loader_covers_every_sample_once_per_epoch() -> None:
    data = _indexed(50, groups=True)
    loader = TensorLoader(data, 16, seed=3)
    assert len(loader) == 4
    for _ in range(3):
        batches = list(loader)
        ids = sum(_ids(batches), [])
        assert sorted(ids) == list(range(50)) and [len(b) for b in _ids(batches)] == [16, 16, 16, 2]
        for x, y, g in batches:
            assert x.dtype == torch.uint8 and x.shape[1:] == (3, 4, 4)
            assert y.dtype == torch.int64 and torch.equal(y, x[:, 0, 0, 0].long() % 3)
            assert g is not None and torch.equal(g, x[:, 0, 0, 0].long() % 2)
    assert loader.epoch == 3
    dropped = TensorLoader(data, 16, drop_last=True)
    assert len(dropped) == 3 and [len(b) for b in _ids(list(dropped))] == [16, 16, 16]
    plain = TensorLoader(_indexed(10), 4, shuffle=False)
    assert _ids(list(plain)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(g is None for _, _, g in plain)


def test_tensor_loader_deterministic_per_seed() -> None:
    data = _indexed(40)

    def run(seed: int) -> list[list[list[int]]]:
        loader = TensorLoader(data, 8, seed=seed)
        return [_ids(list(loader)) for _ in range(2)]

    assert run(0) == run(0)
    assert run(0) != run(1)
    loader = TensorLoader(data, 8, seed=0)
    assert _ids(list(loader)) != _ids(list(loader))  # a new permutation each epoch


def test_tensor_loader_state_dict_resume_bit_for_bit() -> None:
    data = _indexed(30)
    ref = TensorLoader(data, 7, seed=5)
    reference = [_ids(list(ref)) for _ in range(3)]
    flat = sum(reference, [])
    for epochs, steps in [(1, 0), (0, 2), (1, 3), (2, 5)]:
        a = TensorLoader(data, 7, seed=5)
        for _ in range(epochs):
            list(a)
        consumed = list(itertools.islice(iter(a), steps))
        state = a.state_dict()
        b = TensorLoader(data, 7, seed=99)  # different seed: everything comes from the state
        b.load_state_dict(state)
        done = epochs * 5 + steps
        assert _ids(consumed) == flat[epochs * 5 : done]
        rest = sum((_ids(list(b)) for _ in range(3 - epochs - (steps == 5))), [])
        assert rest == flat[done:], (epochs, steps)
    # leaving a loop early and iterating again continues the same epoch
    c = TensorLoader(data, 7, seed=5)
    first = _ids(list(itertools.islice(iter(c), 2)))
    assert first + _ids(list(c)) == reference[0] and _ids(list(c)) == reference[1]
    with pytest.raises(ValueError, match="same data and batch size"):
        TensorLoader(data, 8).load_state_dict(state)


def _pattern(b: int, h: int = 6, w: int = 7) -> torch.Tensor:
    """float [B, 2, H, W]: unique non-zero values per pixel (zero marks padding)."""
    base = torch.arange(1, 2 * h * w + 1, dtype=torch.float32).view(1, 2, h, w)
    return base + 1000 * torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)


def test_random_crop_flip_really_shifts_and_mirrors() -> None:
    x = _pattern(48)
    p = 2
    out = random_crop_flip(x, padding=p, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    seen_offsets, seen_flips = set(), set()
    for i in range(len(x)):
        matches = [
            (dy, dx, f)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for f in (False, True)
            if torch.equal(
                out[i],
                (lambda c: c.flip(-1) if f else c)(padded[i, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]),
            )
        ]
        assert len(matches) == 1, i  # each output is exactly one shifted (and maybe mirrored) crop
        seen_offsets.add(matches[0][:2])
        seen_flips.add(matches[0][2])
    assert seen_flips == {False, True} and len(seen_offsets) > 5
    # flip only: each sample is x or its mirror image
    fo = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    mirrored = [bool(torch.equal(fo[i], x[i].flip(-1))) for i in range(len(x))]
    assert all(torch.equal(fo[i], x[i]) or mirrored[i] for i in range(len(x))) and 0 < sum(mirrored) < len(x)


def test_random_crop_flip_deterministic_uint8_channels_last_and_differentiable() -> None:
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(7))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(7))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(8))
    assert a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)
    cl = random_crop_flip(x.to(memory_format=torch.channels_last), generator=torch.Generator().manual_seed(7))
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, a)
    xf = x.float().requires_grad_()
    random_crop_flip(xf).sum().backward()
    assert xf.grad is not None and xf.grad.max() == 1  # a crop moves pixels, never duplicates them


def test_normalize() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize(x, (0.0, 0.2, 0.5), (1.0, 0.5, 0.25))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 0.0, 2.0]))
    assert torch.allclose(normalize(x.float() / 255, (0.0, 0.2, 0.5), (1.0, 0.5, 0.25)), out)


def test_streaming_loader_matches_in_memory_order(tmp_path: Path) -> None:
    for c in range(2):
        for i in range(5):
            (tmp_path / "train" / f"k{c}").mkdir(parents=True, exist_ok=True)
            arr = np.full((4, 4, 3), 10 * c + i, dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "train" / f"k{c}" / f"{i}.png")
            (tmp_path / "test" / f"k{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp_path / "test" / f"k{c}" / f"{i}.png")
    mem = create_dataset(f"imagefolder:{tmp_path}", imbalance=1).train
    stream = create_loader(str(tmp_path), 4, seed=2, num_workers=0)
    fast = create_loader(mem, 4, seed=2)
    assert isinstance(stream, StreamingLoader) and isinstance(fast, TensorLoader) and len(stream) == 3
    for _ in range(2):
        s, f = list(stream), list(fast)
        assert _ids(s) == _ids(f)
        assert all(torch.equal(a[1], b[1]) and a[2] is None for a, b in zip(s, f, strict=True))
    state = stream.state_dict()
    nxt = _ids(list(stream))
    again = StreamingLoader(str(tmp_path), 4, num_workers=0)
    again.load_state_dict(state)
    assert _ids(list(again)) == nxt
