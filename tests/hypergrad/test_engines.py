"""Engines against finite differences of the problems they stand for."""

import pytest
import torch

from ab_plugin.hypergrad import FeatureProblem, create_engine
from ab_plugin.losses import create_loss
from ab_plugin.objectives import balanced_ce

COUNTS = [40, 20, 10, 5]
WD = 0.05


def _data():
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    x = torch.randn(len(y), 3, generator=g) + torch.nn.functional.one_hot(y, 4)[:, :3].float() * 1.5
    yv = torch.arange(4).repeat(6)
    xv = torch.randn(len(yv), 3, generator=g) + torch.nn.functional.one_hot(yv, 4)[:, :3].float() * 1.5
    return x, y, xv, yv


def _solve_head(loss, x, y) -> torch.nn.Linear:
    """θ*(α): the weight-decayed linear head at its minimum (Newton's method on 16 parameters)."""
    clf = torch.nn.Linear(3, 4)
    theta = torch.zeros(16, dtype=torch.float64)

    def objective(t):
        w, b = t[:12].reshape(4, 3), t[12:]
        return loss(x.double() @ w.T + b, y).double() + 0.5 * WD * (t * t).sum()

    with torch.no_grad():
        for h in loss.hparameters():
            h.data = h.data.double()
    for _ in range(12):  # quadratic convergence from zero on this strictly convex problem
        g = torch.func.grad(objective)(theta)
        theta = theta - torch.linalg.solve(torch.func.hessian(objective)(theta), g)
    with torch.no_grad():
        for h in loss.hparameters():
            h.data = h.data.float()
        clf.weight.copy_(theta[:12].reshape(4, 3).float())
        clf.bias.copy_(theta[12:].float())
    return clf


def _val_at(values: dict, x, y, xv, yv) -> float:
    loss = create_loss("autobalance", COUNTS, init="la", learn=("logit_bias", "logit_scale"))
    loss.load_per_class(values)
    clf = _solve_head(loss, x, y)
    with torch.no_grad():
        return float(balanced_ce(clf(xv), yv))


def test_head_engine_matches_finite_differences_of_its_problem():
    x, y, xv, yv = _data()
    loss = create_loss("autobalance", COUNTS, init="la", learn=("logit_bias", "logit_scale"))
    clf = _solve_head(loss, x, y)
    problem = FeatureProblem(clf, loss, balanced_ce, loss.hparameters(), [(x, y)], [(xv, yv)], WD)
    lb_grad, ls_grad = create_engine("head", iters=200, tol=1e-10)(problem)
    base = loss.per_class()
    eps, g = 1e-2, torch.Generator().manual_seed(1)
    for name, got, link in (("logit_bias", lb_grad, lambda v: v),
                            ("logit_scale", ls_grad, torch.sigmoid)):
        raw = getattr(loss, f"{name}_raw").detach()
        for _ in range(2):  # directional derivatives along random directions
            d = torch.randn(4, generator=g)
            up, down = (_val_at({**base, name: link(raw + sign * eps * d).tolist()}, x, y, xv, yv)
                        for sign in (1, -1))
            fd = (up - down) / (2 * eps)
            assert abs(float(got @ d) - fd) <= 2e-3 + 2e-2 * abs(fd), (name, float(got @ d), fd)


def test_create_engine_names_a_bad_option_but_lets_an_engines_own_type_error_through(monkeypatch):
    from ab_plugin.hypergrad import ENGINES

    with pytest.raises(ValueError, match="bad options .*'head'"):
        create_engine("head", iterations=5)

    def broken(steps: int = 1):
        raise TypeError("a bug inside the factory")

    monkeypatch.setitem(ENGINES._factories, "broken", broken)
    with pytest.raises(TypeError, match="a bug inside the factory"):
        create_engine("broken", steps=2)
