"""The bilevel core shared by the Trainer and the criterion: replay, the backbone term, state."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyNet
from torch import nn

from ab_plugin import AutoBalance, Config
from ab_plugin.bilevel import Bilevel, Pipeline
from ab_plugin.hypergrad import create_engine
from ab_plugin.integrations import AutoBalanceCriterion
from ab_plugin.losses import create_loss
from ab_plugin.objectives import create_objective
from ab_plugin.policies import ClassPolicy

C = 3
COUNTS = [12, 6, 3]


class Smooth(nn.Module):
    """A timm-interface net with smooth activations (finite differences see no kinks), float64."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, C)

    def forward_features(self, x):
        return torch.tanh(self.conv(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.arange(n) % C


def test_the_criterions_backbone_term_matches_finite_differences():
    torch.manual_seed(0)
    model = Smooth().double()
    policy = ClassPolicy(C, ("brightness", "saturation"), init_probability=0.9, init_magnitude=0.3).double()
    x, y = _images(9, 1)
    xv, yv = _images(6, 2)
    draws = policy.sample_params(x, y)
    draws["gate_noise"].fill_(0.5)  # every op on (probability 0.9): the magnitudes reach the loss
    policy.sample_params = lambda *a, **k: draws  # the draws the reference replays too
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    crit = AutoBalanceCriterion(COUNTS, policy=policy, interval=3, start_step=10, hyper_batches=1,
                                val_batches=1, augment_hypergrad="backbone").attach(model, [(xv, yv)], optimizer=opt)
    crit(model(crit.augment(x, y)), y)  # buffers the batch (no hyper-step: start_step)
    both = crit.hypergradient()
    crit.core.augment_hypergrad = "head"
    head = crit.hypergradient()
    n = len(crit.core.hparams.loss)
    term = [b - h for b, h in zip(both[n:], head[n:], strict=True)]

    # reference: -lr · interval · d/dA (∇_θ ℓ_train(A) · ∇_θ L_val), θ = the backbone, by central differences in A
    backbone = list(model.conv.parameters())
    model.eval()
    u = torch.autograd.grad(crit.core.objective(model(xv), yv, None), backbone)
    model.train()

    def f() -> float:
        g = torch.autograd.grad(crit.loss(model(policy(x, y, draws)), y), backbone)
        return float(sum((a * b).sum() for a, b in zip(g, u, strict=True)))

    mag = policy.magnitude_logit
    fd = torch.zeros_like(mag)
    eps = 1e-5
    flat = mag.data.view(-1)  # moved in place, outside autograd
    for i in range(mag.numel()):
        flat[i] += eps
        up = f()
        flat[i] -= 2 * eps
        down = f()
        flat[i] += eps
        fd.view(-1)[i] = -0.2 * 3 * (up - down) / (2 * eps)
    got = term[[p is mag for p in crit.core.hparams.policy].index(True)]
    assert fd.abs().max() > 1e-4  # the term is not trivially zero
    torch.testing.assert_close(got, fd, rtol=1e-4, atol=1e-7)


def test_a_policy_without_the_optimizer_is_refused_for_the_backbone_term():
    crit = AutoBalanceCriterion(COUNTS, policy=ClassPolicy(C, ("brightness",)))
    with pytest.raises(ValueError, match="optimizer=opt"):
        crit.attach(Smooth(), [_images(6, 2)])
    AutoBalanceCriterion(COUNTS, policy=ClassPolicy(C, ("brightness",)), augment_hypergrad="head").attach(
        Smooth(), [_images(6, 2)])


def test_the_head_step_replays_the_newest_batch_with_the_draws_it_was_trained_with():
    torch.manual_seed(0)
    model = Smooth()
    policy = ClassPolicy(C, ("brightness", "translate"), init_probability=0.5, init_magnitude=0.3)
    loss = create_loss("autobalance", torch.tensor(COUNTS), init="la")
    core = Bilevel(loss, create_engine("head"), create_objective("balanced"), policy=policy, hyper_batches=2,
                   weight_decay=5e-4)
    replayed = []

    def train_input(x, y, draws):
        replayed.append((x, draws))
        return policy(x, y, draws)

    xv, yv = _images(6, 2)
    xv = xv.float()
    pipeline = Pipeline(model, lambda x: model.forward_head(model.forward_features(x), pre_logits=True), model.fc,
                        train_input, lambda x: x, lambda k: [(xv, yv)][:k])
    pushed = []
    for seed in range(3):
        x, y = _images(9, 10 + seed)
        x = x.float()
        draws = policy.sample_params(x, y)
        with torch.no_grad():
            feats = model.forward_head(model.forward_features(policy(x, y, draws)), pre_logits=True)
        core.push(y, features=feats, inputs=x, draws=draws)
        pushed.append((x, draws))
    before = [p.detach().clone() for p in core.hparams.all]
    assert core.step(pipeline, step=3) is not None
    assert len(replayed) == 1
    x, draws = replayed[0]
    assert torch.equal(x, pushed[-1][0]) and all(torch.equal(draws[k], pushed[-1][1][k]) for k in draws)
    assert any(not torch.equal(a, b) for a, b in zip(before, core.hparams.all, strict=True))


def test_the_core_state_round_trips_the_buffer_and_the_upper_level():
    torch.manual_seed(0)
    policy = ClassPolicy(C, ("brightness",))
    loss = create_loss("autobalance", torch.tensor(COUNTS), init="la")
    core = Bilevel(loss, create_engine("head"), create_objective("balanced"), policy=policy, hyper_batches=2,
                   weight_decay=0.0)
    x, y = _images(4, 3)
    core.push(y, features=torch.randn(4, 6), inputs=x.float(), draws=policy.sample_params(x, y))
    state = core.state_dict()
    other = Bilevel(create_loss("autobalance", torch.tensor(COUNTS), init="la"), create_engine("head"),
                    create_objective("balanced"), policy=ClassPolicy(C, ("brightness",)), hyper_batches=2,
                    weight_decay=0.0)
    other.load_state_dict(state)
    assert other.buffered == 1 and torch.equal(other.targets[0], y)
    assert core.state_dict(buffer=False)["buffer"] == []
    with pytest.raises(ValueError, match="format"):
        other.load_state_dict({"upper": {}})


def test_trainer_callbacks_must_subclass_the_base(tiny_bundle):
    class Duck:
        def on_epoch_end(self, trainer, epoch, record):
            pass

    with pytest.raises(TypeError, match="TrainerCallback"):
        AutoBalance(Config(dataset="blobs", epochs=1, device="cpu")).build(tiny_bundle, model=TinyNet(4),
                                                                           callbacks=[Duck()])


def test_the_bank_mixtures_hypergradient_matches_finite_differences_of_the_expected_loss_problem():
    """The head step of ``--augment bank``: the newest batch at every strength, weighted by the mixture in the
    training loss, against central differences of ``L_val(θ*(π))`` with ``θ*`` the exactly solved head."""
    from ab_plugin.policies import BankPolicy

    torch.manual_seed(0)
    model, wd = Smooth(), 0.05
    policy = BankPolicy(C, strengths=(0, 2, 4), ops=("brightness", "translate", "rotate"))
    policy.load_mixture(torch.softmax(torch.randn(C, 3, generator=torch.Generator().manual_seed(1)), 1))
    loss = create_loss("autobalance", torch.tensor(COUNTS), init="la", learn=("logit_bias",))
    objective = create_objective("balanced")
    core = Bilevel(loss, create_engine("head", iters=300, tol=1e-12), objective, policy=policy, hyper_batches=2,
                   weight_decay=wd, augment_hypergrad="head")

    def feats(x):
        with torch.no_grad():
            return model.forward_head(model.forward_features(x), pre_logits=True)

    (x0, y0), (x1, y1), (xv, yv) = (tuple(t.float() if t.is_floating_point() else t for t in _images(n, s))
                                    for n, s in ((12, 10), (9, 11), (9, 12)))
    d0, d1 = policy.sample_params(x0, y0), policy.sample_params(x1, y1)
    core.push(y0, features=feats(policy(x0, y0, d0)))
    core.push(y1, features=feats(policy(x1, y1, d1)), inputs=x1, draws=d1)
    old, bank, val = feats(policy(x0, y0, d0)).double(), [feats(policy(x1, y1, d)).double()
                                                          for d in policy.bank_draws(d1)], feats(xv).double()
    bias = torch.tensor(loss.per_class()["logit_bias"], dtype=torch.float64)

    def inner(theta, pi):
        w, b = theta[:-C].reshape(C, -1), theta[-C:]
        ce = lambda f, y: nn.functional.cross_entropy(f @ w.T + b + bias, y, reduction="none")  # noqa: E731
        expected = sum(pi[y1, k] * ce(f, y1) for k, f in enumerate(bank))
        return (ce(old, y0).sum() + expected.sum()) / (len(y0) + len(y1)) + 0.5 * wd * (theta * theta).sum()

    def solve(pi):
        theta = torch.zeros(model.fc.weight.numel() + C, dtype=torch.float64)
        for _ in range(15):
            theta = theta - torch.linalg.solve(torch.func.hessian(inner)(theta, pi), torch.func.grad(inner)(theta, pi))
        return theta

    def val_loss(logit):
        theta = solve(torch.softmax(logit.double(), 1))
        return float(objective(val @ theta[:-C].reshape(C, -1).T + theta[-C:], yv))

    theta = solve(policy.mixture.detach().double())
    with torch.no_grad():
        model.fc.weight.copy_(theta[:-C].reshape(C, -1))
        model.fc.bias.copy_(theta[-C:])
    pipeline = Pipeline(model, lambda x: model.forward_head(model.forward_features(x), pre_logits=True), model.fc,
                        lambda x, y, draws: policy(x, y, draws), lambda x: x, lambda k: [(xv, yv)][:k])
    got = core.hypergradient(pipeline, step=2)[1]
    raw, eps, g = policy.mixture_logit.detach(), 1e-3, torch.Generator().manual_seed(2)
    for _ in range(3):
        d = torch.randn(raw.shape, generator=g)
        fd = (val_loss(raw + eps * d) - val_loss(raw - eps * d)) / (2 * eps)
        assert abs(float((got * d).sum()) - fd) <= 1e-9 + 2e-3 * abs(fd), (float((got * d).sum()), fd)
