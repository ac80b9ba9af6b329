"""The exact stage-2 hypergradient against central finite differences of the exactly solved classifier problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ab_plugin.losses import ParametricCrossEntropy
from ab_plugin.objectives import create_objective
from ab_plugin.stage2 import search_alpha, solve_classifier, stage2_hypergradient
from ab_plugin.upper import UpperLevel

WD = 1e-2


def _data(seed: int, counts):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    centers = torch.randn(len(counts), 4, generator=g, dtype=torch.float64)
    return centers[labels] + 1.2 * torch.randn(len(labels), 4, generator=g, dtype=torch.float64), labels


def _setup():
    train, val = _data(0, [30, 10, 4]), _data(1, [8, 8, 8])
    torch.manual_seed(0)
    loss = ParametricCrossEntropy(3, learn=("logit_bias", "logit_scale", "class_weight")).double()
    with torch.no_grad():
        for p in loss.hparameters():
            p.copy_(0.3 * torch.randn_like(p))
    clf = nn.Linear(4, 3).double()
    return train, val, loss, clf


def _solved_objective(loss, clf, train, val, objective, wd, max_iter=2000):
    solve_classifier(clf, loss, *train, weight_decay=wd, tol=1e-10, max_iter=max_iter)
    with torch.no_grad():
        return float(objective(clf(val[0]), val[1], None))


def _central_differences(loss, clf, train, val, objective, wd, max_iter=2000, eps=1e-5):
    """Central differences of the validation objective at the solved classifier in every raw α entry, each side
    re-solved from the warm start ``θ*(α)`` (``clf``'s weights)."""
    fd = []
    for p in loss.hparameters():
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            values = []
            for sign in (1, -1):
                with torch.no_grad():
                    p.view(-1)[i] += sign * eps
                c = nn.Linear(clf.in_features, clf.out_features).double()
                c.load_state_dict(clf.state_dict())
                values.append(_solved_objective(loss, c, train, val, objective, wd, max_iter=max_iter))
                with torch.no_grad():
                    p.view(-1)[i] -= sign * eps
            g.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
        fd.append(g)
    return fd


@pytest.mark.parametrize("fd_wd", [WD, 2 * WD])
def test_hypergradient_matches_finite_differences_of_the_solved_problem(fd_wd):
    train, val, loss, clf = _setup()
    objective = create_objective("balanced")
    norm = solve_classifier(clf, loss, *train, weight_decay=WD, tol=1e-10, max_iter=2000)
    assert norm < 1e-9
    grads = stage2_hypergradient(clf, loss, objective, train, val, weight_decay=WD)
    fd = _central_differences(loss, clf, train, val, objective, fd_wd)
    flat, ref = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in fd])
    rel = float((flat - ref).norm() / ref.norm())
    if fd_wd == WD:
        assert rel < 1e-4, (flat, ref)
    else:  # finite differences of another inner problem (weight decay doubled): the check must see it
        assert rel > 1e-2


def test_search_alpha_lowers_the_validation_objective():
    train, val, loss, clf = _setup()
    objective = create_objective("balanced")
    upper = UpperLevel(loss.hparameters(), lr=0.05, weight_decay=0.0, clip=0.0)
    trace = search_alpha(clf, loss, objective, train, val, upper, steps=30, weight_decay=WD)
    assert trace.hyper_steps == 30 and trace.max_solve_grad_norm < 1e-6
    final = _solved_objective(loss, clf, train, val, objective, WD)
    assert final < trace.objective[0] - 0.05, (trace.objective[0], final)


# ill-scaled features: column j of well-scaled features times SCALES[j] (1e-3 .. 1e3), shifted by 5 · SCALES[j];
# wide enough (θ: 5 × 25 entries) that a conjugate-gradient solve capped at 50 products does not finish
SCALES = torch.logspace(-3, 3, 24, dtype=torch.float64)
SHIFT = 5.0 * SCALES


def _ill_scaled_setup():
    """A problem on well-scaled features ``z`` and the same on ``x = SCALES · z + SHIFT``; a fresh classifier
    (its logits on ``x``: hundreds, a saturated softmax)."""
    g = torch.Generator().manual_seed(2)
    counts = [40, 20, 10, 6, 4]
    centers = torch.randn(len(counts), len(SCALES), generator=g, dtype=torch.float64)

    def data(counts):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        return centers[labels] + 1.5 * torch.randn(len(labels), len(SCALES), generator=g, dtype=torch.float64), labels

    z_train, z_val = data(counts), data([8] * len(counts))
    torch.manual_seed(0)
    loss = ParametricCrossEntropy(len(counts), learn=("logit_bias", "logit_scale", "class_weight")).double()
    with torch.no_grad():
        for p in loss.hparameters():
            p.copy_(0.3 * torch.randn_like(p))
    ill = [(SCALES * z + SHIFT, y) for z, y in (z_train, z_val)]
    return z_train, ill[0], ill[1], loss, nn.Linear(len(SCALES), len(counts)).double()


def _newton_reference(loss, z, labels, wd):
    """θ* of the ill-scaled problem, solved by dense Newton on the well-scaled features ``z`` (independent of
    :func:`solve_classifier`): there the classifier is ``(V, c) = (W · s, b + W m)`` and the weight decay on the
    original ``(W, b) = (V / s, c − W m)``, so the returned ``(W, b)`` is the ill-scaled problem's minimiser."""
    k, d = loss.num_classes, z.shape[1]

    def objective(flat):
        v, c = flat[: k * d].view(k, d), flat[k * d:]
        w = v / SCALES
        b = c - w @ SHIFT
        return loss(z @ v.T + c, labels) + 0.5 * wd * ((w * w).sum() + (b * b).sum())

    flat = torch.zeros(k * (d + 1), dtype=torch.float64)
    for _ in range(100):
        g = torch.autograd.functional.jacobian(objective, flat)
        if float(g.norm()) < 1e-13:
            break
        flat = flat - torch.linalg.solve(torch.autograd.functional.hessian(objective, flat), g)
    w = flat[: k * d].view(k, d) / SCALES
    return w, flat[k * d:] - w @ SHIFT


def test_solver_reaches_its_tolerance_on_ill_scaled_features():
    z_train, train, _, loss, clf = _ill_scaled_setup()
    norm = solve_classifier(clf, loss, *train, weight_decay=WD, tol=1e-10)
    assert norm < 1e-10  # before: 2e2, from the fresh classifier's saturated softmax
    w, b = _newton_reference(loss, *z_train, WD)
    theta, ref = torch.cat([clf.weight.flatten(), clf.bias]).detach(), torch.cat([w.flatten(), b])
    assert float((theta - ref).norm() / ref.norm()) < 1e-8


def test_hypergradient_matches_finite_differences_on_ill_scaled_features():
    _, train, val, loss, clf = _ill_scaled_setup()
    objective = create_objective("balanced")
    assert solve_classifier(clf, loss, *train, weight_decay=WD, tol=1e-9) < 1e-9
    grads = stage2_hypergradient(clf, loss, objective, train, val, weight_decay=WD)
    # from the warm start Newton finishes: L-BFGS's iterations would only cost time
    fd = _central_differences(loss, clf, train, val, objective, WD, max_iter=10)
    flat, ref = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in fd])
    assert float((flat - ref).norm() / ref.norm()) < 1e-4, (flat, ref)  # before: 1.0 (CG capped at 125 products)
