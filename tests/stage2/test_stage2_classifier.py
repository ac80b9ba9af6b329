"""Stage-2 classifier training on fixed features: the sampler, the MaxNorm projection, the loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ab_plugin.losses import ParametricCrossEntropy
from ab_plugin.stage2 import fit_classifier, maxnorm_, relative_radius, sample_indices


def test_maxnorm_scales_long_rows_to_the_radius_and_leaves_the_others():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 2.0], [1.2, 1.6]])  # norms 5, 0.5, 2, 2
    ref = torch.tensor([[1.2, 1.6], [0.3, 0.4], [0.0, 2.0], [1.2, 1.6]])  # by hand: radius 2
    out = maxnorm_(w.clone(), 2.0)
    assert torch.allclose(out, ref, rtol=0, atol=1e-7)
    assert torch.equal(out[1:], w[1:])  # at or inside the ball: bit-identical


def test_relative_radius_is_min_plus_thresh_times_range():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 2.0]])  # norms 5, 0.5, 2
    assert relative_radius(w, 0.1) == pytest.approx(0.5 + 0.1 * 4.5, rel=1e-6)


def test_class_balanced_sampler_draws_classes_uniformly():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([900, 80, 15, 5])])
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([sample_indices(labels, 4, "class_balanced", g) for _ in range(10)])
    counts = torch.bincount(labels[drawn], minlength=4).double()
    expected = len(drawn) / 4  # 2500 draws per class
    assert ((counts - expected).abs() < 4 * expected**0.5).all(), counts  # within 4 standard deviations
    inst = torch.bincount(labels[sample_indices(labels, 4, "instance", g)], minlength=4)
    assert inst.tolist() == [900, 80, 15, 5]  # a permutation: the data's own frequencies


def _problem():
    g = torch.Generator().manual_seed(1)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([60, 20, 6])])
    centers = torch.randn(3, 5, generator=g)
    return centers[labels] + 0.5 * torch.randn(len(labels), 5, generator=g), labels


def test_fit_classifier_is_deterministic_learns_and_respects_maxnorm():
    feats, labels = _problem()

    def run(**kw):
        torch.manual_seed(3)
        clf = nn.Linear(5, 3)
        return fit_classifier(clf, feats, labels, ParametricCrossEntropy(3), epochs=15, batch_size=16, lr=0.1,
                              weight_decay=5e-4, sampler="class_balanced", seed=7, **kw)

    a, b = run(), run()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    acc = (a(feats).argmax(1) == labels).float().mean()
    assert acc > 0.9
    c = run(maxnorm_radius=0.3)
    assert float(c.weight.detach().norm(dim=1).max()) <= 0.3 + 1e-6
    assert float(a.weight.detach().norm(dim=1).max()) > 0.3  # the bound was active
