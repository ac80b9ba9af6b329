"""CUDA's curriculum: the level update, the strength -> ops mapping, the policy's levels, bit-exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TinyNet

from ab_plugin import AutoBalance, Config, TrainerCallback
from ab_plugin.policies import CudaPolicy, _ops, create_policy
from ab_plugin.policies._cuda import LEVELS_KEY
from ab_plugin.policies._curriculum import trial_accuracies, trial_plan, update_levels

NAN = math.nan


def _acc(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_levels_rise_fall_and_clamp_over_a_hand_made_sequence():
    levels = torch.tensor([0, 0, 2, 2])  # max_level 2
    sequence = [
        # class 0 passes (rises), 1 fails (clamped at 0), 2 passes at its top level (clamped at 2), 3 fails at s=1
        _acc([[0.9, NAN, NAN], [0.6, NAN, NAN], [0.7, 0.8, 0.9], [1.0, 0.5, 1.0]]),
        # class 0 passes strengths 0 and 1; class 3 (now 1) passes 0 and 1
        _acc([[0.8, 0.7, NAN], [0.61, NAN, NAN], [0.7, 0.8, 0.59], [0.9, 0.9, NAN]]),
    ]
    expected = [[1, 0, 2, 1], [2, 1, 1, 2]]
    for accuracies, want in zip(sequence, expected, strict=True):
        levels = update_levels(levels, accuracies, gamma=0.6, max_level=2)
        assert levels.tolist() == want
    # the test is strict (> gamma), a NaN (untested class) fails, and columns above a level are not read
    assert update_levels(torch.tensor([0, 0, 0]), _acc([[0.6, 1, 1], [NAN, 1, 1], [0.7, 0.0, 0.0]]),
                         0.6, 2).tolist() == [0, 0, 1]


def test_trial_plan_and_accuracies():
    classes, strengths = trial_plan(torch.tensor([0, 2, 1]), torch.tensor([5, 3, 0]), trials=2)
    # class 0: 2 tests at s=0; class 1: 2, 4, 6 tests at s=0, 1, 2; class 2 has no images
    assert classes.tolist() == [0] * 2 + [1] * 12
    assert strengths.tolist() == [0, 0] + [0] * 2 + [1] * 4 + [2] * 6
    correct = torch.tensor([True, False] + [True] * 2 + [True, True, False, False] + [False] * 6)
    acc = trial_accuracies(correct, classes, strengths, num_classes=3, num_strengths=3)
    assert acc[0, 0] == 0.5 and acc[1].tolist() == [1.0, 0.5, 0.0]
    assert torch.isnan(acc[0, 1:]).all() and torch.isnan(acc[2]).all()


def _images(b: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, size // 4, size // 4, generator=g)
    return 0.1 + 0.8 * torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_strength_zero_is_crop_flip_and_higher_strength_changes_more():
    policy = CudaPolicy(3)
    x = _images(64)
    y = torch.zeros(64, dtype=torch.long)
    params = policy.sample_params(x, y, torch.Generator().manual_seed(1))
    cropped = _ops.crop_flip(x, params["crop_offset"], params["crop_flip"], policy.padding)
    assert torch.equal(policy.augment(x, torch.zeros(64, dtype=torch.long), params), cropped)
    change = [float((policy.augment(x, torch.full((64,), k), params) - cropped).abs().mean()) for k in (1, 4, 7, 10)]
    assert change[0] > 0 and all(a < b for a, b in zip(change, change[1:], strict=False)), change
    # one op only: strength k applies it k times at magnitude k / 30 (rotate: k degrees each, random sign)
    rotate = CudaPolicy(1, ops=("rotate",))
    p1 = rotate.sample_params(x, y, torch.Generator().manual_seed(2))
    p1["sign"].fill_(1.0)
    out = rotate.augment(x, torch.full((64,), 3), p1)
    want = _ops.warp(_ops.crop_flip(x, p1["crop_offset"], p1["crop_flip"], 4), _ops.affine_matrix(
        torch.zeros(64, 2), torch.full((64,), 9.0), torch.ones(64), torch.zeros(64, 2), torch.ones(64), 16, 16))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_draws_are_deterministic_given_a_seed_and_levels_pick_the_strength():
    policy = create_policy("cuda", 2, apply_probability=1.0)
    policy.levels.copy_(torch.tensor([0, 6]))
    x, y = _images(8), torch.tensor([0, 1] * 4)
    outs = [policy(x, y, policy.sample_params(x, y, torch.Generator().manual_seed(3))) for _ in range(2)]
    assert torch.equal(*outs)
    params = policy.sample_params(x, y, torch.Generator().manual_seed(3))
    cropped = _ops.crop_flip(x, params["crop_offset"], params["crop_flip"], 4)
    assert torch.equal(outs[0][y == 0], cropped[y == 0])  # level 0: crop + flip only
    assert not torch.equal(outs[0][y == 1], cropped[y == 1])
    assert torch.equal(policy.state_dict()["levels"], torch.tensor([0, 6]))  # checkpointed with the policy
    with pytest.raises(ValueError, match="no basis"):
        create_policy("cuda", 2, basis=torch.ones(2, 1))


FAST = dict(dataset="blobs", epochs=4, batch_size=32, lr=0.05, warmup_epochs=1, upper_start=0.25, interval=2,
            hyper_batches=4, upper_lr=0.05, device="cpu", channels_last=False, augment="cuda", seed=0)


def test_search_with_cuda_moves_levels_and_learns_no_policy(tiny_bundle):
    """(Its bit-exact resume is a case of tests/search/test_search.py::test_resume_is_bit_for_bit.)"""

    class LevelsFirst(TrainerCallback):
        def on_epoch_end(self, trainer, epoch, record):
            assert LEVELS_KEY in record  # the policy's hook ran first

    torch.manual_seed(0)
    full = AutoBalance(Config(**FAST)).fit(tiny_bundle, model=TinyNet(4), callbacks=[LevelsFirst()])
    levels = [h[LEVELS_KEY] for h in full.history]
    assert max(max(lv) for lv in levels) > 0, levels  # the curriculum moved
    assert full.hyper_steps > 0 and full.augmentation is None  # α is searched, A is not
