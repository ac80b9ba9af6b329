"""τ-normalisation and the choice of τ on validation data."""

from __future__ import annotations

import torch

from ab_plugin.stage2 import choose_tau, tau_normalize


def test_tau_normalize_by_hand():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # norms 5 and 2
    assert torch.allclose(tau_normalize(w, 1.0), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    assert torch.allclose(tau_normalize(w, 0.5), torch.tensor([[3 / 5**0.5, 4 / 5**0.5], [0.0, 2 / 2**0.5]]))
    assert torch.equal(tau_normalize(w, 0.0), w)


def test_choose_tau_undoes_a_norm_imbalance():
    # class 0's row is 10x longer: raw logits call everything class 0; τ = 1 equalises the rows
    w = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[1.0, 0.2], [0.2, 1.0], [0.9, 0.1], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 0, 1])
    tau, err = choose_tau(w, feats, labels, grid=(0.0, 0.5, 1.0))
    assert (tau, err) == (0.5, 0.0)  # 0.5 and 1 both separate the classes: the smaller wins
    tau0, err0 = choose_tau(w, feats, labels, grid=(0.0,))
    assert (tau0, err0) == (0.0, 0.5)
