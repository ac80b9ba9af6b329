"""ClassPolicy: per-class effect, gradients, finite differences, replay, gates, crop/flip, sharing basis."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call
from torchvision.transforms.v2 import functional as TF

from ab_plugin.policies import OPS, ClassPolicy, _ops, create_policy
from ab_plugin.policies._policy import DEFAULT_OPS

ALL_OPS = tuple(OPS)


def _images(b: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth-ish coloured images in [0.1, 0.9] (structure for warps, colour for saturation)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return 0.1 + 0.8 * x


def _set(policy: ClassPolicy, prob: list[float] | float, mag: list[float] | float) -> None:
    c = policy.num_classes
    p = prob if isinstance(prob, list) else [prob] * c
    m = mag if isinstance(mag, list) else [mag] * c
    d = {}
    for op in policy.ops:
        d[op] = {"probability": list(p)}
        if OPS[op].has_magnitude:
            d[op]["magnitude"] = list(m)
    policy.load_per_class(d)


@pytest.mark.parametrize("op", [op for op in ALL_OPS if OPS[op].has_magnitude])
def test_per_class_magnitude_changes_effect(op: str) -> None:
    policy = ClassPolicy(2, (op,), crop_flip=False, learnable=False)
    _set(policy, 1.0, [0.0, 1.0])  # class 0: magnitude 0, class 1: magnitude 1, always applied
    img = _images(1, size=24)
    x = img.expand(2, -1, -1, -1).contiguous()
    y = torch.tensor([0, 1])
    params = policy.sample_params(x, y, torch.Generator().manual_seed(3))
    out = policy(x, y, params)
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)
    assert (out[1] - x[1]).abs().mean() > 0.01, f"{op} at magnitude 1 barely changed the image"


def test_flip_probability_only() -> None:
    policy = ClassPolicy(2, ("flip",), crop_flip=False, learnable=False)
    assert policy.magnitude_logit.shape == (2, 0)
    _set(policy, [0.0, 1.0], 0.0)
    x = _images(1).expand(2, -1, -1, -1).contiguous()
    out = policy(x, torch.tensor([0, 1]))
    assert torch.equal(out[0], x[0])
    torch.testing.assert_close(out[1], x[1].flip(-1), atol=1e-5, rtol=0)
    assert set(policy.per_class()["flip"]) == {"probability"}


def test_gradients_reach_every_raw_parameter() -> None:
    torch.manual_seed(0)
    policy = ClassPolicy(3, ALL_OPS, init_probability=0.5, init_magnitude=0.4)
    x = _images(96, size=16, seed=1).requires_grad_(True)
    y = torch.arange(96) % 3
    out = policy(x, y)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * w).sum().backward()
    params = policy.hparameters()
    assert [p.shape for p in params] == [(3, 9), (3, 8)]
    for p in params:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()
        assert (p.grad != 0).all(), f"zero gradient entries in {tuple(p.shape)}: {p.grad}"
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_gradients_reach_shared_basis_parameters() -> None:
    basis = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    policy = ClassPolicy(4, ("rotate", "contrast", "cutout"), basis=basis)
    assert policy.probability_logit.shape == (2, 3) and policy.magnitude_logit.shape == (2, 3)
    x = _images(64, seed=4)
    y = torch.arange(64) % 4
    out = policy(x, y, policy.sample_params(x, y, torch.Generator().manual_seed(0)))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    for p in policy.hparameters():
        assert (p.grad != 0).all()


MAGNITUDE_OPS = tuple(op for op in ALL_OPS if OPS[op].has_magnitude)


@pytest.mark.parametrize("ops", [(op,) for op in MAGNITUDE_OPS] + [MAGNITUDE_OPS], ids=[*MAGNITUDE_OPS, "all"])
def test_finite_differences_match_autograd_on_magnitudes(ops: tuple[str, ...]) -> None:
    policy = ClassPolicy(2, ops, crop_flip=True, init_magnitude=0.5).double()
    _set(policy, 1.0, [0.35, 0.6])
    x = _images(4, size=8, seed=5).double()
    y = torch.tensor([0, 1, 1, 0])
    params = policy.sample_params(x, y, torch.Generator().manual_seed(7))
    prob = policy.probability_logit.detach()

    def f(mag_logit: torch.Tensor) -> torch.Tensor:
        state = {"magnitude_logit": mag_logit, "probability_logit": prob}
        return functional_call(policy, state, (x, y), {"params": params})

    ml = policy.magnitude_logit.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (ml,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_relaxed_gate_gradient_is_the_concrete_relaxation() -> None:
    logits = torch.tensor([-2.0, -0.3, 0.4, 1.5], dtype=torch.float64, requires_grad=True)
    noise = torch.tensor([0.9, 0.4, 0.6, 0.2], dtype=torch.float64)
    gate = _ops.relaxed_bernoulli_gate(logits, noise, 0.5)
    assert torch.equal(gate.detach(), (logits + torch.logit(noise) > 0).double())
    gate.sum().backward()
    soft = lambda z: torch.sigmoid((z + torch.logit(noise)) / 0.5)  # noqa: E731
    eps = 1e-6
    fd = (soft(logits.detach() + eps) - soft(logits.detach() - eps)) / (2 * eps)
    torch.testing.assert_close(logits.grad, fd, rtol=1e-6, atol=1e-9)


def _gate_effect(op: str, x: torch.Tensor, y: torch.Tensor, params: dict, w: torch.Tensor) -> torch.Tensor:
    """``d <w, out_i> / d gate_i`` at the drawn gate, by finite differences outside the policy: ``[B]``."""
    if op == "rotate":  # the gate scales the angle of the warp
        angle = params["sign"][:, 0].double() * 0.7 * OPS["rotate"].max_value
        b, h, wd = x.shape[0], x.shape[2], x.shape[3]

        def out(gate: torch.Tensor) -> torch.Tensor:
            matrix = _ops.affine_matrix(x.new_zeros(b, 2), gate * angle, x.new_ones(b), x.new_zeros(b, 2),
                                        x.new_ones(b), h, wd)
            return _ops.warp(x, matrix)

        fired = (params["gate_noise"][:, 0] > 0.4).double()  # p = 0.6 fires where u > 0.4
        eps = 1e-6
        return ((out(fired + eps) - out(fired - eps)) / (2 * eps) * w).flatten(1).sum(1)
    # colour and cutout blend the op's output with the input linearly in the gate: the effect is A(x) - x
    outs = []
    for prob in (1.0, 0.0):
        forced = ClassPolicy(2, (op,), crop_flip=False, learnable=False).double()
        _set(forced, prob, 0.7)
        outs.append(forced(x, y, params))
    return ((outs[0] - outs[1]) * w).flatten(1).sum(1)


@pytest.mark.parametrize("op", ["brightness", "cutout", "rotate"])
def test_policy_gate_gradient_is_straight_through(op: str) -> None:
    """d <w, out> / d probability_logit[c] = sum over images of class c of (the op's effect on the image as its
    gate moves) x (slope of the relaxed gate ``sigmoid((logit p + logit u) / T)``)."""
    policy = ClassPolicy(2, (op,), crop_flip=False, init_probability=0.6, init_magnitude=0.7).double()
    x, y = _images(6, size=8, seed=3).double(), torch.tensor([0, 1, 0, 1, 1, 0])
    params = policy.sample_params(x, y, torch.Generator().manual_seed(2))
    # p = 0.6 fires where u > 0.4; the identity warp has kinks (samples on the pixel grid), so the warp's
    # gradient is checked where it fires, the blends' on both sides
    low = 0.45 if op == "rotate" else 0.1
    params["gate_noise"] = torch.linspace(low, 0.9, 6, dtype=torch.float64)[:, None]
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (policy(x, y, params) * w).sum().backward()

    t = policy.temperature.double()
    soft = torch.sigmoid((policy.probability_logit.detach()[y, 0] + torch.logit(params["gate_noise"][:, 0])) / t)
    slope = soft * (1 - soft) / t  # [B]
    expected = torch.zeros(2, dtype=torch.float64).index_add_(0, y, _gate_effect(op, x, y, params, w) * slope)
    torch.testing.assert_close(policy.probability_logit.grad[:, 0], expected, rtol=1e-5, atol=1e-8)


def test_batched_per_class_equals_per_sample() -> None:
    policy = ClassPolicy(4, ALL_OPS)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in policy.hparameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x, y = _images(16, seed=6), torch.arange(16) % 4
    params = policy.sample_params(x, y, torch.Generator().manual_seed(5))
    batched = policy(x, y, params)
    for i in range(16):
        one = policy(x[i : i + 1], y[i : i + 1], {k: v[i : i + 1] for k, v in params.items()})
        torch.testing.assert_close(batched[i : i + 1], one, atol=1e-6, rtol=0)


def test_replay_is_bitwise_and_seeded() -> None:
    policy = ClassPolicy(5, ALL_OPS)
    x, y = _images(20, seed=8), torch.arange(20) % 5
    p1 = policy.sample_params(x, y, torch.Generator().manual_seed(11))
    p2 = policy.sample_params(x, y, torch.Generator().manual_seed(11))
    assert p1.keys() == p2.keys() and all(torch.equal(p1[k], p2[k]) for k in p1)
    a, b = policy(x, y, p1), policy(x, y, p2)
    assert torch.equal(a, b)
    p3 = policy.sample_params(x, y, torch.Generator().manual_seed(12))
    assert not torch.equal(a, policy(x, y, p3))


def test_probability_zero_never_and_one_always() -> None:
    policy = ClassPolicy(2, ALL_OPS, crop_flip=False, learnable=False)
    _set(policy, 0.0, 1.0)
    x, y = _images(64, seed=9), torch.arange(64) % 2
    for seed in range(5):
        out = policy(x, y, policy.sample_params(x, y, torch.Generator().manual_seed(seed)))
        assert torch.equal(out, x)

    only = ClassPolicy(2, ("brightness",), crop_flip=False, learnable=False)
    _set(only, 1.0, 0.8)
    out = only(x, y)
    assert ((out - x).abs().amax(dim=(1, 2, 3)) > 0.05).all()


def test_gate_fires_at_its_probability() -> None:
    policy = ClassPolicy(2, ("brightness",), crop_flip=False, learnable=False)
    _set(policy, [0.2, 0.7], 0.9)
    n = 4000
    x, y = _images(1).expand(n, -1, -1, -1), torch.arange(n) % 2
    out = policy(x, y, policy.sample_params(x, y, torch.Generator().manual_seed(0)))
    changed = (out != x).flatten(1).any(1).float()
    for c, p in ((0, 0.2), (1, 0.7)):
        rate = changed[y == c].mean().item()
        assert abs(rate - p) < 4 * (p * (1 - p) / (n / 2)) ** 0.5, (c, rate)


def test_fixed_policy_equals_standard_cifar_pipeline() -> None:
    fixed = create_policy("fixed", 10)
    assert isinstance(fixed, ClassPolicy)
    assert list(fixed.parameters()) == [] and fixed.hparameters() == []
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(16) % 10
    params = fixed.sample_params(x8, y, g)
    out = fixed(x8.float() / 255, y, params)
    for i in range(16):
        top, left = params["crop_offset"][i].tolist()
        ref = TF.crop(TF.pad(x8[i], [4]), top, left, 32, 32)  # RandomCrop(32, padding=4)
        if params["crop_flip"][i]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(out[i], ref.float() / 255)
    # the draws cover the whole crop range and both flips
    assert params["crop_offset"].min() >= 0 and params["crop_offset"].max() <= 8


def test_create_policy_kinds() -> None:
    learned = create_policy("learned", 4, init_magnitude=0.2)
    assert isinstance(learned, ClassPolicy) and learned.ops == DEFAULT_OPS
    assert len(learned.hparameters()) == 2
    assert create_policy("none", 4) is None
    frozen = create_policy("learned", 4, learnable=False)
    assert isinstance(frozen, ClassPolicy) and frozen.hparameters() == []
    with pytest.raises(ValueError, match="'learned', 'fixed', 'generic', 'none'"):
        create_policy("randaugment", 4)
    with pytest.raises(ValueError, match="unknown augmentation op"):
        ClassPolicy(3, ("rotate", "posterize"))


def test_generic_policy_is_one_policy_for_all_classes() -> None:
    generic = create_policy("generic", 5, init_probability=0.1, init_magnitude=0.2)
    assert [p.shape for p in generic.hparameters()] == [(1, len(DEFAULT_OPS)), (1, len(DEFAULT_OPS))]
    for entry in generic.per_class().values():
        for vals in entry.values():
            assert max(vals) == min(vals)
    torch.testing.assert_close(generic.probability, torch.full((5, len(DEFAULT_OPS)), 0.1))
    x, y = _images(100, seed=1), torch.arange(100) % 5  # enough images that every op fires somewhere
    generic(x, y).square().sum().backward()
    assert all((p.grad != 0).all() for p in generic.hparameters())
    with pytest.raises(ValueError, match="no basis"):
        create_policy("generic", 5, basis=torch.eye(5))


def test_gate_entropy_is_mean_bernoulli_entropy() -> None:
    policy = ClassPolicy(2, ("rotate", "flip"), learnable=True)
    _set(policy, [0.5, 0.1], 0.3)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    entropy = policy.gate_entropy()
    assert entropy.item() == pytest.approx((h(0.5) + h(0.1)) / 2, rel=1e-5)
    entropy.backward()
    grad = policy.probability_logit.grad
    assert (grad[0] == 0).all() or grad[0].abs().max() < 1e-6  # the maximum at p = 0.5
    assert (grad[1] > 0).all()  # below 0.5, more probability is more entropy


def test_identity_basis_equals_per_class() -> None:
    a = ClassPolicy(4, ALL_OPS)
    b = ClassPolicy(4, ALL_OPS, basis=torch.eye(4))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for pa, pb in zip(a.hparameters(), b.hparameters(), strict=True):
            pa.copy_(torch.randn(pa.shape, generator=g))
            pb.copy_(pa)
    assert a.per_class() == b.per_class()
    x, y = _images(12, seed=2), torch.arange(12) % 4
    params = a.sample_params(x, y, torch.Generator().manual_seed(1))
    oa, ob = a(x, y, params), b(x, y, params)
    assert torch.equal(oa, ob)
    oa.square().sum().backward()
    ob.square().sum().backward()
    for pa, pb in zip(a.hparameters(), b.hparameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_group_basis_shares_parameters() -> None:
    basis = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    policy = ClassPolicy(4, ("rotate", "brightness", "flip"), basis=basis)
    with torch.no_grad():
        policy.probability_logit.copy_(torch.tensor([[0.3, -1.0, 2.0], [-0.5, 1.5, 0.1]]))
        policy.magnitude_logit.copy_(torch.tensor([[0.2, -0.4], [1.1, 0.9]]))
    pc = policy.per_class()
    for op, entry in pc.items():
        for key, vals in entry.items():
            assert vals[0] == vals[1] and vals[2] == vals[3], (op, key)
            assert vals[0] != vals[2], (op, key)
    # same image and noise for classes 0 and 1 (same group) -> identical outputs; class 2 differs
    x1 = _images(1, seed=3)
    p1 = policy.sample_params(x1, torch.tensor([0]), torch.Generator().manual_seed(0))
    x = x1.expand(3, -1, -1, -1).contiguous()
    params = {k: v.expand(3, *v.shape[1:]).contiguous() for k, v in p1.items()}
    params["gate_noise"] = torch.full_like(params["gate_noise"], 0.5)  # fire where p > 0.5
    out = policy(x, torch.tensor([0, 1, 2]), params)
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], out[2])


def test_load_per_class_is_exact_inverse() -> None:
    src = ClassPolicy(6, ALL_OPS)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in src.hparameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3)
    dst = ClassPolicy(6, ALL_OPS, learnable=False)
    dst.load_per_class(src.per_class())
    assert dst.per_class() == src.per_class()
    with pytest.raises(ValueError, match="ops"):
        dst.load_per_class({"rotate": {"probability": [0.5] * 6, "magnitude": [0.5] * 6}})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_backward_and_replay() -> None:
    policy = ClassPolicy(3, ALL_OPS).cuda()
    x = _images(48, seed=1).cuda()
    y = (torch.arange(48) % 3).cuda()
    params = policy.sample_params(x, y)
    out = policy(x, y, params)
    assert out.device.type == "cuda" and out.shape == x.shape
    assert torch.allclose(out, policy(x, y, params))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.hparameters())
    cpu = ClassPolicy(3, ALL_OPS)
    cpu.load_state_dict({k: v.cpu() for k, v in policy.state_dict().items()})
    ref = cpu(x.cpu(), y.cpu(), {k: v.cpu() for k, v in params.items()})
    torch.testing.assert_close(out.detach().cpu(), ref, atol=1e-4, rtol=0)
