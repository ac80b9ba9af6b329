"""A run's outputs belong to the library: the Python API writes the same policy file as the CLI."""

from __future__ import annotations

import torch
from conftest import TinyNet

from ab_plugin import AutoBalance, Config
from ab_plugin.policies import load_policy
from ab_plugin.runs import finish_run
from ab_plugin.search import fixed_loss_from_alpha

SHORT = dict(dataset="blobs", epochs=2, batch_size=32, lr=0.05, warmup_epochs=1, upper_start=0.5, interval=2,
             hyper_batches=2, device="cpu", channels_last=False, augment="none", seed=0)


def test_a_search_result_saves_a_policy_that_retrains(tiny_bundle, tmp_path):
    res = AutoBalance(Config(**SHORT)).fit(tiny_bundle, model=TinyNet(4))
    res.save_policy(tmp_path / "p.json")
    pf = load_policy(tmp_path / "p.json")
    assert pf.classes == res.classes and pf.class_counts == res.class_counts
    assert pf.loss == {k: res.alpha[k] for k in ("class_weight", "logit_bias", "logit_scale")}
    prov = pf.provenance
    assert prov["dataset"] == "blobs" and prov["epochs"] == 2 and prov["sharing"] == Config().sharing
    assert prov["test_metrics"]["balanced_error"] == res.test_metrics["balanced_error"]
    loss = fixed_loss_from_alpha(pf.loss)
    assert torch.allclose(loss.logit_bias, torch.tensor(res.alpha["logit_bias"]))

    summary, plots = finish_run(tmp_path / "run", {"search": res})
    run_policy = load_policy(tmp_path / "run" / "policy.json")
    assert run_policy.loss == pf.loss and summary["final"] == "search"
    assert {p.name for p in plots} >= {"per_class_error.png", "alpha_vs_frequency.png"}


def _policy_search(tiny_bundle, **changes):
    cfg = Config(**{**SHORT, "augment": "learned", "epochs": 3, "upper_start": 0.34, **changes})
    return AutoBalance(cfg).fit(tiny_bundle, model=TinyNet(4))


def test_a_learned_policy_starts_near_identity_and_its_movement_is_written(tiny_bundle, tmp_path):
    res = _policy_search(tiny_bundle)
    assert res.hyper_steps > 0 and res.augmentation is not None
    summary, plots = finish_run(tmp_path / "run", {"search": res})
    mv = summary["augmentation_movement"]
    assert mv["start"] == {"probability": 0.1, "magnitude": 0.1}
    assert len(mv["class_mean_abs"]) == 4 and 0 < mv["max_abs"] < 0.9
    assert "augmentation_movement.png" in {p.name for p in plots}
    assert (tmp_path / "run" / "augmentation_movement.png").stat().st_size > 0


def test_the_entropy_bonus_grows_rarely_applied_ops(tiny_bundle):
    def mean_probability(res) -> float:
        vals = [v for e in res.augmentation["per_class"].values() for v in e["probability"]]
        return sum(vals) / len(vals)

    plain, bonus = _policy_search(tiny_bundle), _policy_search(tiny_bundle, augment_entropy=10.0)
    assert mean_probability(bonus) > mean_probability(plain) + 0.01  # 6 hyper-steps of a warming-up upper lr


def test_the_backbone_term_changes_the_learned_policy(tiny_bundle):
    head, backbone = _policy_search(tiny_bundle, augment_hypergrad="head"), _policy_search(tiny_bundle)
    assert head.augmentation["per_class"] != backbone.augmentation["per_class"]
    assert head.hyper_steps == backbone.hyper_steps
