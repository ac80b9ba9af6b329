"""unrolled_grad against an independent torch.func unroll of torch's own update rules, and the settings it refuses."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from ab_plugin.hypergrad import unrolled_grad
from ab_plugin.hypergrad._unrolled import check_unrollable

STEPS = 3


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    xs = [torch.randn(12, 5, dtype=torch.float64) for _ in range(STEPS)]
    ys = [torch.randint(0, 3, (12,)) for _ in range(STEPS)]
    xv, yv = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    bias = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    return model, xs, ys, xv, yv, bias


def _sgd_update(p, g, state, group):
    g = g + group["weight_decay"] * p
    if group["momentum"]:
        buf = state.get("momentum_buffer")
        buf = g if buf is None else group["momentum"] * buf + (1 - group["dampening"]) * g
        state["momentum_buffer"] = buf
        g = g + group["momentum"] * buf if group["nesterov"] else buf
    return p - group["lr"] * g


def _adam_update(p, g, state, group):
    """torch.optim.Adam's documented rule (L2 weight decay, eps after the bias correction)."""
    beta1, beta2 = group["betas"]
    g = g + group["weight_decay"] * p
    t = state.get("step", 0) + 1
    m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * g
    v = beta2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - beta2) * g * g
    state.update(step=t, exp_avg=m, exp_avg_sq=v)
    denom = (v.sqrt() / math.sqrt(1 - beta2**t)) + group["eps"]
    return p - group["lr"] / (1 - beta1**t) * m / denom


def _reference(model, optimizer, update, xs, ys, xv, yv, bias):
    """``d L_val / d bias`` through ``STEPS`` updates, written with torch.func only."""
    group = optimizer.param_groups[0]
    names = [n for n, _ in model.named_parameters()]
    start = {n: p.detach() for n, p in model.named_parameters()}
    saved = {n: {k: (v.detach() if torch.is_tensor(v) else v) for k, v in optimizer.state[p].items()}
             for n, p in model.named_parameters()}
    for st in saved.values():
        if "step" in st:
            st["step"] = int(st["step"])

    def train_loss(params, b, x, y):
        return F.cross_entropy(functional_call(model, params, (x,)) + b, y)

    def val_after_unroll(b):
        params, state = dict(start), {n: dict(saved[n]) for n in names}
        for x, y in zip(xs, ys, strict=True):
            gs = grad(train_loss)(params, b, x, y)
            params = {n: update(params[n], gs[n], state[n], group) for n in names}
        return F.cross_entropy(functional_call(model, params, (xv,)), yv)

    return grad(val_after_unroll)(bias.detach())


def _unrolled(model, optimizer, xs, ys, xv, yv, bias):
    def train_loss(fmodel, k):
        return F.cross_entropy(fmodel(xs[k]) + bias, ys[k])

    def val_loss(fmodel):
        return F.cross_entropy(fmodel(xv), yv)

    (got,) = unrolled_grad(model, optimizer, train_loss, val_loss, [bias], steps=STEPS)
    return got


def _warm_start(model, optimizer, xs, ys):
    """One real step, so the unroll starts from existing optimizer state (momentum buffers, Adam moments)."""
    optimizer.zero_grad()
    F.cross_entropy(model(xs[0]), ys[0]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "options",
    [
        dict(lr=0.3, momentum=0.9, weight_decay=1e-2),
        dict(lr=0.3, momentum=0.9, nesterov=True, weight_decay=5e-4),
        dict(lr=0.2, momentum=0.5, dampening=0.3),
        dict(lr=0.5),
    ],
    ids=["momentum-wd", "nesterov", "dampening", "plain"],
)
def test_sgd_unroll_matches_torch_func_reference(options):
    model, xs, ys, xv, yv, bias = _problem()
    optimizer = torch.optim.SGD(model.parameters(), **options)
    _warm_start(model, optimizer, xs, ys)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = _unrolled(model, optimizer, xs, ys, xv, yv, bias)
    ref = _reference(model, optimizer, _sgd_update, xs, ys, xv, yv, bias)
    assert ref.norm() > 1e-3  # the bias really moves the validation loss through the unroll
    assert _rel(got, ref) <= 1e-4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("options", [dict(lr=0.05, weight_decay=1e-2), dict(lr=0.05, amsgrad=True)],
                         ids=["l2", "amsgrad"])
def test_adam_unroll_matches_torch_func_reference(options):
    model, xs, ys, xv, yv, bias = _problem(1)
    optimizer = torch.optim.Adam(model.parameters(), **options)
    _warm_start(model, optimizer, xs, ys)
    got = _unrolled(model, optimizer, xs, ys, xv, yv, bias)
    ref = _reference(model, optimizer, _adam_update, xs, ys, xv, yv, bias)
    assert ref.norm() > 1e-3
    # higher adds eps before the second-moment bias correction: a difference of order eps / sqrt(v)
    assert _rel(got, ref) <= 1e-3


_ADAM_DECOUPLES = "decoupled_weight_decay" in inspect.signature(torch.optim.Adam).parameters


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda ps: torch.optim.AdamW(ps), "cannot differentiate AdamW:"),
        pytest.param(lambda ps: torch.optim.Adam(ps, weight_decay=0.1, decoupled_weight_decay=True),
                     "Adam with decoupled_weight_decay=True",
                     marks=pytest.mark.skipif(not _ADAM_DECOUPLES, reason="this torch's Adam lacks the option")),
        (lambda ps: torch.optim.Adam(ps, maximize=True), "Adam with maximize=True"),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True), "SGD with maximize=True"),
        (lambda ps: torch.optim.RMSprop(ps), "cannot differentiate RMSprop:"),
    ],
    ids=["adamw", "adam-decoupled", "adam-maximize", "sgd-maximize", "rmsprop"],
)
def test_settings_higher_ignores_are_refused_in_one_line(make, match):
    model, xs, ys, xv, yv, bias = _problem()
    optimizer = make(model.parameters())
    with pytest.raises(ValueError, match=match) as err:
        _unrolled(model, optimizer, xs, ys, xv, yv, bias)
    assert "\n" not in str(err.value)


def test_refused_in_any_param_group_and_implementation_switches_accepted():
    model, *_ = _problem()
    first, last = list(model.parameters())[:2], list(model.parameters())[2:]
    with pytest.raises(ValueError, match="maximize=True"):
        check_unrollable(torch.optim.SGD([{"params": first}, {"params": last, "maximize": True}], lr=0.1))
    check_unrollable(torch.optim.SGD(model.parameters(), lr=0.1, foreach=True))
    check_unrollable(torch.optim.Adam(model.parameters(), foreach=False, capturable=True))
