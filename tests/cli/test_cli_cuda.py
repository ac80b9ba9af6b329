"""`--augment cuda` through the real CLI on the embedded digits-lt data: search + retrain, levels saved."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from ab_plugin.cli import main
from ab_plugin.io import load_checkpoint

SMALL = ["--backbone", "resnet20", "--epochs", "2", "--batch-size", "64", "--interval", "2", "--upper-start", "0.5",
         "--device", "cpu", "--quiet", "--augment", "cuda"]


def test_search_with_cuda_reports_saves_and_plots_the_levels(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["search", *SMALL, "--out", str(out), "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    stages = {}
    for stage in ("search", "retrain"):
        records = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        stages[stage] = [r["augmentation_levels"] for r in records]
        assert all(len(lv) == 10 and all(0 <= v <= 10 for v in lv) for lv in stages[stage])
        saved = load_checkpoint(out / stage / "checkpoint.pt", map_location="cpu")["policy"]["levels"]
        assert torch.equal(saved, torch.tensor(stages[stage][-1]))
        assert summary["stages"][stage]["augmentation_levels"] == stages[stage][-1]
    assert any(max(lv) > 0 for lv in stages["search"] + stages["retrain"]), stages  # the curriculum moved
    assert max(stages["retrain"][0]) <= 1  # the retrain starts its own curriculum at level 0
    assert summary["augmentation_levels"] == stages["retrain"][-1] and summary["augmentation"] is None
    assert summary["stages"]["search"]["hyper_steps"] > 0
    assert (out / "augmentation_levels.png").exists() and (out / "policy.json").exists()
