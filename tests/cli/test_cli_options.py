"""Every option explains itself (help from Config's field metadata, grouped in sections), and bad option values
are refused in one line, with the right exit code, before any run folder is touched (issues 25 and 26)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from ab_plugin.cli import main
from ab_plugin.config import GROUPS, Config

QUICK = ["--backbone", "resnet20", "--epochs", "1", "--batch-size", "64", "--interval", "2", "--upper-start", "0",
         "--device", "cpu", "--quiet", "--no-retrain", "--compare", ""]


def _commands(group: click.Group = main, path: tuple[str, ...] = ()):
    yield path, group
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _invoke(*args: str):
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def _one_line_error(code: int, stderr: str, msg: str) -> None:
    lines = [ln for ln in stderr.strip().splitlines() if ln]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], stderr
    assert "Traceback" not in stderr


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished quick search run folder and the checksums of all its files."""
    out = tmp_path_factory.mktemp("options") / "run"
    code, stdout, stderr = _invoke("search", *QUICK, "--out", str(out), "--format", "json")
    assert code == 0, stderr
    return out, _checksums(out)


# --- issue 25 item 3: the CLI explains itself ------------------------------------------------------------------

def test_every_option_of_every_command_has_help_beyond_its_default():
    checked = 0
    for path, cmd in _commands():
        for p in cmd.params:
            if isinstance(p, click.Option):
                text = re.sub(r"\[default:[^\]]*\]", "", p.help or "").strip()
                assert len(text) >= 8, f"{' '.join(path) or 'ab-plugin'} {p.opts[0]}: {p.help!r}"
                checked += 1
    assert {path[-1] for path, _ in _commands() if path} >= {"search", "baseline", "retrain", "evaluate", "export",
                                                             "show", "warmstart"}
    assert checked > 150


def test_config_options_take_their_help_from_the_field_metadata_and_show_in_their_group():
    text = _invoke("search", "--help")[1]
    flat, bare = " ".join(text.split()), re.sub(r"\s", "", text)  # bare: no wrapping (nor its hyphen breaks)
    sections = re.split(r"\n(?=\S[^\n]*:\n)", text)
    by_title = {s.splitlines()[0].rstrip(":"): " ".join(s.split()) for s in sections}
    for title in [*GROUPS.values(), "Command", "Output and errors"]:
        assert title in by_title, title
    for f in dataclasses.fields(Config):
        if f.name in ("engine_options", "milestones"):  # YAML only
            continue
        option = "--" + f.name.replace("_", "-")
        assert re.sub(r"\s", "", f.metadata["help"]) in bare, option
        assert option in by_title[GROUPS[f.metadata["group"]]], (option, f.metadata["group"])
    for name in ("--out", "--resume", "--compare"):
        assert name in by_title["Command"]
    assert "--format" in by_title["Output and errors"]
    # units and choices are part of the text
    assert "lower steps between hyper-steps" in flat and "fraction [0, 1] of the epochs" in flat
    assert "images per lower-level step" in flat


@pytest.mark.parametrize("command", ["baseline", "retrain", "warmstart", "evaluate", "export", "show"])
def test_every_command_shows_sections(command):
    code, text, _ = _invoke(command, "--help")
    assert code == 0
    assert "Output and errors:" in text and "Command:" in text
    if command in ("baseline", "retrain", "warmstart"):
        assert "Upper level: the search of α:" in text and "Dataset:" in text


def test_a_run_folders_config_yaml_loads_back_through_config(finished_run, tmp_path):
    out, _ = finished_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["command"] == "search" and "options" in saved  # what made --config fail before
    again = tmp_path / "again"
    code, stdout, stderr = _invoke("search", "--config", str(out / "config.yaml"), "--quiet", "--no-retrain",
                                   "--compare", "", "--out", str(again), "--format", "json")
    assert code == 0, stderr
    assert yaml.safe_load((again / "config.yaml").read_text()) == saved
    first = json.loads((out / "result.json").read_text())
    assert json.loads(stdout)["alpha"] == first["alpha"]  # the same config gives the same run


# --- issue 26 item 2 / 10: floats finite and in range, ints bounded, before the folder is touched ----------------

@pytest.mark.parametrize(("args", "msg"), [
    (["--upper-lr", "inf"], "config key 'upper_lr' must be a finite number (not inf or nan), got inf"),
    (["--upper-lr", "nan"], "config key 'upper_lr' must be a finite number"),
    (["--lr", "-inf"], "config key 'lr' must be a finite number"),
    (["--tau", "nan"], "config key 'tau' must be a finite number"),
    (["--warmup-epochs", "inf"], "config key 'warmup_epochs' must be a finite number"),
    (["--upper-average", "7"], "--upper-average must be in [0, 1], got 7.0"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1], got 1.5"),
    (["--clip", "-1"], "--clip must be in [0, inf], got -1.0"),
    (["--tau", "-0.5"], "--tau must be in [0, inf], got -0.5"),
    (["--seed", "100000000000000000000000000"], "config key 'seed' must be a whole number of at most"),
    (["--seed", "-3"], "--seed must be in [0, 4294967295], got -3"),
    (["--epochs", "1000000"], "--epochs must be in [1, 100000], got 1000000"),
    (["--init", "magic"], "unknown --init 'magic': choose from neutral, la, cdt, vs"),
])
def test_bad_option_values_are_refused_and_the_old_run_is_untouched(finished_run, args, msg):
    out, sums = finished_run
    code, _, stderr = _invoke("search", *QUICK, *args, "--out", str(out), "--overwrite")
    _one_line_error(code, stderr, msg)
    assert _checksums(out) == sums


@pytest.mark.parametrize(("text", "msg"), [
    ("upper_lr: .inf\n", "config key 'upper_lr' must be a finite number (not inf or nan), got inf"),
    ("tau: .nan\n", "config key 'tau' must be a finite number (not inf or nan), got nan"),
    ("seed: 1.0e+26\n", "config key 'seed' must be a whole number of at most"),
    ("seed: 1e26\n", "config key 'seed' must be a whole number, got '1e26' (str)"),  # YAML 1.1: a string
    ("seed: 100000000000000000000000000\n", "config key 'seed' must be a whole number of at most"),
    ("epochs: 1.0e+30\n", "config key 'epochs' must be a whole number of at most"),
    ("batch_size: 1.0e+30\n", "config key 'batch_size' must be a whole number of at most"),
    ("epochs: 1e30\n", "config key 'epochs' must be a whole number, got '1e30' (str)"),
    ("upper_average: 7\n", "--upper-average must be in [0, 1], got 7.0"),
    ("lr: -.inf\n", "config key 'lr' must be a finite number"),
])
def test_bad_yaml_values_are_refused_and_the_old_run_is_untouched(finished_run, tmp_path, text, msg):
    out, sums = finished_run
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, _, stderr = _invoke("search", "--config", str(cfg), "--out", str(out), "--overwrite", "--quiet")
    _one_line_error(code, stderr, msg)
    assert _checksums(out) == sums


def test_a_sharing_with_more_groups_than_classes_is_refused(finished_run):
    out, sums = finished_run
    code, _, stderr = _invoke("search", *QUICK, "--sharing", "groups:50", "--out", str(out), "--overwrite")
    _one_line_error(code, stderr, "--sharing groups:50 asks for 50 groups but dataset 'digits-lt' has 10 classes")
    assert _checksums(out) == sums
    code, _, stderr = _invoke("search", *QUICK, "--sharing", "hat:11", "--out", str(out), "--overwrite")
    _one_line_error(code, stderr, "has 10 classes: use hat:K with K <= 10")


# --- issue 26 item 8: YAML alias bombs ---------------------------------------------------------------------------

def _bomb(key: str) -> str:
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    # the anchors live inside the value, so no unknown key is met first
    return f"{key}: {{{', '.join(levels)}}}\n"


@pytest.mark.parametrize("key", ["dataset", "engine_options"])
def test_a_yaml_alias_bomb_in_config_is_one_line(finished_run, tmp_path, key):
    out, sums = finished_run
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_bomb(key))
    code, _, stderr = _invoke("search", "--config", str(cfg), "--out", str(out), "--overwrite", "--quiet")
    _one_line_error(code, stderr, "uses a YAML alias (*a, line 1): write the value out instead")
    assert _checksums(out) == sums


@pytest.mark.parametrize("key", ["dataset", "engine_options"])
def test_a_yaml_alias_bomb_in_a_run_folders_config_is_one_line(tmp_path, key):
    run = tmp_path / "run"
    run.mkdir()
    good = {"command": "search", **Config().to_dict()}
    text = yaml.safe_dump({k: v for k, v in good.items() if k != key}) + _bomb(key)
    (run / "config.yaml").write_text(text)
    sums = _checksums(run)
    code, _, stderr = _invoke("search", "--resume", "--out", str(run), "--quiet")
    _one_line_error(code, stderr, f"config key {key!r} holds too large or deep a value")
    code, _, stderr = _invoke("evaluate", str(run))
    _one_line_error(code, stderr, f"config key {key!r} holds too large or deep a value")
    assert _checksums(run) == sums


def test_oversized_values_are_refused_in_the_python_api():
    with pytest.raises(ValueError, match="holds a string of 5000 characters"):
        Config(dataset="x" * 5000)
    with pytest.raises(ValueError, match="too large or deep"):
        Config(engine_options={"steps": list(range(1000))})
    with pytest.raises(ValueError, match=r"unknown config keys \['xxxxxxxx.*\.\.\..*xxxx'\]"):
        Config.from_dict({"x" * 5000: 1})


# --- issue 26 item 11: --format json on failure -------------------------------------------------------------------

@pytest.mark.parametrize(("args", "msg", "exit_code"), [
    (["search", "--epochs", "0", "--out", "{tmp}/r"], "--epochs must be >= 1, got 0", 2),
    (["search", "--upper-lr", "inf", "--out", "{tmp}/r"], "must be a finite number", 2),
    (["search", "--epochs", "abc", "--out", "{tmp}/r"], "'abc' is not a valid integer", 2),
    (["search", "--no-such-option"], "--no-such-option", 2),
    (["export", "{tmp}", "-o", "{tmp}/p.json"], "has no finished result (policy.json)", 2),
    (["show", "{tmp}/missing.json"], "missing.json", 2),
    (["evaluate", "{tmp}"], "is not a run folder", 2),
    (["baseline", "la", "--tau", "nan", "--out", "{tmp}/b"], "config key 'tau' must be a finite number", 2),
    (["warmstart", "--seed", "-1", "--out", "{tmp}/b"], "--seed must be in [0, 4294967295], got -1", 2),
    (["retrain", "{tmp}/nothing", "--out", "{tmp}/b"], "does not exist", 2),
])
def test_format_json_prints_one_error_document_on_failure(tmp_path, args, msg, exit_code):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, stdout, stderr = _invoke(*args, "--format", "json")
    assert code == exit_code, stderr
    doc = json.loads(stdout)  # one JSON document and nothing else
    assert msg in doc["error"] and doc["exit_code"] == exit_code
    assert msg in stderr  # the terminal still says it
    assert not (tmp_path / "r").exists() and not (tmp_path / "b").exists()


def test_format_json_without_failure_prints_no_error_document(finished_run, tmp_path):
    out, _ = finished_run
    code, stdout, _ = _invoke("export", str(out), "-o", str(tmp_path / "p.json"), "--format", "json")
    assert code == 0 and "error" not in json.loads(stdout)


# --- issue 26 item 12: a search that took no hyper-step says so --------------------------------------------------

def test_a_search_with_zero_hyper_steps_warns_that_alpha_was_not_learned(tmp_path):
    out = tmp_path / "run"
    # one batch per epoch leaves the one-stage search's loop no room for a hyper-step
    code, stdout, stderr = _invoke("search", *QUICK, "--stage2", "none", "--batch-size", "100000", "--out", str(out),
                                   "--format", "json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["stages"]["search"]["hyper_steps"] == 0
    warning = [ln for ln in stderr.splitlines() if ln.startswith("warning: the search took 0 hyper-steps")]
    assert len(warning) == 1 and "not a learned one" in warning[0], stderr


def test_an_impossible_imbalance_is_reported_with_the_real_ratio(tmp_path):
    code, _, stderr = _invoke("search", *QUICK, "--imbalance", "1e9", "--out", str(tmp_path / "run"))
    assert code == 0, stderr
    counts = json.loads((tmp_path / "run" / "result.json").read_text())["class_counts"]
    real = max(counts) / min(counts)
    assert real < 1e3  # what the data could give
    assert f"(imbalance {real:.3g}, asked 1e+09)" in stderr


def test_a_search_with_hyper_steps_does_not_warn(finished_run):
    out, _ = finished_run
    assert json.loads((out / "result.json").read_text())["stages"]["search"]["hyper_steps"] > 0


# --- issue 26 item 15: --workers defaults to what the machine has -------------------------------------------------

def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def test_workers_default_to_the_cores_this_process_may_use_and_are_saved_unset(finished_run):
    out, _ = finished_run
    cfg = Config()
    assert cfg.workers is None and cfg.loader_workers == min(4, _cores())
    assert Config(workers=0).loader_workers == 0 and Config(workers=7).loader_workers == 7
    assert yaml.safe_load((out / "config.yaml").read_text())["workers"] is None  # machine-independent
    text = re.sub(r"\s+", " ", _invoke("search", "--help")[1])
    assert "min(4, the CPU cores this process may use)" in text


def test_a_list_file_run_with_default_workers_gets_no_worker_warning(tmp_path):
    from conftest import write_list_tree

    root = write_list_tree(tmp_path / "lt", [12, 6, 3])
    args = ["search", "--dataset", f"imagenet-lt:{root}", "--backbone", "resnet20", "--epochs", "1", "--batch-size",
            "8", "--image-size", "16", "--device", "cpu", "--quiet", "--no-retrain", "--compare", "",
            "--upper-start", "0", "--interval", "1"]
    code, _, stderr = _invoke(*args, "--out", str(tmp_path / "run"), "--format", "json")
    assert code == 0, stderr
    assert "worker" not in stderr, stderr
    if _cores() < 4:  # the old default of 4 workers: PyTorch's warning, which the default now avoids
        code, _, stderr = _invoke(*args, "--workers", "4", "--out", str(tmp_path / "run4"), "--format", "json")
        assert code == 0 and "worker" in stderr, stderr
