"""`--augment bank` through the real CLI on the embedded digits-lt data: CUDA's warm start, the learned mixture
exported, the retrain training with it."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from ab_plugin.cli import main
from ab_plugin.policies import load_policy

SMALL = ["--backbone", "resnet20", "--epochs", "2", "--batch-size", "64", "--interval", "2", "--upper-start", "0.5",
         "--device", "cpu", "--quiet", "--augment", "bank", "--augment-warm-start", "--augment-hypergrad", "head"]


def test_search_with_a_warm_started_bank_exports_the_mixture_and_retrains_with_it(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["search", *SMALL, "--out", str(out), "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "search" / "metrics.jsonl").read_text().splitlines()]
    # epoch 0 follows CUDA's curriculum (its levels recorded), epoch 1 learns the mixture started from them
    assert "augmentation_levels" in records[0] and "augmentation_levels" not in records[1]
    assert all(len(r["augmentation_mean_strength"]) == 10 for r in records)
    policy = load_policy(out / "policy.json")
    aug = policy.augmentation
    assert policy.version == 2 and aug["kind"] == "bank" and len(aug["per_class"]["mixture"]) == 10
    assert json.loads(res.stdout)["stages"]["search"]["hyper_steps"] > 0
    retrained = json.loads((out / "retrain" / "result.json").read_text())
    torch.testing.assert_close(torch.tensor(retrained["augmentation"]["per_class"]["mixture"]),
                               torch.tensor(aug["per_class"]["mixture"]), atol=1e-6, rtol=0)
