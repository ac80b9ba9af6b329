"""Stage 2 in the runs: baselines with a recipe, a frozen backbone's features computed once, and the exact
stage-2 search end to end through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TinyNet, cli

from ab_plugin import Config
from ab_plugin.search import AutoBalance, retrain, train_baseline
from ab_plugin.stage2 import TAU_GRID

TINY = dict(dataset="blobs", epochs=2, batch_size=32, lr=0.05, warmup_epochs=1, device="cpu", channels_last=False,
            augment="none", seed=0, workers=0)


class CountingNet(TinyNet):
    """A TinyNet that counts the images its backbone sees."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__(num_classes)
        self.images = 0

    def forward_features(self, x):
        self.images += len(x)
        return super().forward_features(x)


@pytest.mark.parametrize("kind", ["baseline", "retrain", "search"])
def test_frozen_backbone_runs_the_backbone_once_per_image(tiny_bundle, kind):
    cfg = Config(**TINY, freeze_backbone=True, stage2_hyper_steps=2).replace(epochs=4)
    torch.manual_seed(0)
    model = CountingNet()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    if kind == "baseline":
        result = train_baseline("la", tiny_bundle, cfg, model=model)
    elif kind == "retrain":
        result = retrain({"logit_bias": [0.0, -0.5, -1.0, -1.5]}, tiny_bundle, cfg, model=model)
    else:
        result = AutoBalance(cfg).fit(tiny_bundle, model=model)
    # one feature pass over the training data (the search: its training and validation splits), then the
    # metrics' pass over the test set (and the search's validation split); the old loop: 4 epochs of batches
    extra = _val_size(tiny_bundle, cfg) if kind == "search" else 0
    assert model.images == len(tiny_bundle.train) + len(tiny_bundle.test) + extra
    end = model.state_dict()
    assert all(torch.equal(end[k], start[k]) for k in start if not k.startswith("fc."))
    assert not torch.equal(end["fc.weight"], start["fc.weight"])
    assert math.isfinite(result.test_metrics["balanced_error"])


def _val_size(bundle, cfg) -> int:
    from ab_plugin.data import split_per_class

    return len(split_per_class(bundle.train, cfg.val_fraction, cfg.seed, cfg.val_min_per_class)[1])


@pytest.mark.parametrize("recipe", ["crt", "tau-norm", "wb", "search"])
def test_baseline_with_a_stage2_recipe_keeps_stage1_metrics(tiny_bundle, recipe):
    cfg = Config(**TINY, stage2=recipe, stage2_epochs=2)
    torch.manual_seed(0)
    result = train_baseline("ce", tiny_bundle, cfg, model=TinyNet())
    assert result.stage2["recipe"] == recipe and result.stage2["seconds"] > 0
    assert result.stage1_test_metrics is not None and result.test_metrics is not None
    if recipe == "tau-norm":  # chosen on a split held out of the training set, never on the test set
        assert result.stage2["tau"] in TAU_GRID
    if recipe == "search":
        assert result.stage2["grad_norm"] < 1e-9


def test_by_default_the_search_and_its_retrain_use_the_exact_stage2_search_and_baselines_none(tiny_bundle):
    cfg = Config(**TINY, stage2_hyper_steps=2)
    assert cfg.stage2 == "auto"
    torch.manual_seed(0)
    searcher = AutoBalance(cfg)
    found = searcher.fit(tiny_bundle, model=TinyNet())
    assert searcher.cfg.stage2 == "search" and found.stage2["recipe"] == "search" and found.hyper_steps == 2
    assert found.stage1_test_metrics is not None  # stage 1 trained with α at its init, then the hyper-steps
    torch.manual_seed(0)
    again = retrain(found, tiny_bundle, cfg, model=TinyNet())
    assert again.stage2["recipe"] == "search" and again.stage2["grad_norm"] < 1e-9  # the classifier solved for α*
    assert found.to_policy().provenance["stage2"] == "search"  # a policy file says how its α was learned
    torch.manual_seed(0)
    assert train_baseline("la", tiny_bundle, cfg, model=TinyNet()).stage2 is None  # its paper's recipe
    # an α learned inside the training loop is retrained there too, under the same default config
    torch.manual_seed(0)
    one_stage = AutoBalance(cfg.replace(stage2="none")).fit(tiny_bundle, model=TinyNet())
    torch.manual_seed(0)
    assert retrain(one_stage, tiny_bundle, cfg, model=TinyNet()).stage2 is None


def test_the_exact_search_stage1_records_validation_metrics_without_changing_its_training(tiny_bundle):
    cfg = Config(**TINY, stage2="search")
    torch.manual_seed(0)
    trainer, val = AutoBalance(cfg).build(tiny_bundle, model=TinyNet())
    trainer.fit()
    # every stage-1 epoch holds the validation split's metrics, as a one-stage search's epochs do
    assert len(trainer.state.history) == 2 and all("balanced_error" in r["val"] for r in trainer.state.history)
    assert trainer.state.history[-1]["val"]["balanced_error"] == pytest.approx(trainer.evaluate(val).balanced_error)
    # the same training without the monitor: evaluation only, so the weights come out bit-identical
    torch.manual_seed(0)
    again, _ = AutoBalance(cfg).build(tiny_bundle, model=TinyNet())
    again.val_split = None
    again.fit()
    assert "val" not in again.state.history[0]
    for a, b in zip(trainer.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_stage2_search_end_to_end_through_the_cli(tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli("search", "--dataset", "digits-lt", "--backbone", "resnet20", "--epochs", "1",
                            "--batch-size", "64", "--device", "cpu", "--quiet", "--compare", "", "--stage2",
                            "search", "--stage2-hyper-steps", "3", "--workers", "0", "--format", "json",
                            "--out", str(out))
    assert code == 0, err
    summary = json.loads(stdout)
    search, again = summary["stages"]["search"], summary["stages"]["retrain"]
    # each hyper-step solves the classifier to the exact search's tolerance, a gradient norm of 1e-7
    assert search["hyper_steps"] == 3 and search["stage2"]["max_solve_grad_norm"] < 1e-7
    assert again["stage2"]["recipe"] == "search" and "retrain:stage1" in summary["stages"]
    alpha = json.loads((out / "search" / "result.json").read_text())["alpha"]
    policy = json.loads((out / "policy.json").read_text())
    assert policy["loss"]["logit_bias"] == pytest.approx(alpha["logit_bias"])
    history = json.loads((out / "search" / "result.json").read_text())["history"]
    assert alpha["logit_bias"] != pytest.approx(history[0]["alpha"]["logit_bias"])  # stage 1 kept α's init
    assert (out / "retrain" / "result.json").exists()


# seeds whose 3-epoch stage 1 has learned enough that the recipe changes the test metrics (on seed 0 τ-norm
# keeps τ = 0 and the same predictions)
@pytest.mark.parametrize("recipe, seed", [("crt", "0"), ("tau-norm", "1")])
def test_evaluate_and_resume_reproduce_a_stage2_run(tmp_path, recipe, seed):
    out = tmp_path / "run"
    code, stdout, err = cli("baseline", "ce", "--dataset", "digits-lt", "--backbone", "resnet20", "--epochs", "3",
                            "--warmup-epochs", "0", "--batch-size", "32", "--device", "cpu", "--quiet", "--workers",
                            "0", "--seed", seed, "--stage2", recipe, "--stage2-epochs", "2", "--format", "json",
                            "--out", str(out))
    assert code == 0, err
    summary = json.loads(stdout)
    stage = json.loads((out / "baseline-ce" / "result.json").read_text())
    # stage 2 changed the model: scoring the stage-1 checkpoint (as evaluate did) gives other metrics
    assert stage["test_metrics"] != stage["stage1_test_metrics"]
    code, stdout, err = cli("evaluate", str(out), "--format", "json")
    assert code == 0, err
    evaluated = json.loads(stdout)
    assert evaluated["test_metrics"] == stage["test_metrics"]
    assert evaluated["balanced_error"] == summary["balanced_error"] == stage["test_metrics"]["balanced_error"]
    # killed after stage 2, before the results were written: --resume loads stage 2 (its measured seconds
    # included) rather than re-running it on top of the classifier it left
    for name in ("baseline-ce/result.json", "result.json", "policy.json"):
        (out / name).unlink()
    code, stdout, err = cli("baseline", "ce", "--resume", "--out", str(out), "--quiet", "--format", "json")
    assert code == 0, err
    again = json.loads((out / "baseline-ce" / "result.json").read_text())
    assert again["stage2"] == stage["stage2"] and again["test_metrics"] == stage["test_metrics"]
    assert again["stage1_test_metrics"] == stage["stage1_test_metrics"]
    # resuming the finished run changes nothing
    code, stdout, err = cli("baseline", "ce", "--resume", "--out", str(out), "--quiet", "--format", "json")
    assert code == 0, err
    assert json.loads(stdout)["balanced_error"] == summary["balanced_error"]
