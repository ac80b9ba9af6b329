"""implicit_grad / unrolled_grad against closed forms and finite differences."""

import pytest
import torch

from ab_plugin.hypergrad import conjugate_gradient, create_solver, implicit_grad, neumann, unrolled_grad
from ab_plugin.losses import parametric_cross_entropy


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_solvers_match_dense_solve():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    h = a @ a.T / 6 + 0.5 * torch.eye(6)
    v = [torch.randn(6, generator=g)]
    exact = torch.linalg.solve(h, v[0])
    hvp = lambda u: [h @ u[0]]  # noqa: E731
    assert _rel(conjugate_gradient(hvp, v, iters=50)[0], exact) < 1e-8
    step = 1.0 / float(torch.linalg.eigvalsh(h).max())
    assert _rel(neumann(hvp, v, terms=2000, step=step)[0], exact) < 1e-6


def _ridge_problem():
    """θ*(α) = argmin ½‖Xθ − y‖²/n + ½ Σ exp(α_j) θ_j²  (closed form)."""
    g = torch.Generator().manual_seed(1)
    n, d = 40, 5
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, generator=g)
    xv = torch.randn(30, d, generator=g)
    yv = torch.randn(30, generator=g)
    return x, y, xv, yv


def _ridge_theta(alpha, x, y):
    n = x.shape[0]
    return torch.linalg.solve(x.T @ x / n + torch.diag(alpha.exp()), x.T @ y / n)


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_ridge_matches_exact_hypergradient(method):
    x, y, xv, yv = _ridge_problem()
    alpha = torch.linspace(-1, 0.5, 5).requires_grad_()
    exact = torch.autograd.grad(0.5 * ((xv @ _ridge_theta(alpha, x, y) - yv) ** 2).mean(), alpha)[0]
    theta = _ridge_theta(alpha.detach(), x, y).requires_grad_()
    train = lambda: 0.5 * ((x @ theta - y) ** 2).mean() + 0.5 * (alpha.exp() * theta**2).sum()  # noqa: E731
    val = lambda: 0.5 * ((xv @ theta - yv) ** 2).mean()  # noqa: E731
    h = x.T @ x / x.shape[0] + torch.diag(alpha.detach().exp())
    step = 1.0 / float(torch.linalg.eigvalsh(h).max())
    opts = {"iters": 100} if method == "cg" else {"terms": 3000, "step": step}
    (got,) = implicit_grad(train, val, [theta], [alpha], create_solver(method, **opts))
    assert _rel(got, exact) < 1e-3


def _logreg_fit(w_in, lb, ls, x, y, lam, iters=60):
    """Multinomial logistic regression with per-class logit bias/scale, solved by Newton."""
    c = lb.shape[0]
    theta = torch.zeros(x.shape[1], c)

    def loss(t):
        return parametric_cross_entropy(x @ t, y, logit_bias=lb, logit_scale=ls) + 0.5 * lam * (t**2).sum()

    for _ in range(iters):
        t = theta.detach().requires_grad_()
        g = torch.autograd.grad(loss(t), t)[0].reshape(-1)
        hess = torch.autograd.functional.hessian(loss, t.detach()).reshape(g.numel(), g.numel())
        theta = (t.detach().reshape(-1) - torch.linalg.solve(hess, g)).reshape_as(theta)
        if g.norm() < 1e-13:
            break
    return theta


def _exact_logreg_hypergrad(lb, ls, x, y, xv, yv, lam):
    """Differentiate the Newton fixed point through the exact IFT with dense Hessians."""
    theta = _logreg_fit(None, lb.detach(), ls.detach(), x, y, lam)
    n = theta.numel()

    def train(t_flat, lb_, ls_):
        t = t_flat.reshape_as(theta)
        return parametric_cross_entropy(x @ t, y, logit_bias=lb_, logit_scale=ls_) + 0.5 * lam * (t**2).sum()

    def val(t_flat):
        return torch.nn.functional.cross_entropy(xv @ t_flat.reshape_as(theta), yv)

    t = theta.reshape(-1)
    h = torch.autograd.functional.hessian(lambda tt: train(tt, lb, ls), t)
    gv = torch.autograd.functional.jacobian(val, t)
    mixed = torch.autograd.functional.jacobian(
        lambda a, b: torch.autograd.functional.jacobian(lambda tt: train(tt, a, b), t, create_graph=True), (lb, ls)
    )
    sol = torch.linalg.solve(h, gv)
    return theta, [-(m.reshape(n, -1).T @ sol) for m in mixed]


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_multinomial_logistic_bias_and_scale(method):
    g = torch.Generator().manual_seed(2)
    c, d = 4, 3
    x = torch.randn(80, d, generator=g)
    y = torch.randint(0, c, (80,), generator=g)
    xv = torch.randn(60, d, generator=g)
    yv = torch.randint(0, c, (60,), generator=g)
    lam = 0.1
    lb = torch.tensor([0.3, -0.2, 0.1, -0.4], requires_grad=True)
    ls = torch.tensor([0.9, 0.7, 0.5, 0.8], requires_grad=True)
    theta0, exact = _exact_logreg_hypergrad(lb, ls, x, y, xv, yv, lam)
    theta = theta0.clone().requires_grad_()
    train = lambda: parametric_cross_entropy(x @ theta, y, logit_bias=lb, logit_scale=ls) + 0.5 * lam * (theta**2).sum()  # noqa: E731
    val = lambda: torch.nn.functional.cross_entropy(xv @ theta, yv)  # noqa: E731
    opts = {"iters": 200, "tol": 1e-14} if method == "cg" else {"terms": 800, "step": 1.0}
    got = implicit_grad(train, val, [theta], [lb, ls], create_solver(method, **opts))
    for a, b in zip(got, exact, strict=True):
        assert _rel(a, b) < 1e-3


def test_pieces_equal_one_mean_loss_and_direct_term():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 3, generator=g)
    theta = torch.randn(3, generator=g).requires_grad_()
    alpha = torch.tensor([0.5], requires_grad=True)
    whole = lambda: ((x @ theta) ** 2).mean() * alpha.exp().sum() + (theta**2).sum()  # noqa: E731
    parts = [lambda i=i: ((x[i * 10 : (i + 1) * 10] @ theta) ** 2).mean() * alpha.exp().sum() + (theta**2).sum()
             for i in range(2)]
    val = lambda: (theta.sum() - 1) ** 2 + (alpha**2).sum()  # noqa: E731  (direct α term)
    a = implicit_grad(whole, val, [theta], [alpha], create_solver("cg", iters=50))
    b = implicit_grad(parts, val, [theta], [alpha], create_solver("cg", iters=50), cache_graphs=True)
    assert _rel(b[0], a[0]) < 1e-8
    # the value, by the dense IFT: d val/dα = 2α − (∂²L/∂α∂θ)ᵀ H⁻¹ ∂val/∂θ
    h = torch.autograd.functional.hessian(lambda t: ((x @ t) ** 2).mean() * alpha.exp().sum() + (t**2).sum(),
                                          theta.detach())
    mixed = 2 * (x.T @ (x @ theta.detach())) / x.shape[0] * alpha.detach().exp()  # ∂/∂α of ∇θ L, [3]
    gv = 2 * (theta.detach().sum() - 1) * torch.ones(3)
    exact = 2 * alpha.detach() - mixed @ torch.linalg.solve(h, gv)
    assert _rel(a[0], exact) < 1e-8
    # the direct term alone is 2α = 1.0: it is the difference to the same problem without α in val
    no_direct = lambda: (theta.sum() - 1) ** 2  # noqa: E731
    (c,) = implicit_grad(whole, no_direct, [theta], [alpha], create_solver("cg", iters=50))
    assert torch.allclose(a[0] - c, torch.tensor([1.0]), rtol=0, atol=1e-10)


def test_unrolled_matches_finite_difference_of_same_unroll():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    x = torch.randn(16, 3)
    y = torch.randint(0, 4, (16,))
    xv, yv = torch.randn(12, 3), torch.randint(0, 4, (12,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    lb = torch.tensor([0.1, -0.3, 0.2, 0.0], requires_grad=True)

    def train_loss(fm, k, bias=lb):
        return parametric_cross_entropy(fm(x), y, logit_bias=bias)

    def val_loss(fm):
        return torch.nn.functional.cross_entropy(fm(xv), yv)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    (got,) = unrolled_grad(model, opt, train_loss, val_loss, [lb], steps=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the unroll ran on a functional copy
    assert not opt.state  # and did not step the real optimizer (no momentum buffers)

    def unroll_value(bias):
        import copy

        m = copy.deepcopy(model)
        o = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
        for _ in range(3):
            o.zero_grad()
            train_loss(m, 0, bias).backward()
            o.step()
        with torch.no_grad():
            return float(val_loss(m))

    eps = 1e-6
    fd = torch.zeros(4)
    for j in range(4):
        e = torch.zeros(4)
        e[j] = eps
        fd[j] = (unroll_value(lb.detach() + e) - unroll_value(lb.detach() - e)) / (2 * eps)
    assert _rel(got, fd) < 1e-4
    assert model.weight.grad is None


def test_unrolled_refuses_adamw():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="cannot differentiate AdamW"):
        unrolled_grad(model, opt, lambda m, k: m(torch.ones(1, 2)).sum(), lambda m: m(torch.ones(1, 2)).sum(), [])
