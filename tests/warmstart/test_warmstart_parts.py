"""The warm start's parts on real Optuna objects: the trainer's pruning hook (also exported by
``ab_plugin.integrations``) and the command's table output with its trial-count progress bar."""

from __future__ import annotations

import optuna
import pytest
import torch
from click.testing import CliRunner

import ab_plugin.integrations
from ab_plugin.warmstart import TrialPruningCallback, warmstart_command

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_pruning_callback_reports_after_training_and_prunes_above_the_threshold():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.5))
    trial = study.ask()
    cb = TrialPruningCallback(trial)
    cb.on_epoch_end(None, 0, {"val": {"balanced_error": 0.9}})  # the untrained model: not reported
    cb.on_epoch_end(None, 1, {"train_loss": 1.0})  # an epoch without a validation record
    cb.on_epoch_end(None, 2, {"val": {"balanced_error": 0.4}})
    assert cb.reported == {2: 0.4}
    with pytest.raises(optuna.TrialPruned, match="balanced_error 0.7000 after 3 epoch"):
        cb.on_epoch_end(None, 3, {"val": {"balanced_error": 0.7}})
    assert cb.reported == {2: 0.4, 3: 0.7}
    assert ab_plugin.integrations.TrialPruningCallback is TrialPruningCallback


def test_table_output_shows_the_trial_count_and_the_best_trial(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(warmstart_command, [
            "--backbone", "resnet20", "--epochs", "2", "--n-max", "40", "--batch-size", "16", "--device", "cpu",
            "--upper-start", "0", "--n-trials", "1", "--trial-epochs", "1", "--pruner", "none",
            "--out", str(tmp_path / "ws")], catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    assert "1/1" in res.output  # the bar counts trials, not percent
    assert "best trials" in res.output and "best: trial 0" in res.output
    assert "next: ab-plugin search --warmstart" in res.output


@pytest.mark.parametrize("spec", ["sqlite:///{tmp}/no/such/dir/study.db", "{tmp}/no/such/dir/study.db",
                                  "{tmp}/no/such/dir/study.journal"])
def test_a_named_storage_never_creates_folders(tmp_path, spec):
    from ab_plugin.warmstart.storage import resolve_storage

    with pytest.raises(ValueError, match=r"folder .*/no/such/dir does not exist: create it first"):
        resolve_storage(spec.format(tmp=tmp_path), tmp_path / "out")
    assert not (tmp_path / "no").exists()
    ok = resolve_storage(f"sqlite:///{tmp_path}/study.db", tmp_path / "out")  # an existing folder is fine
    assert ok.kind == "sqlite"
