"""backbone_policy_grad: the backbone's response to the augmentation policy, against finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ab_plugin.hypergrad import backbone_policy_grad
from ab_plugin.policies import ClassPolicy


def _problem(act: type[nn.Module]):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), act(), nn.Conv2d(6, 6, 3, padding=1), act(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3)).double()
    policy = ClassPolicy(3, ("rotate", "translate", "brightness"), crop_flip=False,
                         init_probability=0.9, init_magnitude=0.4).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(12, 3, 8, 8, generator=g, dtype=torch.float64), torch.arange(12) % 3
    xv, yv = torch.rand(9, 3, 8, 8, generator=g, dtype=torch.float64), torch.arange(9) % 3
    draws = policy.sample_params(x, y, torch.Generator().manual_seed(2))
    ce = nn.functional.cross_entropy
    return net, policy, (lambda: ce(net(policy(x, y, draws)), y)), (lambda: ce(net(xv), yv))


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
def test_matches_finite_differences_in_the_policy(act):
    """``(∂²_{Aθ} ℓ) u = ∇_A (∇_θ ℓ · u)``: the magnitudes' part against central differences in A of
    ``∇_θ ℓ_train · u`` (first derivatives only). The gate's forward is a hard draw, so the probabilities
    have no finite difference. ReLU is the case a finite difference in weight space gets wrong."""
    net, policy, train_loss, val_loss = _problem(act)
    params, (_, mag) = list(net.parameters()), policy.hparameters()
    before = [p.detach().clone() for p in params]
    got = backbone_policy_grad(train_loss, val_loss, params, policy.hparameters(), step=0.5)[1]
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    u = torch.autograd.grad(val_loss(), params)

    def dot_at(i: int, value: float) -> float:
        with torch.no_grad():
            mag.view(-1)[i] = value
        g = torch.autograd.grad(train_loss(), params)
        return sum((a * b).sum() for a, b in zip(g, u, strict=True)).item()

    h, start = 1e-6, mag.detach().clone().view(-1)
    fd = torch.tensor([(dot_at(i, a + h) - dot_at(i, a - h)) / (2 * h) for i, a in enumerate(start.tolist())],
                      dtype=mag.dtype).view_as(mag)
    with torch.no_grad():
        mag.copy_(start.view_as(mag))
    rel = ((got + 0.5 * fd).norm() / (0.5 * fd).norm()).item()
    assert fd.norm() > 0 and rel < 1e-5, rel


def test_zero_validation_gradient_gives_zero():
    net, policy, train_loss, _ = _problem(nn.ReLU)
    params = list(net.parameters())
    got = backbone_policy_grad(train_loss, lambda: sum((p * 0).sum() for p in params), params,
                               policy.hparameters(), step=1.0)
    assert all((a == 0).all() for a in got)
