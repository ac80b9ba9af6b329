"""End-to-end behaviour of the bilevel search on a small synthetic long-tailed problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyNet

from ab_plugin import AutoBalance, Config, TrainerCallback, retrain, train_baseline
from ab_plugin.hypergrad import FeatureProblem
from ab_plugin.policies._cuda import LEVELS_KEY
from ab_plugin.trainer import CHECKPOINT, METRICS

# the one-stage search (hyper-steps in the training loop), which these tests are about
FAST = dict(stage2="none", dataset="blobs", epochs=12, batch_size=32, lr=0.05, warmup_epochs=1, upper_start=0.25,
            interval=2, hyper_batches=4, upper_lr=0.05, device="cpu", channels_last=False, augment="none", seed=0)


def _corr(a, b):
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


def test_search_learns_larger_margins_for_rare_classes_and_beats_ce(tiny_bundle):
    cfg = Config(**FAST, init="neutral", learn=("logit_bias",))
    torch.manual_seed(0)
    res = AutoBalance(cfg).fit(tiny_bundle, model=TinyNet(4))
    counts = res.class_counts
    lb = res.alpha["logit_bias"]
    # rare classes get lower training bias = larger margin: l grows with log frequency
    assert _corr(lb, np.log(counts)) > 0.8, lb
    assert res.hyper_steps > 10
    ce = train_baseline("ce", tiny_bundle, Config(**FAST), model=TinyNet(4))
    tuned = retrain(res, tiny_bundle, Config(**FAST), model=TinyNet(4))
    assert tuned.test_metrics["balanced_error"] < ce.test_metrics["balanced_error"], (
        tuned.test_metrics, ce.test_metrics)


@pytest.mark.parametrize("engine", ["head", "cg", "neumann", "unrolled"])
def test_every_engine_moves_alpha(tiny_bundle, engine):
    cfg = Config(**{**FAST, "epochs": 3, "upper_start": 0.34, "hyper_batches": 2}, engine=engine,
                 learn=("logit_bias", "logit_scale", "class_weight"),
                 engine_options={"step": 0.1} if engine == "neumann" else {})
    res = AutoBalance(cfg).fit(tiny_bundle, model=TinyNet(4))
    start = res.history[0]["alpha"]
    assert res.hyper_steps > 0 and res.skipped_hyper_steps == 0
    for key in ("logit_bias", "logit_scale", "class_weight"):
        assert not np.allclose(res.alpha[key], start[key]), key


# learned: the replayed batch's draws are checkpointed; with mixup / CutMix the mix's draws too; bank: whether it
# still follows CUDA's curriculum
@pytest.mark.parametrize(("augment", "recipe"), [("none", {}), ("learned", {}),
                                                 ("learned", {"mixup": 1.0, "cutmix": 1.0, "drw_from": 0.5}),
                                                 ("cuda", {}), ("bank", {"augment_warm_start": True})])
def test_resume_is_bit_for_bit(tiny_bundle, tmp_path, augment, recipe):
    cfg = Config(**{**FAST, "epochs": 4, "upper_start": 0.25, "augment": augment, **recipe})

    def net() -> TinyNet:  # the same initial weights for every run, whatever ran before in this process
        torch.manual_seed(0)
        return TinyNet(4)

    full = AutoBalance(cfg).fit(tiny_bundle, model=net(), run_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    class StopAfter(TrainerCallback):
        def on_epoch_end(self, trainer, epoch, record):
            if epoch == 1:
                raise Stop

    with pytest.raises(Stop):
        AutoBalance(cfg).fit(tiny_bundle, model=net(), run_dir=tmp_path / "b", callbacks=[StopAfter()])
    # the stop came after epoch 2's checkpoint? No: callbacks run before the save, so epoch 1 is the last
    resumed = AutoBalance(cfg).fit(tiny_bundle, model=net(), run_dir=tmp_path / "b", resume=True)
    assert full.hyper_steps > 0
    assert resumed.alpha == full.alpha and resumed.augmentation == full.augmentation
    assert resumed.test_metrics == full.test_metrics
    assert [h.get(LEVELS_KEY) for h in resumed.history] == [h.get(LEVELS_KEY) for h in full.history]  # cuda
    strength = "augmentation_mean_strength"  # bank: CUDA's levels until the upper phase, then the mixture
    assert [h.get(strength) for h in resumed.history] == [h.get(strength) for h in full.history]
    assert (tmp_path / "b" / CHECKPOINT).exists() and (tmp_path / "b" / METRICS).exists()


def test_nan_loss_is_skipped_and_counted(tiny_bundle):
    cfg = Config(**{**FAST, "epochs": 1, "max_bad_steps": 1000, "upper_start": 1.0})
    trainer, _ = AutoBalance(cfg).build(tiny_bundle, model=TinyNet(4))
    calls = {"n": 0}
    real = trainer.loss.forward

    def flaky(logits, target):
        calls["n"] += 1
        out = real(logits, target)
        return out * float("nan") if calls["n"] % 3 == 0 else out

    trainer.loss.forward = flaky
    with pytest.warns(RuntimeWarning, match="non-finite"):
        trainer.fit()
    assert trainer.state.skipped_steps == calls["n"] // 3
    assert all(np.isfinite(v).all() for v in trainer.loss.per_class().values())


def test_nan_hypergradient_is_skipped_and_alpha_kept(tiny_bundle):
    cfg = Config(**{**FAST, "epochs": 2, "upper_start": 0.0, "max_bad_steps": 1000})
    trainer, _ = AutoBalance(cfg).build(tiny_bundle, model=TinyNet(4))
    before = trainer.loss.per_class()
    trainer.bilevel.engine = lambda problem: [torch.full_like(h, float("nan")) for h in problem.hparams]
    trainer.bilevel.engine.problem = FeatureProblem
    with pytest.warns(RuntimeWarning, match="non-finite hypergradient"):
        trainer.fit()
    assert trainer.state.hyper_steps == 0 and trainer.state.skipped_hyper_steps == trainer.state.step // 2
    assert trainer.loss.per_class() == before


def test_too_many_bad_steps_stop_with_clear_error(tiny_bundle):
    from ab_plugin.trainer import NumericalError

    cfg = Config(**{**FAST, "epochs": 1, "max_bad_steps": 2, "lr": 1e30})  # finite (inf is refused), diverges
    trainer, _ = AutoBalance(cfg).build(tiny_bundle, model=TinyNet(4))
    with pytest.raises(NumericalError, match="non-finite steps in a row"), pytest.warns(RuntimeWarning):
        trainer.fit()


def test_trainer_does_not_touch_alpha_in_lower_steps(tiny_bundle):
    cfg = Config(**{**FAST, "epochs": 1, "upper_start": 1.0})
    trainer, _ = AutoBalance(cfg).build(tiny_bundle, model=TinyNet(4))
    before = {k: list(v) for k, v in trainer.loss.per_class().items()}
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.loss.per_class() == before
    assert all(h.grad is None for h in trainer.bilevel.hparams.all)
    # the lower steps did run (and moved the model), so "α unchanged" is not vacuous
    assert trainer.state.step > 0 and trainer.state.hyper_steps == 0
    assert not torch.equal(trainer.model.state_dict()["fc.weight"], weights["fc.weight"])
