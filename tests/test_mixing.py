"""Mixup and CutMix against hand-written references on tiny batches with fixed draws."""

import pytest
import torch

from ab_plugin.mixing import cutmix_box, mix_images, mix_lambda, mix_targets, sample_mix, split_mix


def _draws(lam, perm, labels, box=None):
    d = {"mix_lam": torch.tensor(lam, dtype=torch.float64), "mix_perm": torch.tensor(perm),
         "mix_labels": torch.tensor(labels)}
    if box is not None:
        d["mix_box"] = torch.tensor(box, dtype=torch.float64)
    return d


def test_mixup_images_and_targets_match_hand_reference():
    x = torch.arange(3 * 1 * 2 * 2, dtype=torch.float32).reshape(3, 1, 2, 2)
    d = _draws(0.7, [2, 0, 1], [0, 1, 3])
    expected = torch.stack([0.7 * x[0] + 0.3 * x[2], 0.7 * x[1] + 0.3 * x[0], 0.7 * x[2] + 0.3 * x[1]])
    assert torch.allclose(mix_images(x, d), expected, atol=1e-6)
    assert torch.allclose(mix_targets(4, d, 2, 2), torch.tensor([
        [0.7, 0.0, 0.0, 0.3],   # own label 0, partner image 2 has label 3
        [0.3, 0.7, 0.0, 0.0],   # own 1, partner 0
        [0.0, 0.3, 0.0, 0.7],   # own 3, partner 1
    ]), atol=1e-6)


def test_cutmix_box_area_and_lambda_correction_by_hand():
    # λ = 0.75 on 8 x 8: sides int(8 · 0.5) = 4, centre (row 0.5·8, col 0.25·8) = (4, 2): rows 2..6, cols 0..4
    assert cutmix_box(0.75, torch.tensor([0.5, 0.25]), 8, 8) == (2, 6, 0, 4)
    d = _draws(0.75, [1, 0], [0, 2], box=[0.5, 0.25])
    assert mix_lambda(d, 8, 8) == pytest.approx(1 - 16 / 64)
    # clipped at the corner: centre (0, 0) keeps a quarter of the box, λ corrected to 1 - 2·2 / 64
    d = _draws(0.75, [1, 0], [0, 2], box=[0.0, 0.0])
    assert cutmix_box(0.75, d["mix_box"], 8, 8) == (0, 2, 0, 2)
    assert mix_lambda(d, 8, 8) == pytest.approx(1 - 4 / 64)
    x = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    out = mix_images(x, d)
    assert out[0, 0, :2, :2].eq(1).all() and out[0].sum() == 4  # image 0 got image 1's box only
    assert out[1, 0, :2, :2].eq(0).all() and out[1].sum() == 64 - 4
    t = mix_targets(3, d, 8, 8)
    assert torch.allclose(t[0], torch.tensor([60 / 64, 0.0, 4 / 64]))


def test_sample_mix_is_off_at_zero_and_replayable_from_the_global_seed():
    y = torch.tensor([0, 1, 2, 3])
    state = torch.get_rng_state()
    assert sample_mix(y, mixup_alpha=0.0, cutmix_alpha=0.0) is None
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn: runs without a mix are unchanged
    torch.manual_seed(3)
    a = sample_mix(y, mixup_alpha=1.0, cutmix_alpha=0.0)
    torch.manual_seed(3)
    b = sample_mix(y, mixup_alpha=1.0, cutmix_alpha=0.0)
    assert a.keys() == b.keys() == {"mix_lam", "mix_perm", "mix_labels"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(a["mix_perm"].tolist()) == [0, 1, 2, 3] and 0 <= float(a["mix_lam"]) <= 1
    assert "mix_box" in sample_mix(y, mixup_alpha=0.0, cutmix_alpha=1.0)


def test_both_kinds_switch_about_half_the_batches():
    torch.manual_seed(0)
    y = torch.zeros(2, dtype=torch.long)
    cut = sum("mix_box" in sample_mix(y, mixup_alpha=1.0, cutmix_alpha=1.0) for _ in range(400))
    assert 160 < cut < 240


def test_split_mix_separates_the_policy_draws():
    d = {"crop_flip": torch.ones(2), **_draws(0.5, [1, 0], [0, 1])}
    policy, mix = split_mix(d)
    assert set(policy) == {"crop_flip"} and set(mix) == {"mix_lam", "mix_perm", "mix_labels"}
    assert split_mix({"crop_flip": d["crop_flip"]})[1] is None and split_mix(None) == (None, None)
