import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ab_plugin.losses import ParametricCrossEntropy, Sharing, create_loss, create_sharing, parametric_cross_entropy
from ab_plugin.losses._functional import cdt_scale, la_bias
from ab_plugin.losses._sharing import frequency_dictionary, frequency_groups

COUNTS = [500, 200, 80, 30, 10, 4]


def _batch(seed=0, n=32, c=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)


def test_ce_equals_torch_cross_entropy():
    z, y = _batch()
    assert torch.allclose(create_loss("ce", COUNTS)(z, y), F.cross_entropy(z, y), atol=1e-6)


def test_la_equals_logit_adjusted_loss():
    z, y = _batch()
    tau = 1.5
    prior = torch.tensor(COUNTS, dtype=torch.float64)
    expected = F.cross_entropy(z + tau * (prior / prior.sum()).log().float(), y)
    assert torch.allclose(create_loss("la", COUNTS, tau=tau)(z, y), expected, atol=1e-5)
    # autobalance with LA init starts exactly at the LA loss
    ab = create_loss("autobalance", COUNTS, init="la", tau=tau, learn=("logit_bias",))
    assert torch.allclose(ab(z, y), expected, atol=1e-5)


def test_cdt_scales_logits():
    z, y = _batch()
    delta = cdt_scale(COUNTS, 0.3)
    got = create_loss("cdt", COUNTS, gamma=0.3)(z, y)
    assert torch.allclose(got, F.cross_entropy(z * delta, y), atol=1e-3)


def test_weights_and_soft_targets_reduce_to_hard_labels():
    z, y = _batch()
    w = torch.rand(6) + 0.5
    lb, ls = torch.randn(6), torch.rand(6)
    hard = parametric_cross_entropy(z, y, w, lb, ls)
    soft = parametric_cross_entropy(z, F.one_hot(y, 6).float(), w, lb, ls)
    assert torch.allclose(hard, soft, atol=1e-6)
    # weighted mean, as F.cross_entropy(weight=...) reduces
    manual = F.cross_entropy(ls * z + lb, y, weight=w)
    assert torch.allclose(hard, manual, atol=1e-6)


def test_soft_targets_mix_per_class_terms():
    z, y = _batch(n=4)
    t = torch.full((4, 6), 0.1)
    t[:, 0] = 0.5
    w = torch.arange(1.0, 7.0)
    got = parametric_cross_entropy(z, t, class_weight=w)
    expected = (-(t * w * F.log_softmax(z, 1)).sum(1)).sum() / (t * w).sum()
    assert torch.allclose(got, expected)


def test_soft_targets_average_per_unit_of_mass_so_a_mixture_of_copies_counts_as_one_image():
    """K rows of one image, targets ``π_k · onehot(y)``: each image's expected loss over the K copies, weighted as
    one image (with class weights and with the LDAM margin, which follows the class mix, not the mass)."""
    k, b = 3, 5
    z, y = _batch(n=k * b)
    labels = y[:b]
    pi = torch.softmax(torch.randn(b, k, generator=torch.Generator().manual_seed(1)), 1)  # [B, K]
    targets = (pi.T[:, :, None] * F.one_hot(labels, 6)[None]).reshape(k * b, 6)
    per_row = F.cross_entropy(z, labels.repeat(k), reduction="none").reshape(k, b)  # row k * b + i: copy k of i
    expected = (pi.T * per_row).sum(0)  # [B] expected loss per image
    assert torch.allclose(parametric_cross_entropy(z, targets), expected.mean(), atol=1e-6)
    w = torch.rand(6) + 0.5
    weighted = (w[labels] * expected).sum() / w[labels].sum()
    assert torch.allclose(parametric_cross_entropy(z, targets, class_weight=w), weighted, atol=1e-6)
    m = torch.rand(6)
    margin = F.cross_entropy(z - F.one_hot(labels.repeat(k), 6) * m, labels.repeat(k), reduction="none")
    assert torch.allclose(parametric_cross_entropy(z, targets, margin=m), (pi.T * margin.reshape(k, b)).sum(0).mean(),
                          atol=1e-6)


def test_ldam_margin_only_on_true_class():
    z, y = _batch()
    loss = create_loss("ldam", COUNTS, ldam_scale=1.0)
    m = loss.margin
    expected = F.cross_entropy(z - F.one_hot(y, 6) * m, y)
    assert torch.allclose(loss(z, y), expected, atol=1e-6)
    assert m[-1] > m[0]  # rare classes get larger margins


def test_ldam_drw_switches_weights_late():
    z, y = _batch()
    loss = create_loss("ldam-drw", COUNTS, drw_from=0.5)
    loss.set_progress(0.1)
    early = loss(z, y)
    loss.set_progress(0.9)
    late = loss(z, y)
    assert not torch.allclose(early, late)
    # the deferred phase is LDAM-DRW's F.cross_entropy(s · (z − m ⊙ t), y, weight=w_drw)
    s_, m = loss.margin_scale, loss.margin
    expected = F.cross_entropy(s_ * (z - F.one_hot(y, 6) * m), y, weight=loss.deferred_weight)
    assert torch.allclose(late, expected, atol=1e-5)


def test_learned_tau_is_la_with_one_scalar():
    z, y = _batch()
    loss = create_loss("autobalance", COUNTS, init="la", tau=1.5, learn=("tau",))
    assert [h.shape for h in loss.hparameters()] == [torch.Size([1])] and loss.tau == 1.5
    assert torch.allclose(loss(z, y), create_loss("la", COUNTS, tau=1.5)(z, y), atol=1e-6)
    (g,) = torch.autograd.grad(loss(z, y), loss.hparameters())
    eps = 1e-3
    with torch.no_grad():
        up = create_loss("autobalance", COUNTS, init="la", tau=1.5 + eps, learn=("tau",))(z, y)
        down = create_loss("autobalance", COUNTS, init="la", tau=1.5 - eps, learn=("tau",))(z, y)
    assert abs(float(g) - float(up - down) / (2 * eps)) < 1e-3
    neutral = create_loss("autobalance", COUNTS, init="neutral", learn=("tau",))
    assert neutral.tau == 0.0 and max(abs(v) for v in neutral.per_class()["logit_bias"]) == 0.0
    with pytest.raises(ValueError, match="not both"):
        create_loss("autobalance", COUNTS, learn=("tau", "logit_bias"))


@pytest.mark.parametrize("spec", ["poly:6", "hat:6", "groups:6"])
def test_full_rank_bases_reproduce_per_class(spec):
    sharing = create_sharing(spec, COUNTS)
    target = torch.randn(6)
    assert torch.allclose(sharing.expand(sharing.fit(target)), target, atol=1e-4)


def test_identity_basis_equals_per_class_loss():
    z, y = _batch()
    lb = torch.randn(6)
    a = ParametricCrossEntropy(6, logit_bias=lb, learn=("logit_bias",))
    b = ParametricCrossEntropy(6, sharing=Sharing(torch.eye(6)), logit_bias=lb, learn=("logit_bias",))
    assert torch.allclose(a(z, y), b(z, y))
    ga = torch.autograd.grad(a(z, y), a.logit_bias_raw)[0]
    gb = torch.autograd.grad(b(z, y), b.logit_bias_raw)[0]
    assert torch.allclose(ga, gb)


def test_groups_share_values_and_dictionary_is_small():
    g = frequency_groups(COUNTS, 2)
    vals = g.expand(torch.tensor([1.0, -1.0]))
    assert vals[:3].eq(1.0).all() and vals[3:].eq(-1.0).all()
    d = frequency_dictionary(list(range(1, 1001)), 3)
    assert d.basis.shape == (1000, 3)
    # LA is exactly representable in the log-frequency dictionary
    counts = torch.randint(1, 500, (1000,))
    d = frequency_dictionary(counts, 2, "poly")
    la = la_bias(counts, 1.0)
    assert torch.allclose(d.expand(d.fit(la)), la, atol=1e-4)


def test_dictionary_on_equal_counts_warns_and_shares_one_value():
    with pytest.warns(UserWarning, match="same count.*per_class"):
        d = frequency_dictionary([50] * 4, 3)
    assert torch.linalg.matrix_rank(d.basis) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frequency_dictionary([50, 49, 50, 50], 3)


def test_per_class_export_roundtrip_and_positivity():
    loss = create_loss("autobalance", COUNTS, init="vs", learn=("class_weight", "logit_bias", "logit_scale"))
    with torch.no_grad():
        for p in loss.hparameters():
            p.add_(torch.randn_like(p))
    values = loss.per_class()
    assert all(w > 0 for w in values["class_weight"])
    assert math.isclose(sum(values["class_weight"]) / 6, 1.0, rel_tol=1e-5)
    assert all(0 < s < 1 for s in values["logit_scale"])
    other = ParametricCrossEntropy(6)
    other.load_per_class(values)
    z, y = _batch()
    assert torch.allclose(other(z, y), loss(z, y), atol=1e-5)


def test_only_learned_hparameters_get_gradients():
    loss = create_loss("autobalance", COUNTS, learn=("logit_bias",))
    assert [p.shape for p in loss.hparameters()] == [torch.Size([6])]
    assert not loss.logit_scale_raw.requires_grad


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("focal", COUNTS)
    with pytest.raises(ValueError, match="positive"):
        create_loss("la", [10, 0, 3])
    with pytest.raises(ValueError, match="cannot learn"):
        ParametricCrossEntropy(3, learn=("temperature",))
    with pytest.raises(ValueError, match="unknown sharing"):
        create_sharing("cluster:3", COUNTS)
    with pytest.raises(ValueError, match="targets must be"):
        parametric_cross_entropy(torch.randn(4, 3), torch.zeros(4, 5))


def test_per_class_sharing_skips_the_dense_basis():
    # 8142 classes (iNaturalist): a dense least-squares fit of the identity basis took minutes
    counts = torch.randint(2, 1000, (8142,))
    loss = create_loss("autobalance", counts, init="la", sharing=create_sharing("per_class", counts))
    assert loss.basis is None
    assert torch.allclose(loss.logit_bias, la_bias(counts, 1.0))
    raw = torch.randn(8142)
    expanded = create_sharing("per_class", counts).expand(raw)
    assert torch.equal(expanded, raw) and expanded.data_ptr() != raw.data_ptr()  # a view would alias α
    with pytest.raises(ValueError, match="3 values for a sharing basis of 8142 classes"):
        create_sharing("per_class", counts).fit(torch.ones(3))
    small = create_sharing("per_class", [5, 3, 2])
    assert torch.equal(small.basis, torch.eye(3)) and small.size == 3 and small.num_classes == 3
    # an explicit identity matrix is an ordinary basis, whatever its kind says
    assert not Sharing(torch.eye(3), "per_class").is_identity


def test_cdt_init_through_a_dictionary_fits_delta_in_value_space():
    # CDT's head class has Δ = 1, whose logit (~9.2) dominated a least-squares fit in logit space and
    # started the tail at Δ = 0.61 instead of 0.40
    counts = [1000, 600, 360, 216, 130, 78, 47, 28, 17, 10]
    exact = cdt_scale(counts, 0.2)
    for spec in ("poly:3", "hat:3"):
        loss = create_loss("autobalance", counts, init="cdt", sharing=create_sharing(spec, counts))
        assert (loss.logit_scale.detach() - exact).abs().max() < 0.07, spec


def test_loading_alpha_saved_with_another_sharing_names_the_fix():
    per_class_loss = create_loss("autobalance", COUNTS, init="la", sharing=create_sharing("per_class", COUNTS))
    poly = create_loss("autobalance", COUNTS, init="la", sharing=create_sharing("poly:3", COUNTS))
    with pytest.raises(ValueError, match=r"saved α has 6 raw values .* has 3: .*sharing='per_class'"):
        poly.load_state_dict(per_class_loss.state_dict())
    poly.load_state_dict(create_loss("autobalance", COUNTS, sharing=create_sharing("poly:3", COUNTS)).state_dict())


def _class_balanced(counts, beta=0.9999):
    """Cui et al.'s weights as LDAM-DRW's code computes them: (1 − β) / (1 − β^n), scaled to sum to C."""
    w = [(1 - beta) / (1 - beta**n) for n in counts]
    return torch.tensor([x * len(counts) / sum(w) for x in w])


def test_drw_weights_are_ldam_drws_class_balanced_weights():
    from ab_plugin.losses._functional import drw_weights

    assert torch.allclose(drw_weights(COUNTS), _class_balanced(COUNTS).float(), rtol=1e-6)


@pytest.mark.parametrize("name", ["ce", "la", "autobalance"])
def test_deferred_weights_join_any_loss_exactly_at_the_fraction(name):
    z, y = _batch()
    loss = create_loss(name, COUNTS, init="la", learn=("logit_bias", "class_weight"))
    w = torch.tensor([0.5, 1.5, 1.0, 2.0, 0.25, 0.75])
    if name == "autobalance":
        loss.load_per_class({"class_weight": w.tolist()})
    plain = loss(z, y)
    loss.defer_weights(_class_balanced(COUNTS), 0.6)
    loss.set_progress(0.59)
    assert torch.equal(loss(z, y), plain)
    loss.set_progress(0.6)
    adjusted = z + (0.0 if name == "ce" else la_bias(COUNTS, 1.0))
    own = w / w.mean() if name == "autobalance" else torch.ones(6)  # w has mean 1 by construction
    expected = F.cross_entropy(adjusted, y, weight=own * _class_balanced(COUNTS))
    assert torch.allclose(loss(z, y), expected, atol=1e-6)
    assert torch.allclose(torch.tensor(loss.per_class()["class_weight"]), own, atol=1e-6)  # α stays α's own


def test_balanced_softmax_is_la_with_tau_one():
    """Ren et al. 2020: softmax over n_j·exp(z_j), i.e. CE of z + log n, which log π shifts by a constant."""
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(64, 6, generator=g) * 4, torch.randint(0, 6, (64,), generator=g)
    n = torch.tensor(COUNTS, dtype=torch.float32)
    p = n * z.exp() / (n * z.exp()).sum(dim=1, keepdim=True)
    balanced_softmax = -p[torch.arange(64), y].log().mean()
    assert torch.allclose(create_loss("la", COUNTS, tau=1.0)(z, y), balanced_softmax, atol=1e-6)


def test_deferred_rebalancing_is_plain_ce_until_the_fraction():
    """Bag of Tricks' DRW of balanced softmax: F.cross_entropy(z) before the switch, z + log π after it."""
    z, y = _batch()
    loss = create_loss("la", COUNTS, tau=1.0)
    loss.defer_rebalancing(0.8)
    assert torch.allclose(loss(z, y), F.cross_entropy(z, y), atol=1e-6)  # before any set_progress
    loss.set_progress(0.79)
    assert torch.allclose(loss(z, y), F.cross_entropy(z, y), atol=1e-6)
    loss.set_progress(0.8)
    assert torch.allclose(loss(z, y), F.cross_entropy(z + la_bias(COUNTS, 1.0), y), atol=1e-6)
