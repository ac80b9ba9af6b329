import torch
import torch.nn.functional as F

from ab_plugin.objectives import (
    balanced_ce,
    compute_metrics,
    create_objective,
    cvar_class_ce,
    equal_opportunity_gap,
    worst_class_ce,
    worst_group_ce,
)


def test_balanced_ce_weights_classes_equally():
    z = torch.randn(7, 3)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 2])
    per = F.cross_entropy(z, y, reduction="none")
    expected = (per[:5].mean() + per[5] + per[6]) / 3
    assert torch.allclose(balanced_ce(z, y), expected)


def test_worst_class_objectives_bound_the_max():
    z = torch.randn(30, 4)
    y = torch.arange(30) % 4
    per = torch.stack([F.cross_entropy(z[y == c], y[y == c]) for c in range(4)])
    assert worst_class_ce(z, y, temperature=1e-3) <= per.max() + 1e-3
    assert worst_class_ce(z, y, temperature=1e-3) >= per.max() - 0.01
    assert torch.allclose(cvar_class_ce(z, y, alpha=0.25), per.max())


def test_group_objectives_need_groups_and_are_differentiable():
    z = torch.randn(20, 2, requires_grad=True)
    y = torch.arange(20) % 2
    g = (torch.arange(20) // 10) % 2
    for fn in (worst_group_ce, equal_opportunity_gap):
        v = fn(z, y, g)
        (grad,) = torch.autograd.grad(v, z)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    try:
        worst_group_ce(z, y, None)
    except ValueError as e:
        assert "group labels" in str(e)
    else:
        raise AssertionError("expected an error without groups")
    assert create_objective("balanced") is balanced_ce


def test_metrics():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0])
    m = compute_metrics(pred, y, 3, groups=torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]))
    assert abs(m.accuracy - 4 / 8) < 1e-9
    assert abs(m.balanced_error - (0.25 + 0.5 + 1.0) / 3) < 1e-9
    assert m.worst_class_error == 1.0
    assert m.per_class_error == [0.25, 0.5, 1.0]
    assert m.per_group_error == [0.25, 0.75]
    assert m.worst_group_error == 0.75
