"""AutoBalanceCriterion in a plain PyTorch loop: α moves, the caller's training is untouched, resume works."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from conftest import float_blobs
from torch import nn

from ab_plugin.integrations import AutoBalanceCriterion
from ab_plugin.integrations._imports import install_hint, try_import
from ab_plugin.losses import ParametricCrossEntropy

C = 4
COUNTS = [48, 24, 8, 4]


class Tiny(nn.Module):
    """A timm-interface CNN small enough for many steps in a test (with BatchNorm and dropout)."""

    def __init__(self, num_classes: int = C, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


X, Y = float_blobs(COUNTS, 0)
XV, YV = float_blobs([6, 6, 6, 6], 1)
VAL = [(XV[i : i + 12], YV[i : i + 12]) for i in range(0, len(YV), 12)]


def batches(n_steps: int, bs: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        idx = torch.randperm(len(Y), generator=g)[:bs]
        yield X[idx], Y[idx]


def new_setup(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = AutoBalanceCriterion(COUNTS, **{"interval": 2, "upper_lr": 0.05, **options}).attach(model, VAL,
                                                                                              optimizer=opt)
    return model, opt, crit


def train(model, opt, crit, data) -> None:
    for x, y in data:
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_alpha_moves_and_the_callers_optimizer_trains_the_model():
    model, opt, crit = new_setup()
    w0 = copy.deepcopy(model.state_dict())
    a0 = copy.deepcopy(crit.alpha)
    train(model, opt, crit, batches(8))
    assert crit.steps == 8 and crit.hyper_steps == 4
    assert crit.last_hypergrad_norm is not None and crit.last_hypergrad_norm > 0
    moved = max(abs(a - b) for a, b in zip(crit.alpha["logit_bias"], a0["logit_bias"], strict=True))
    assert moved > 1e-3
    assert not torch.equal(model.fc.weight, w0["fc.weight"])
    # α is never a leaf of the caller's graph
    assert all(p.grad is None and not p.requires_grad for p in crit.loss.parameters())


def test_hyper_step_leaves_grads_weights_norm_stats_and_rng_untouched():
    model, opt, crit = new_setup()
    train(model, opt, crit, batches(3))  # fills the buffer
    model.body[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.125)
    weights = copy.deepcopy(model.state_dict())  # includes BN running statistics
    rng = torch.get_rng_state()
    was_training = model.training
    norm = crit.hyper_step()
    assert norm is not None and norm > 0
    assert all(torch.equal(p.grad, torch.full_like(p, 0.125)) for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training == was_training and not model.body[1].training
    assert all(not h.requires_grad for h in crit.loss.hparameters())


def test_callers_gradients_equal_a_plain_loss_backward_at_a_hyper_step():
    model, opt, crit = new_setup()
    train(model, opt, crit, batches(3))
    x, y = next(iter(batches(1, seed=7)))
    twin = copy.deepcopy(model)  # the same weights (its copied hooks ignore it)
    state = torch.get_rng_state()
    before = crit.hyper_steps
    loss = crit(model(x), y)  # the 4th call: a hyper-step happens inside, α changes
    assert crit.hyper_steps == before + 1
    opt.zero_grad(set_to_none=True)
    loss.backward()
    plain = ParametricCrossEntropy(C, logit_scale=crit.loss.logit_scale.detach())
    plain.load_per_class(crit.alpha)  # the α the returned loss used (after the hyper-step)
    torch.set_rng_state(state)  # the same dropout mask: the hyper-step did not consume the caller's RNG
    ref = plain(twin(x), y)
    ref.backward()
    assert torch.allclose(loss.detach(), ref.detach(), atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_soft_targets_from_mixup_work_and_match_hard_labels():
    model, opt, crit = new_setup(interval=1)
    x, y = next(iter(batches(1)))
    soft = nn.functional.one_hot(y, C).float()
    with torch.no_grad():
        logits = model.eval()(x)
    model.train()
    assert torch.allclose(crit(logits, y), crit(logits, soft), atol=1e-6)
    lam = 0.7
    perm = torch.roll(torch.arange(len(y)), 1)
    xm, ym = lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]
    a0 = copy.deepcopy(crit.alpha)
    loss = crit(model(xm), ym)  # soft batch + hyper-step on a soft buffer
    loss.backward()
    loss2 = crit(model(x), y)  # mixed hard / soft buffer
    loss2.backward()
    assert crit.hyper_steps == 2 and torch.isfinite(loss) and torch.isfinite(loss2)
    assert crit.alpha["logit_bias"] != a0["logit_bias"]


def test_state_dict_round_trip_continues_with_the_same_alpha():
    model, opt, crit = new_setup(upper_optimizer="adam")
    data = list(batches(10))
    train(model, opt, crit, data[:5])  # odd step count: a partly filled interval and a saved buffer
    state = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
             "crit": copy.deepcopy(crit.state_dict())}
    assert "_extra_state" in state["crit"] and state["crit"]["_extra_state"]["bilevel"]["upper"]["optimizer"]["state"]
    model2, opt2, crit2 = new_setup(seed=123)  # different init: everything must come from the state
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    crit2.load_state_dict(state["crit"])
    assert crit2.alpha == crit.alpha and crit2.steps == 5 and crit2.hyper_steps == crit.hyper_steps
    rng = torch.get_rng_state()
    train(model, opt, crit, data[5:])
    torch.set_rng_state(rng)
    train(model2, opt2, crit2, data[5:])
    assert crit2.hyper_steps == crit.hyper_steps == 5
    for k in crit.alpha:
        assert torch.allclose(torch.tensor(crit.alpha[k]), torch.tensor(crit2.alpha[k]), atol=1e-6), k


def test_full_network_engine_defers_its_hyper_step_and_keeps_backward_valid():
    model, opt, crit = new_setup(engine="cg", engine_options={"iters": 3}, interval=2)
    a0 = copy.deepcopy(crit.alpha)
    train(model, opt, crit, batches(5))  # due after calls 2 and 4; each runs at the next forward
    assert crit.steps == 5 and crit.hyper_steps == 2
    assert crit.alpha["logit_bias"] != a0["logit_bias"]
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    crit.hyper_step()
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


def test_eval_calls_and_other_models_are_ignored():
    model, opt, crit = new_setup(interval=1)
    with torch.no_grad():
        crit(model(X[:8]), Y[:8])  # a validation-style call: not a training step
    assert crit.steps == 0
    ema = copy.deepcopy(model)  # inherits the hooks, which must ignore it
    loss = crit(model(X[:8]), Y[:8])
    ema(X[:4])
    assert crit.steps == 1 and crit.core.buffered == 1
    loss.backward()


def test_clear_errors():
    crit = AutoBalanceCriterion(COUNTS)
    with pytest.raises(RuntimeError, match="attach"):
        crit.hyper_step()
    crit.attach(Tiny(), VAL)
    with pytest.raises(RuntimeError, match="no training batches"):
        crit.hyper_step()
    with pytest.raises(ValueError, match="hard labels"):
        AutoBalanceCriterion(COUNTS, val_batches=1).attach(Tiny(), [(XV, torch.rand(len(XV), C))]).val_stream.next(
            torch.device("cpu"))
    with pytest.raises(ValueError, match="unrolled engine needs the training optimizer"):
        AutoBalanceCriterion(COUNTS, engine="unrolled").attach(Tiny(), VAL)


def test_optional_import_hint():
    with try_import("lightning", extra="lightning") as imp:
        import ab_plugin_no_such_module  # noqa: F401
    assert not imp.is_successful()
    with pytest.raises(ImportError, match=r"pip install 'ab-plugin\[lightning\]'"):
        imp.check()
    assert install_hint("timm") == "install timm: pip install timm"


def test_lightning_is_imported_lazily_and_missing_lightning_gives_the_hint():
    code = (
        "import sys\n"
        "sys.modules['lightning'] = None\n"  # makes `import lightning...` fail
        "import ab_plugin.integrations as I\n"
        "assert 'lightning.pytorch' not in sys.modules\n"
        "cls = I.AutoBalanceCallback\n"
        "try:\n"
        "    cls([3, 1])\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "install lightning: pip install 'ab-plugin[lightning]'" in out.stdout


def test_validation_batches_cycle_without_repeats_and_resume_in_place():
    tagged = [(torch.full((2, 3, 8, 8), float(i)), torch.tensor([i % C, 0])) for i in range(5)]

    def take(crit):
        return [int(x[0, 0, 0, 0]) for x, *_ in crit.val_stream.next(torch.device("cpu"))]

    crit = AutoBalanceCriterion(COUNTS, val_batches=2).attach(Tiny(), tagged)
    assert [take(crit), take(crit), take(crit)] == [[0, 1], [2, 3], [4, 0]]
    resumed = AutoBalanceCriterion(COUNTS, val_batches=2)
    resumed.load_state_dict(crit.state_dict())
    resumed.attach(Tiny(), lambda: iter(tagged))  # a callable source works too
    assert take(resumed) == take(crit) == [1, 2]
    short = AutoBalanceCriterion(COUNTS, val_batches=4).attach(Tiny(), tagged[:3])
    assert take(short) == [0, 1, 2]  # never the same batch twice in one hyper-step
    assert AutoBalanceCriterion(COUNTS, val_batches=None).attach(Tiny(), tagged).val_stream.next(
        torch.device("cpu")).__len__() == 5


def test_a_learned_policy_is_learned_beside_alpha_in_the_callers_loop():
    from ab_plugin.policies import ClassPolicy

    policy = ClassPolicy(C, ("rotate", "brightness", "cutout"), init_probability=0.3, init_magnitude=0.3)
    start = [p.detach().clone() for p in policy.hparameters()]
    model, opt, crit = new_setup(policy=policy, pixel_mean=[0.5] * 3, pixel_std=[0.25] * 3)
    for x, y in batches(12):
        xa = crit.augment(x, y)
        assert xa.shape == x.shape and not xa.requires_grad
        loss = crit(model(xa), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert crit.hyper_steps == 6
    assert all(p.grad is None for p in policy.hparameters())  # the caller's backward never reached A
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(policy.hparameters(), start, strict=True))
    assert set(crit.augmentation["per_class"]) == {"rotate", "brightness", "cutout"}
    other = AutoBalanceCriterion(COUNTS, policy=ClassPolicy(C, ("rotate", "brightness", "cutout")))
    other.load_state_dict(crit.state_dict())
    assert other.augmentation == crit.augmentation and other.alpha == crit.alpha
    with pytest.raises(ValueError, match="head engine"):
        AutoBalanceCriterion(COUNTS, policy=ClassPolicy(C), engine="cg")
    with pytest.raises(RuntimeError, match="no policy"):
        AutoBalanceCriterion(COUNTS).augment(X[:2], Y[:2])
