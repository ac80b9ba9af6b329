"""Long-tail profiles, long-tailed subsampling, stratified splits and the ImageData container."""

from __future__ import annotations

import pytest
import torch

from ab_plugin.data import ImageData, long_tail_counts, make_long_tailed, split_per_class


def _indexed(targets: list[int]) -> ImageData:
    """ImageData whose sample i has every pixel equal to i (so kept samples are identifiable)."""
    n = len(targets)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    classes = [f"k{c}" for c in range(max(targets) + 1)]
    return ImageData(images, torch.tensor(targets), classes)


def _ids(d: ImageData) -> list[int]:
    return d.images[:, 0, 0, 0].tolist()


def test_exp_profile_cifar10_lt_counts() -> None:
    counts = long_tail_counts(1000, 10, 100)
    assert counts == [1000, 600, 360, 216, 130, 78, 47, 28, 17, 10]
    assert sum(counts) == 2486
    assert sum(long_tail_counts(5000, 10, 100)) == 12414  # ceil, as in BENCHMARKS.md's formula
    # LDAM-DRW's int() rounding gives the 12,406 images of the reference release
    floor = long_tail_counts(5000, 10, 100, "exp_floor")
    assert floor == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(floor) == 12406
    assert long_tail_counts(500, 100, 100)[-1] == 5 and long_tail_counts(500, 100, 100)[0] == 500


def test_step_and_balanced_profiles() -> None:
    assert long_tail_counts(100, 10, 10, "step") == [100] * 5 + [10] * 5
    assert long_tail_counts(100, 5, 3, "step") == [100, 100, 34, 34, 34]
    assert long_tail_counts(7, 4, 1) == [7, 7, 7, 7]
    assert long_tail_counts(7, 1, 50) == [7]
    for n, c, rho in [(37, 7, 13.0), (5000, 100, 200.0), (9, 3, 2.5)]:
        counts = long_tail_counts(n, c, rho)
        assert (
            counts[0] == n
            and len(counts) == c
            and all(a >= b for a, b in zip(counts, counts[1:], strict=False))
        )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((100, 10, 0.5), "imbalance must be >= 1"),
        ((0, 10, 10), "n_max"),
        ((100, 10, 10, "linear"), "profile"),
    ],
)
def test_long_tail_counts_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        long_tail_counts(*args)


def test_make_long_tailed_keeps_first_samples_in_order() -> None:
    data = _indexed([0, 1, 0, 2, 1, 0, 2, 0, 1, 2])
    lt = make_long_tailed(data, [3, 2, 1])
    assert _ids(lt) == [0, 1, 2, 3, 4, 5]  # class 0: 0,2,5; class 1: 1,4; class 2: 3
    assert lt.class_counts().tolist() == [3, 2, 1]
    assert make_long_tailed(data, [0, 0, 3]).targets.tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="class 'k2' has 3 samples but 4 were asked"):
        make_long_tailed(data, [1, 1, 4])
    with pytest.raises(ValueError, match="one count per class"):
        make_long_tailed(data, [1, 1])


def test_split_per_class_is_stratified_and_deterministic() -> None:
    targets = [0] * 10 + [1] * 5 + [2] * 2 + [3] * 7
    data = _indexed(targets)
    train, val = split_per_class(data, 0.2, seed=0)
    assert val.class_counts().tolist() == [2, 1, 1, 1]  # round(0.2 n), >= 1
    assert train.class_counts().tolist() == [8, 4, 1, 6]  # >= 1 left for training
    assert sorted(_ids(train) + _ids(val)) == list(range(len(targets)))
    assert _ids(train) == sorted(_ids(train)) and _ids(val) == sorted(_ids(val))  # order kept
    again = split_per_class(data, 0.2, seed=0)[1]
    assert _ids(again) == _ids(val)
    others = {tuple(_ids(split_per_class(data, 0.2, seed=s)[1])) for s in range(1, 6)}
    assert len(others | {tuple(_ids(val))}) > 1  # the seed matters
    half = split_per_class(data, 0.5, seed=3)[1]
    assert half.class_counts().tolist() == [5, 3, 1, 4]  # half rounded up: 2.5 -> 3, 3.5 -> 4
    floor = split_per_class(data, 0.2, seed=0, min_val=3)[1]
    assert floor.class_counts().tolist() == [3, 2, 1, 3]  # the floor, but never more than half a class


def test_split_per_class_errors() -> None:
    with pytest.raises(ValueError, match="class 'k1' has 1 sample.*at least 2"):
        split_per_class(_indexed([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="val_fraction"):
        split_per_class(_indexed([0, 0, 1, 1]), 1.0)


def test_image_data_container() -> None:
    data = _indexed([0, 1, 1, 2])
    assert len(data) == 4 and data.num_classes == 3 and data.image_size == (2, 2)
    assert data.class_counts().dtype == torch.int64
    sub = data.subset(torch.tensor([3, 0]))
    assert _ids(sub) == [3, 0] and sub.targets.tolist() == [2, 0]
    assert _ids(data.subset(torch.tensor([True, False, True, False]))) == [0, 2]
    both = ImageData.concat(sub, data)
    assert len(both) == 6 and _ids(both) == [3, 0, 0, 1, 2, 3]
    grouped = ImageData(data.images, data.targets, data.classes, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    assert grouped.subset(torch.tensor([1])).groups.tolist() == [1]
    assert ImageData.concat(grouped, grouped).groups.tolist() == [0, 1, 0, 1] * 2
    with pytest.raises(ValueError, match="group"):
        ImageData.concat(grouped, data)
    with pytest.raises(ValueError, match="same classes"):
        ImageData.concat(data, ImageData(data.images, data.targets, ["x", "y", "z"]))
    with pytest.raises(ValueError, match="uint8"):
        ImageData(data.images.float(), data.targets, data.classes)
