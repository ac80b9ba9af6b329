"""backbone_policy_grad: the backbone's response to the augmentation policy, against exact second derivatives."""

from __future__ import annotations

import torch
from torch import nn

from ab_plugin.hypergrad import backbone_policy_grad
from ab_plugin.policies import ClassPolicy


def _problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(24, 3)).double()
    policy = ClassPolicy(3, ("rotate", "translate", "brightness", "cutout"), crop_flip=False,
                         init_probability=0.9, init_magnitude=0.4).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(12, 3, 8, 8, generator=g, dtype=torch.float64), torch.arange(12) % 3
    xv, yv = torch.rand(9, 3, 8, 8, generator=g, dtype=torch.float64), torch.arange(9) % 3
    draws = policy.sample_params(x, y, torch.Generator().manual_seed(2))
    ce = nn.functional.cross_entropy

    def train_loss():
        return ce(net(policy(x, y, draws)), y)

    def val_loss():
        return ce(net(xv), yv)

    return net, policy, train_loss, val_loss


def test_matches_the_exact_mixed_second_derivative():
    net, policy, train_loss, val_loss = _problem()
    params, hparams = list(net.parameters()), policy.hparameters()
    u = torch.autograd.grad(val_loss(), params)
    g = torch.autograd.grad(train_loss(), params, create_graph=True)
    exact = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, u, strict=True)), hparams)
    before = [p.detach().clone() for p in params]

    got = backbone_policy_grad(train_loss, val_loss, params, hparams, step=0.5, eps=1e-4)

    for e, a in zip(exact, got, strict=True):
        rel = ((a + 0.5 * e).norm() / (0.5 * e).norm()).item()
        assert rel < 1e-4, rel
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))  # weights restored exactly
    assert any((a != 0).any() for a in got)


def test_zero_validation_gradient_gives_zero():
    net, policy, train_loss, _ = _problem()
    params = list(net.parameters())
    got = backbone_policy_grad(train_loss, lambda: sum((p * 0).sum() for p in params), params,
                               policy.hparameters(), step=1.0)
    assert all((a == 0).all() for a in got)
