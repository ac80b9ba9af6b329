"""The prediction core: the same logits whether the Trainer, the CLI or an integration asks."""

from __future__ import annotations

import torch
from conftest import TinyNet

from ab_plugin import Config
from ab_plugin.data import TensorLoader, normalize
from ab_plugin.evaluation import evaluate, metrics_of, predict
from ab_plugin.integrations import evaluate_metrics, predict_logits
from ab_plugin.losses import ParametricCrossEntropy
from ab_plugin.trainer import Trainer


def test_predict_matches_the_trainer_and_restores_modes(tiny_bundle):
    torch.manual_seed(0)
    model = TinyNet(4)
    model.train()
    model.body[1].eval()  # a submodule in another mode must stay so
    mean, std = tiny_bundle.mean, tiny_bundle.std
    logits, feats = predict(model, tiny_bundle.test, mean=mean, std=std, device="cpu", batch_size=50)
    assert logits.shape == (240, 4) and feats.shape == (240, 8) and logits.dtype == torch.float32
    assert model.training and not model.body[1].training
    cfg = Config(device="cpu", channels_last=False)
    trainer = Trainer(model, ParametricCrossEntropy(4), tiny_bundle.train, cfg, mean=mean, std=std)
    ref_logits, ref_feats = trainer.predict(tiny_bundle.test)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(feats, ref_feats)
    m = evaluate(model, tiny_bundle.test, mean=mean, std=std, device="cpu", channels_last=True)
    assert m.to_dict() == metrics_of(logits, tiny_bundle.test).to_dict() == trainer.evaluate(tiny_bundle.test).to_dict()


def test_the_integrations_use_the_same_core(tiny_bundle):
    model = TinyNet(4)
    mean, std = tiny_bundle.mean, tiny_bundle.std
    loader = TensorLoader(tiny_bundle.test, 64, shuffle=False)
    batches = [(normalize(x.float() / 255, mean, std), y) for x, y, _ in loader]
    logits, labels = predict_logits(model, batches, "cpu")
    ref, _ = predict(model, tiny_bundle.test, mean=mean, std=std, device="cpu")
    torch.testing.assert_close(logits, ref)
    assert torch.equal(labels, tiny_bundle.test.targets)
    assert evaluate_metrics(model, batches, 4).balanced_error == metrics_of(ref, tiny_bundle.test).balanced_error
