"""UpperLevel: warm-up, decay, clipping, skipping, averaging and its state."""

import math

import pytest
import torch
from torch import nn

from ab_plugin.upper import UpperLevel


def _param(*values):
    return nn.Parameter(torch.tensor(values))


def test_sgd_steps_follow_warmup_and_lr_scale():
    p = _param(0.0)
    upper = UpperLevel([p], optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, clip=0, warmup_steps=4)
    moves = []
    for k in range(6):
        before = float(p.detach())
        upper.step([torch.tensor([1.0])], lr_scale=0.5 if k == 5 else 1.0)
        moves.append(before - float(p.detach()))
    assert moves == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.5])
    assert upper.steps == 6 and upper.skipped == 0


def test_clip_bounds_the_hypergradient_norm():
    p = _param(0.0, 0.0)
    upper = UpperLevel([p], optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, clip=1.0)
    norm = upper.step([torch.tensor([3.0, 4.0])])
    assert norm == pytest.approx(5.0) and upper.last_norm == pytest.approx(5.0)
    assert torch.allclose(p.detach(), torch.tensor([-0.6, -0.8]))


def test_clipping_uses_the_float64_norm_of_all_tensors_exactly():
    g = torch.Generator().manual_seed(0)
    grads = [3 * torch.randn(5, generator=g), torch.randn(2, 3, generator=g)]
    params = [nn.Parameter(torch.zeros_like(t)) for t in grads]
    upper = UpperLevel(params, optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, clip=1.0)
    norm = upper.step(grads)
    exact = math.sqrt(sum(float((t.double() ** 2).sum()) for t in grads))
    assert norm == exact > 1.0  # the reported norm is the float64 one, before clipping
    for p, t in zip(params, grads, strict=True):  # the step is -g · clip / (norm + 1e-12), bit for bit
        assert torch.equal(p.detach(), -(t * (1.0 / (exact + 1e-12))))


def test_non_finite_hypergradient_is_skipped_and_alpha_kept():
    p = _param(1.0)
    upper = UpperLevel([p], lr=0.1)
    assert upper.step([torch.tensor([math.nan])]) is None
    assert float(p.detach()) == 1.0 and upper.skipped == 1 and upper.steps == 0


def test_average_over_the_last_steps_is_what_gets_used():
    p = _param(0.0)
    upper = UpperLevel([p], optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, clip=0, average_from=2)
    for _ in range(4):
        upper.step([torch.tensor([-1.0])])  # α = 1, 2, 3, 4
    assert torch.allclose(upper.averaged()[0], torch.tensor([3.5]))  # mean of steps 3 and 4
    assert float(p.detach()) == 4.0 and upper.use_average() and float(p.detach()) == 3.5


def test_state_round_trip_continues_identically():
    def run(split: bool):
        torch.manual_seed(0)
        grads = [torch.randn(3) for _ in range(8)]
        p = nn.Parameter(torch.zeros(3))
        upper = UpperLevel([p], lr=0.05, warmup_steps=3, average_from=4)
        for k, g in enumerate(grads):
            if split and k == 4:
                state = upper.state_dict()
                p2 = nn.Parameter(p.detach().clone())
                upper = UpperLevel([p2], lr=0.05, warmup_steps=3, average_from=4)
                upper.load_state_dict(state)
                p = p2
            upper.step([g])
        upper.use_average()
        return p.detach()

    assert torch.equal(run(False), run(True))


def test_no_hparams_is_a_no_op_and_bad_settings_are_refused():
    assert UpperLevel([]).step([]) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        UpperLevel([_param(0.0)], clip=-1)
    with pytest.raises(ValueError, match="unknown upper optimizer"):
        UpperLevel([_param(0.0)], optimizer="lbfgs")
