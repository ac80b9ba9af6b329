"""The real `ab-plugin` CLI on the embedded digits-lt data (click's CliRunner and a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from ab_plugin.cli import main

SMALL = ["--backbone", "resnet20", "--epochs", "3", "--batch-size", "64", "--interval", "2", "--upper-start", "0.34",
         "--device", "cpu", "--quiet"]


def _run(args, code=0):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == code, res.output + str(res.stderr if hasattr(res, "stderr") else "")
    return res


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    res = _run(["search", *SMALL, "--out", str(out), "--format", "json", "--compare", "ce"])
    return out, json.loads(res.stdout)


def test_search_writes_a_complete_run_folder(search_run):
    out, summary = search_run
    for name in ("config.yaml", "result.json", "policy.json", "per_class_error.png", "alpha_vs_frequency.png",
                 "alpha_trajectory.png", "search/metrics.jsonl", "search/checkpoint.pt", "retrain/result.json",
                 "baseline-ce/result.json"):
        assert (out / name).exists(), name
    assert 0 <= summary["balanced_error"] <= 1
    assert set(summary["alpha"]) == {"class_weight", "logit_bias", "logit_scale"}
    assert len(summary["alpha"]["logit_bias"]) == 10
    lines = (out / "search" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    # --stage2 auto: stage 1 trained with α at its init, then the exact stage-2 search, and its retrain the same
    stages = summary["stages"]
    assert stages["search"]["stage2"]["recipe"] == "search" and stages["search"]["hyper_steps"] == 10
    assert stages["retrain"]["stage2"]["recipe"] == "search" and "retrain:stage1" in stages


def test_export_show_and_evaluate(search_run, tmp_path):
    out, _ = search_run
    pf = tmp_path / "p.json"
    _run(["export", str(out), "-o", str(pf)])
    data = json.loads(pf.read_text())
    assert data["version"] == 2 and len(data["classes"]) == 10
    prov = data["provenance"]
    assert prov["sharing"] == "poly:3" and prov["augment"] in ("fixed", "learned", "none") and "n_max" in prov
    assert prov["stage2"] == "search"  # how α was learned, which a retrain from the file repeats
    res = _run(["show", str(pf), "--format", "json"])
    assert json.loads(res.stdout)["loss"]["logit_bias"] == data["loss"]["logit_bias"]
    res = _run(["evaluate", str(out), "--format", "json"])
    ev = json.loads(res.stdout)
    assert ev["stage"] == "retrain"
    assert ev["balanced_error"] == pytest.approx(json.loads((out / "result.json").read_text())["balanced_error"])


@pytest.mark.parametrize("learned_in_the_loop", [False, True])
def test_a_retrain_from_a_policy_file_repeats_the_stage2_it_names(search_run, tmp_path, learned_in_the_loop):
    out, _ = search_run
    policy = json.loads((out / "policy.json").read_text())
    if learned_in_the_loop:  # a file from before --stage2 auto, or from an integration's in-loop search
        del policy["provenance"]["stage2"]
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    res = _run(["retrain", str(path), *SMALL, "--epochs", "1", "--out", str(tmp_path / "re"), "--format", "json"])
    stage = json.loads(res.stdout)["stages"]["retrain"]
    assert stage.get("stage2", {}).get("recipe") == (None if learned_in_the_loop else "search")


def test_finished_run_folder_is_refused_without_overwrite(search_run):
    out, _ = search_run
    res = CliRunner().invoke(main, ["search", *SMALL, "--epochs", "4", "--out", str(out)])
    assert res.exit_code == 2
    assert "already holds a different run" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--backbone", "resnet33"], "unknown --backbone 'resnet33'"),
        (["--dataset", "mnist-lt"], "unknown --dataset 'mnist-lt'"),
        (["--imbalance", "0.5"], "--imbalance must be >= 1"),
        (["--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
        (["--engine", "magic"], "unknown --engine 'magic'"),
        (["--dataset", "imagefolder:/nonexistent/x"], "/nonexistent/x"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, args, msg):
    res = CliRunner().invoke(main, ["search", "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], res.output


def test_yaml_config_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nbackbone: resnet20\nbatch_size: 64\nupper_start: 0.0\ninterval: 3\n")
    out = tmp_path / "r"
    _run(["search", "--config", str(cfg), "--seed", "3", "--out", str(out), "--no-retrain", "--quiet",
          "--device", "cpu"])
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["seed"] == 3 and saved["interval"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    res = CliRunner().invoke(main, ["search", "--config", str(bad), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "unknown config keys ['epochz']" in res.output


def test_baseline_command_and_subprocess_entry_point(tmp_path):
    out = tmp_path / "la"
    res = subprocess.run([sys.executable, "-m", "ab_plugin.cli", "baseline", "la", *SMALL, "--epochs", "1",
                          "--out", str(out), "--format", "json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["final"] == "baseline-la"
    assert (out / "baseline-la" / "checkpoint.pt").exists()


def test_help_has_examples():
    for cmd in ("search", "baseline", "retrain", "evaluate", "export", "show"):
        res = _run([cmd, "--help"])
        assert "Usage" in res.output
    assert "Examples" in _run(["search", "--help"]).output


def test_option_help_and_baseline_choices_come_from_the_registries():
    from ab_plugin.hypergrad import list_engines
    from ab_plugin.losses import list_losses, list_sharings

    text = " ".join(_run(["search", "--help"]).output.split())
    assert f"one of {', '.join(list_engines())}" in text and f"one of {', '.join(list_sharings())}" in text
    res = CliRunner().invoke(main, ["baseline", "magic"])
    assert res.exit_code == 2 and all(n in res.output for n in list_losses() if n != "autobalance")


def test_baseline_with_the_recipe_knobs_runs_and_saves_them(tmp_path):
    text = " ".join(_run(["baseline", "--help"]).output.split())
    assert "Training recipe: mixup / CutMix and deferred re-weighting" in text
    assert all(f"--{name} " in text for name in ("mixup", "cutmix", "mixup-off", "drw-from"))
    out = tmp_path / "la"
    res = _run(["baseline", "la", *SMALL, "--epochs", "5", "--mixup", "1", "--drw-from", "0.8", "--out", str(out),
                "--format", "json"])
    assert json.loads(res.stdout)["final"] == "baseline-la"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["mixup"], saved["cutmix"], saved["drw_from"]) == (1.0, 0.0, 0.8)
