"""The augmentation bank: common random numbers across strengths, sampling from the mixture, the sharing basis,
CUDA's warm start, and a search that learns the mixture."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyNet

from ab_plugin import AutoBalance, Config, retrain
from ab_plugin.policies import BankPolicy, _ops, create_policy
from ab_plugin.policies._bank import MEAN_STRENGTH_KEY, bank_mixture


def _images(b: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, size // 4, size // 4, generator=g)
    return 0.1 + 0.8 * torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_the_bank_copies_share_every_draw_and_differ_only_in_strength():
    policy = BankPolicy(3, strengths=(0, 3, 6))
    x, y = _images(16), torch.arange(16) % 3
    draws = policy.sample_params(x, y, torch.Generator().manual_seed(0))
    copies = policy.bank_draws(draws)
    assert len(copies) == 3
    for k, d in enumerate(copies):
        assert d["bank_index"].tolist() == [k] * 16
        assert all(torch.equal(d[key], draws[key]) for key in draws)  # common random numbers
    outs = [policy(x, y, d) for d in copies]
    cropped = _ops.crop_flip(x, draws["crop_offset"], draws["crop_flip"], policy.padding)
    assert torch.equal(outs[0], cropped)  # strength 0 is the crop + flip alone
    # each copy is CUDA's augmentation at its strength with the same draws
    for k, s in enumerate((0, 3, 6)):
        assert torch.equal(outs[k], policy.augment(x, torch.full((16,), s), draws))
    assert float((outs[2] - cropped).abs().mean()) > float((outs[1] - cropped).abs().mean()) > 0


def test_training_draws_a_strength_per_image_from_its_class_mixture():
    policy = BankPolicy(2, strengths=(0, 2, 4))
    policy.load_mixture([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    n = 20000
    y = torch.tensor([0, 1]).repeat(n // 2)
    draws = {"level_noise": torch.rand(n, generator=torch.Generator().manual_seed(1))}
    k = policy.bank_index(y, draws)
    assert k[y == 0].eq(0).all()
    freq = torch.bincount(k[y == 1], minlength=3).float() / (n // 2)
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.015, rtol=0)
    # the forward pass applies the drawn strength; replaying the draws replays the images
    x = _images(8)
    d = policy.sample_params(x, y[:8], torch.Generator().manual_seed(2))
    assert torch.equal(policy(x, y[:8], d), policy(x, y[:8], d))
    want = policy.augment(x, policy.strength_values[policy.bank_index(y[:8], d)], d)
    assert torch.equal(policy(x, y[:8], d), want)


def test_the_mixture_starts_near_strength_zero_and_is_shared_through_the_basis():
    policy = create_policy("bank", 4, init_spread=0.3)
    torch.testing.assert_close(policy.mixture.detach(), bank_mixture(4, 6, 0.3))
    assert policy.mixture.detach()[0].tolist() == pytest.approx([0.75] + [0.05] * 5, abs=1e-6)
    grouped = create_policy("bank", 4, basis=torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    assert grouped.mixture_logit.shape == (2, 6)
    with torch.no_grad():
        grouped.mixture_logit[1, 5] += 3.0
    pi = grouped.mixture.detach()
    assert torch.equal(pi[0], pi[1]) and torch.equal(pi[2], pi[3]) and not torch.equal(pi[0], pi[2])
    assert grouped.hparameters() == [grouped.mixture_logit]
    assert BankPolicy(4, learnable=False).hparameters() == []
    with pytest.raises(ValueError, match="increase from 0"):
        BankPolicy(2, strengths=(1, 2))
    with pytest.raises(ValueError, match="sum to 1"):
        policy.load_mixture(torch.full((4, 6), 0.5))


def test_the_warm_start_follows_cuda_then_starts_the_mixture_from_its_levels():
    policy = BankPolicy(4, warm_start=True)
    x, y = _images(8), torch.arange(8) % 4
    d = policy.sample_params(x, y, torch.Generator().manual_seed(0))
    policy.levels.copy_(torch.tensor([0, 3, 7, 10]))
    # while following, training augments as CUDA does (its level, or 0 when not applied)
    strength = torch.where(d["apply"], policy.levels[y], 0)
    assert torch.equal(policy(x, y, d), policy.augment(x, strength, d))

    class Trainer:  # what the hook reads
        learns, upper_start_epoch = True, 2

    policy.on_epoch_start(Trainer(), 1)
    assert bool(policy.following)
    policy.on_epoch_start(Trainer(), 2)
    assert not bool(policy.following)
    # each level goes to the nearest strength (ties to the weaker), half the images at strength 0, 0.1 spread
    at = torch.tensor([0, 1, 3, 5])
    torch.testing.assert_close(policy.mixture.detach(), bank_mixture(4, 6, 0.1, at, 0.5), atol=1e-6, rtol=0)
    record: dict = {}
    policy.on_epoch_end(Trainer(), 2, record)  # no curriculum test once the mixture is learned
    assert "augmentation_levels" not in record and len(record[MEAN_STRENGTH_KEY]) == 4


FAST = dict(dataset="blobs", epochs=3, batch_size=32, lr=0.05, warmup_epochs=1, upper_start=0.34, interval=2,
            hyper_batches=4, upper_lr=0.2, device="cpu", channels_last=False, augment="bank",
            augment_hypergrad="head", seed=0)


def test_a_search_learns_the_mixture_and_the_retrain_trains_with_it(tiny_bundle):
    torch.manual_seed(0)
    search = AutoBalance(Config(**FAST)).fit(tiny_bundle, model=TinyNet(4))
    aug = search.augmentation
    assert search.hyper_steps > 0 and aug["kind"] == "bank" and aug["strengths"] == [0, 2, 4, 6, 8, 10]
    start = bank_mixture(4, 6, 0.1)
    moved = (torch.tensor(aug["per_class"]["mixture"]) - start).abs().max()
    assert moved > 1e-3, moved  # the hypergradient reached the mixture
    assert all(MEAN_STRENGTH_KEY in h for h in search.history)
    result = retrain(search, tiny_bundle, Config(**FAST), model=TinyNet(4))
    # the retrain's fixed policy is the searched one (the mixture to float32 rounding of its logits)
    got = result.augmentation
    assert {k: v for k, v in got.items() if k != "per_class"} == {k: v for k, v in aug.items() if k != "per_class"}
    torch.testing.assert_close(torch.tensor(got["per_class"]["mixture"]), torch.tensor(aug["per_class"]["mixture"]),
                               atol=1e-6, rtol=0)


def test_the_bank_is_refused_where_its_mixture_gets_no_hypergradient(tiny_bundle):
    with pytest.raises(ValueError, match="--augment bank is learned by the head engine"):
        AutoBalance(Config(**{**FAST, "engine": "neumann"})).fit(tiny_bundle, model=TinyNet(4))
    with pytest.raises(ValueError, match="--augment bank is learned by the head engine"):
        AutoBalance(Config(**{**FAST, "mixup": 1.0})).fit(tiny_bundle, model=TinyNet(4))
