"""The Trainer's training recipe: mixup / CutMix on every run kind (the buffer replays the same mix) and
deferred re-weighting switching on at its fraction of the epochs."""

import pytest
import torch
from conftest import TinyNet

from ab_plugin import AutoBalance, Config, TrainerCallback, retrain, train_baseline
from ab_plugin.data import create_dataset
from ab_plugin.losses._functional import drw_weights
from ab_plugin.mixing import mix_targets, split_mix

TINY = dict(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0, upper_start=0.0, interval=2, hyper_batches=2,
            device="cpu", channels_last=False, seed=0)


class _Capture(TrainerCallback):
    """Each lower step's model input (a forward pre-hook) beside the hyper-step's replay of the newest batch."""

    def __init__(self) -> None:
        self.inputs = self.replayed = None
        self.steps = self.replays = 0

    def on_epoch_start(self, trainer, epoch):
        if epoch > 0:
            return
        trainer._lower.register_forward_pre_hook(lambda m, args: setattr(self, "inputs", args[0].detach()))
        replay = trainer.pipeline.train_input

        def recorded(x, y, draws):
            out = replay(x, y, draws)
            self.replayed = out.detach()
            return out

        trainer.pipeline.train_input = recorded

    def on_step_end(self, trainer, step, loss):
        entry = trainer.bilevel._buffer[-1]
        _, mix = split_mix(entry.draws)
        assert mix is not None and entry.target.shape == (32, 10)
        assert torch.equal(entry.target, mix_targets(10, mix, 32, 32))  # the soft targets of the trained mix
        with torch.no_grad():
            unmixed = trainer._train_input(entry.inputs, mix["mix_labels"], split_mix(entry.draws)[0])
        assert not torch.allclose(unmixed, self.inputs)  # the step trained on a mixed batch
        self.steps += 1

    def on_hyper_step(self, trainer, step, norm, skipped):
        assert torch.equal(self.replayed, self.inputs)  # the replay is the batch the step trained on
        self.replayed = None
        self.replays += 1


@pytest.mark.parametrize("recipe", [{"mixup": 1.0}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_search_with_mixing_trains_and_buffers_the_same_mix(recipe):
    bundle = create_dataset("digits-lt")
    capture = _Capture()
    cfg = Config(**TINY, augment="learned", **recipe)  # learned: the newest batch is replayed with its draws
    res = AutoBalance(cfg).fit(bundle, model=TinyNet(10), callbacks=[capture])
    assert capture.steps == res.steps and capture.replays == res.hyper_steps > 0 and res.skipped_steps == 0


def test_baseline_and_retrain_train_on_mixed_soft_targets():
    bundle = create_dataset("digits-lt")
    seen = []

    class Targets(TrainerCallback):
        def on_epoch_start(self, trainer, epoch):
            loss_forward = trainer.loss.forward
            trainer.loss.forward = lambda z, t: seen.append(t.shape) or loss_forward(z, t)

    cfg = Config(**{**TINY, "epochs": 1}, mixup=1.0)
    res = train_baseline("la", bundle, cfg, model=TinyNet(10), callbacks=[Targets()])
    retrain(res.alpha, bundle, cfg, model=TinyNet(10), callbacks=[Targets()])
    assert seen and all(s == (32, 10) for s in seen)


def test_full_model_engines_refuse_mixing(tiny_bundle):
    with pytest.raises(ValueError, match="--engine head"):
        AutoBalance(Config(**TINY, dataset="blobs", augment="none", engine="cg", mixup=1.0)).build(
            tiny_bundle, model=TinyNet(4))


class _Weights(TrainerCallback):
    """The per-class weights the loss applied in each epoch."""

    def __init__(self) -> None:
        self.by_epoch = {}

    def on_step_end(self, trainer, step, loss):
        w = trainer.loss.training_weight
        self.by_epoch[trainer.state.epoch] = None if w is None else w.detach().clone()


def test_drw_switches_at_its_fraction_for_a_baseline_the_search_and_the_retrain(tiny_bundle):
    # the one-stage search, whose α moves between the epochs the deferral acts on
    cfg = Config(**{**TINY, "epochs": 4}, dataset="blobs", augment="none", drw_from=0.5, upper_average=0.0,
                 learn=("logit_bias", "class_weight"), stage2="none")
    ce = _Weights()
    train_baseline("ce", tiny_bundle, cfg, model=TinyNet(4), callbacks=[ce])
    full = drw_weights(tiny_bundle.train.class_counts())
    assert ce.by_epoch[0] is None and ce.by_epoch[1] is None  # epochs 0, 1 < 0.5 · 4
    assert torch.equal(ce.by_epoch[2], full) and torch.equal(ce.by_epoch[3], full)

    search = _Weights()
    ab = AutoBalance(cfg)
    res = ab.fit(tiny_bundle, model=TinyNet(4), callbacks=[search])
    split = drw_weights(ab.trainer.train_data.class_counts())  # the search trains on its 80 % split
    learned = torch.tensor([h["alpha"]["class_weight"] for h in res.history])
    assert torch.allclose(search.by_epoch[1], learned[1], atol=1e-6)  # w alone before the switch
    assert torch.allclose(search.by_epoch[2], learned[2] * split, atol=1e-6)  # w_y multiplied after it
    assert torch.allclose(torch.tensor(res.alpha["class_weight"]), learned[3], atol=1e-6)  # α exported alone

    again = _Weights()
    retrain(res, tiny_bundle, cfg, model=TinyNet(4), callbacks=[again])
    assert torch.allclose(again.by_epoch[1], learned[3], atol=1e-6)
    assert torch.allclose(again.by_epoch[3], learned[3] * full, atol=1e-6)


def test_ldam_drw_keeps_its_own_point_unless_drw_from_is_given(tiny_bundle):
    for drw_from, first_deferred in ((None, 4), (0.2, 1)):  # ldam-drw's 0.8 of 5 epochs: from epoch 4
        seen = _Weights()
        cfg = Config(**{**TINY, "epochs": 5}, dataset="blobs", augment="none", drw_from=drw_from)
        train_baseline("ldam-drw", tiny_bundle, cfg, model=TinyNet(4), callbacks=[seen])
        assert [seen.by_epoch[e] is not None for e in range(5)] == [e >= first_deferred for e in range(5)]


def test_mixup_off_trains_the_last_epochs_on_hard_labels(tiny_bundle):
    shapes = {}

    class Targets(TrainerCallback):
        def on_epoch_start(self, trainer, epoch):
            if epoch > 0:
                return
            forward = trainer.loss.forward

            def recorded(z, t):
                shapes[trainer.state.epoch] = t.ndim
                return forward(z, t)

            trainer.loss.forward = recorded

    cfg = Config(**{**TINY, "epochs": 4}, dataset="blobs", augment="none", mixup=1.0, mixup_off=0.75)
    train_baseline("ce", tiny_bundle, cfg, model=TinyNet(4), callbacks=[Targets()])
    assert shapes == {0: 2, 1: 2, 2: 2, 3: 1}  # soft targets [B, C] until 0.75 · 4 epochs, labels [B] after


def test_rebalance_from_trains_plain_ce_first_and_a_search_refuses_it(tiny_bundle):
    plain = {}

    class Plain(TrainerCallback):
        def on_step_end(self, trainer, step, loss):
            plain[trainer.state.epoch] = trainer.loss._plain

    cfg = Config(**{**TINY, "epochs": 4}, dataset="blobs", augment="none", rebalance_from=0.5)
    train_baseline("la", tiny_bundle, cfg, model=TinyNet(4), callbacks=[Plain()])
    assert plain == {0: True, 1: True, 2: False, 3: False}
    with pytest.raises(ValueError, match="rebalance-from"):  # the one-stage search learns α on the loss it trains
        AutoBalance(cfg.replace(stage2="none")).build(tiny_bundle, model=TinyNet(4))
    # the exact stage-2 search learns α on frozen features, whatever recipe trained them
    trainer, _ = AutoBalance(cfg).build(tiny_bundle, model=TinyNet(4))
    assert trainer.upper is None and trainer.loss._plain
