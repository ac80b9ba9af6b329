"""The prediction core: the same logits whether the Trainer, the CLI or an integration asks."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyNet

from ab_plugin import Config
from ab_plugin.data import ImageData, TensorLoader, normalize
from ab_plugin.evaluation import evaluate, metrics_of, predict, shot_accuracy
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


def test_many_medium_few_shot_accuracy_by_hand():
    # training images per class: many > 100 (0, 1), medium 20..100 (2, 3, 4), few < 20 (5, 6, 7)
    counts = [150, 101, 100, 60, 20, 19, 3, 1]
    wrong_of = [1, 0, 2, 4, 1, 3, 0]  # of 4 test images of classes 0..6; class 7 has none
    targets = torch.tensor([c for c in range(7) for _ in range(4)])
    preds = torch.tensor([(c + 1) % 8 if i < wrong_of[c] else c for c in range(7) for i in range(4)])
    data = ImageData(torch.zeros(28, 3, 1, 1, dtype=torch.uint8), targets, [str(c) for c in range(8)])
    m = metrics_of(torch.nn.functional.one_hot(preds, 8).float(), data, counts).to_dict()
    many, medium, few = (3 / 4 + 4 / 4) / 2, (2 / 4 + 0 / 4 + 3 / 4) / 3, (1 / 4 + 4 / 4) / 2  # class 7 absent
    assert m["shot_accuracy"] == pytest.approx({"many": many, "medium": medium, "few": few})
    assert m["balanced_error"] == pytest.approx(sum(wrong_of) / 28)  # reported beside balanced error
    assert shot_accuracy([0.5, 0.25, 1.0], [100, 20, 5]) == {"many": None, "medium": 0.625, "few": 0.0}
    assert shot_accuracy([0.5, float("nan")], [500, 10]) == {"many": 0.5, "medium": None, "few": None}
    assert "shot_accuracy" not in metrics_of(torch.zeros(28, 8), data).to_dict()  # no counts, no groups
    with pytest.raises(ValueError, match="one training count per class"):
        shot_accuracy([0.1, 0.2], [5])


def test_the_summary_table_shows_an_empty_shot_group_as_a_dash():
    from rich.console import Console

    from ab_plugin.report import summary_table

    metrics = {"accuracy": 0.5, "balanced_error": 0.5, "worst_class_error": 1.0,
               "shot_accuracy": {"many": None, "medium": 0.625, "few": 0.0}}
    console = Console(width=200, record=True)
    console.print(summary_table("t", {"retrain": {"test_metrics": metrics, "seconds": 1.0}}))
    row = next(ln for ln in console.export_text().splitlines() if "retrain" in ln)
    assert [c.strip() for c in row.split("│")[1:-1]] == ["retrain", "50.00", "50.00", "100.00", "-", "62.50", "0.00",
                                                         "1.0"]
