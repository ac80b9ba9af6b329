"""Bad inputs and faults a new user hits, through the real `ab-plugin` CLI: each gives one line (no
traceback), exit code 2 (130 for Ctrl-C), and never costs an earlier run its results."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml
from conftest import cli, one_line_error

from ab_plugin.config import Config
from ab_plugin.data import DatasetBundle, ImageData
from ab_plugin.runs import check_inputs, lock_run_folder, run_folder

TINY = ["--backbone", "resnet20", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--quiet"]
KEPT = ("config.yaml", "result.json", "policy.json", "search/checkpoint.pt", "search/metrics.jsonl",
        "search/result.json")




def _snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in KEPT}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished search without retrain and baselines (what --resume must remember)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    code, _, err = cli("search", *TINY, "--out", str(out), "--no-retrain", "--compare", "")
    assert code == 0, err
    return out


# 1. data loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--dataset", "imagefolder:/nonexistent/typo"], ["--sharing", "poly:0"],
                                 ["--sharing", "groups:0"], ["--device", "cuda:7"] if not torch.cuda.is_available()
                                 else ["--sharing", "hat:-1"]])
def test_overwrite_with_a_bad_setting_keeps_the_previous_run(finished, bad):
    before = _snapshot(finished)
    code, _, err = cli("search", *TINY, "--out", str(finished), "--overwrite", *bad)
    one_line_error(code, err, "error:")
    assert _snapshot(finished) == before
    assert not list(finished.parent.glob(f".{finished.name}.replaced-*"))


def test_overwrite_restores_the_previous_run_when_the_new_one_fails_before_its_first_checkpoint(finished, tmp_path):
    before = _snapshot(finished)
    diverging = tmp_path / "lr.yaml"
    diverging.write_text("lr: 1.0e+30\nmax_bad_steps: 1\n")  # finite, so accepted; the run diverges
    code, _, err = cli("search", *TINY, "--config", str(diverging), "--out", str(finished), "--overwrite",
                        "--no-retrain", "--compare", "")
    one_line_error(code, err, "non-finite steps in a row")
    assert _snapshot(finished) == before
    assert not list(finished.parent.glob(f".{finished.name}.replaced-*"))


def test_overwrite_replaces_the_whole_folder_once_the_new_run_runs(tmp_path):
    out = tmp_path / "run"
    assert cli("baseline", "ce", *TINY, "--out", str(out))[0] == 0
    (out / "stale.png").write_bytes(b"old plot")
    code, _, err = cli("baseline", "ce", *TINY, "--seed", "1", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert not (out / "stale.png").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1
    assert json.loads((out / "policy.json").read_text())["provenance"]["seed"] == 1
    assert not list(tmp_path.glob(".run.replaced-*"))


# 2. one-line errors for wrong types and damaged run folders --------------------------------------
@pytest.mark.parametrize("text,needle", [
    ('epochs: "three"', "config key 'epochs' must be a whole number"),
    ("epochs: 1.5", "config key 'epochs' must be a whole number"),
    ('lr: "fast"', "config key 'lr' must be a number"),
    ("device: 5", "config key 'device' must be a string"),
    ("sharing: 3", "config key 'sharing' must be a string"),
    ("milestones: 0.5", "config key 'milestones' must be a list"),
    ("engine_options: [1, 2]", "config key 'engine_options' must be a mapping"),
    ("amp: maybe", "config key 'amp' must be true or false"),
    ("learn: tau_typo", "unknown --learn 'tau_typo'"),
])
def test_wrong_types_in_a_config_file(tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text + "\n")
    code, _, err = cli("search", "--config", str(cfg), "--out", str(tmp_path / "r"))
    one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()


def test_a_string_learn_is_one_name_and_whole_floats_are_ints():
    cfg = Config.from_dict({"learn": "logit_bias", "epochs": 2.0})
    assert cfg.learn == ("logit_bias",) and cfg.epochs == 2 and isinstance(cfg.epochs, int)
    assert Config.from_dict({"learn": "logit_bias, logit_scale"}).learn == ("logit_bias", "logit_scale")


@pytest.mark.parametrize("command", ["resume", "retrain", "evaluate"])
def test_damaged_config_yaml_in_a_run_folder(finished, tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("result.json", "policy.json"):
        (run / name).write_bytes((finished / name).read_bytes())
    (run / "search").mkdir()
    (run / "search" / "checkpoint.pt").write_bytes((finished / "search" / "checkpoint.pt").read_bytes())
    (run / "config.yaml").write_text("epochs: [unclosed\n")
    args = {"resume": ["search", "--out", str(run), "--resume"],
            "retrain": ["retrain", str(run), "--out", str(tmp_path / "re")],
            "evaluate": ["evaluate", str(run)]}[command]
    one_line_error(*cli(*args)[::2], "config.yaml is damaged")
    (run / "config.yaml").write_text("epochs: three\n")
    one_line_error(*cli(*args)[::2], "config.yaml is damaged", "'epochs'")
    assert not (tmp_path / "re").exists()


# 3. a failed start does not block the corrected command ------------------------------------------
def test_a_failed_start_leaves_nothing_that_blocks_the_fixed_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out runs/search
    code, _, err = cli("baseline", "ce", *TINY, "--out", "runs/search", "--sharing", "poly:0")
    one_line_error(code, err, "poly:0")
    assert not Path("runs/search").exists()
    diverging = tmp_path / "lr.yaml"
    diverging.write_text("lr: 1.0e+30\nmax_bad_steps: 1\n")  # diverges inside the first epoch, folder claimed
    code, _, err = cli("baseline", "ce", *TINY, "--config", str(diverging), "--out", "runs/search")
    one_line_error(code, err, "non-finite")
    code, _, err = cli("baseline", "ce", *TINY, "--out", "runs/search")
    assert code == 0, err


# 4. nonsense that used to be accepted -------------------------------------------------------------
def test_one_class_data_is_refused():
    one = ImageData(torch.zeros(8, 3, 8, 8, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ["only"])
    with pytest.raises(ValueError, match="at least two"):
        check_inputs(Config(), DatasetBundle("one", one, one, (0.5,) * 3, (0.25,) * 3))


@pytest.mark.parametrize("spec", ["poly:0", "groups:0", "hat:-2", "per_class:4", "poly:x"])
def test_sharing_sizes_below_one_are_refused(tmp_path, spec):
    code, _, err = cli("search", "--sharing", spec, "--out", str(tmp_path / "r"))
    one_line_error(code, err, f"bad sharing spec {spec!r}")


# 5. one writer per run folder ---------------------------------------------------------------------
def test_a_second_writer_is_refused_while_a_run_holds_the_folder(finished):
    before = _snapshot(finished)
    with lock_run_folder(finished):
        code, _, err = cli("search", "--out", str(finished), "--resume")
        one_line_error(code, err, "is in use by another ab-plugin run", f"pid {os.getpid()}")
    assert _snapshot(finished) == before
    assert len((finished / "search" / "metrics.jsonl").read_text().splitlines()) == 1


# 6. non-finite values -----------------------------------------------------------------------------
def test_a_policy_value_beyond_float32_is_refused_before_the_run(finished, tmp_path):
    pol = json.loads((finished / "policy.json").read_text())
    pol["loss"]["logit_bias"][3] = 1e308
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(pol))
    code, _, err = cli("retrain", str(path), *TINY, "--out", str(tmp_path / "re"))
    one_line_error(code, err, "logit_bias[3]", "float32")
    assert not (tmp_path / "re").exists()


def test_a_run_whose_steps_were_mostly_skipped_fails_loudly(tmp_path):
    diverging = tmp_path / "lr.yaml"
    diverging.write_text("lr: 1.0e+30\nmax_bad_steps: 1000\n")  # finite, so accepted; the run diverges
    out = tmp_path / "r"
    code, _, err = cli("baseline", "ce", *TINY, "--config", str(diverging), "--out", str(out))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err
    assert any(ln.startswith("warning: stage baseline-ce skipped") for ln in lines)
    assert lines[-1].startswith("error: stage baseline-ce skipped most of its steps")
    stage = json.loads((out / "result.json").read_text())["stages"]["baseline-ce"]
    assert stage["skipped_steps"] > stage["steps"] / 2


# 7. --resume remembers --compare and --no-retrain ------------------------------------------------
def test_resume_keeps_compare_and_no_retrain(finished):
    before = (finished / "result.json").read_bytes()
    code, out, err = cli("search", "--out", str(finished), "--resume", "--quiet", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["final"] == "search"
    assert not (finished / "retrain").exists() and not list(finished.glob("baseline-*"))
    assert json.loads(before) == json.loads((finished / "result.json").read_bytes())
    # asking for something else on resume is a different run
    code, _, err = cli("search", "--out", str(finished), "--resume", "--compare", "ce")
    one_line_error(code, err, "different configuration")


# 8. ordinary file permissions -----------------------------------------------------------------
def test_outputs_follow_the_umask(finished):
    for name in ("result.json", "policy.json", "config.yaml", "search/checkpoint.pt", "per_class_error.png"):
        mode = stat.S_IMODE((finished / name).stat().st_mode)
        assert mode == 0o666 & ~_umask(), (name, oct(mode))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# 9. messages that say what happened ---------------------------------------------------------------
def test_ctrl_c_says_whether_anything_was_saved(tmp_path):
    for started, needle in ((False, "nothing of this run was saved"), (True, "continue with --resume")):
        out = tmp_path / f"r{started}"
        with pytest.raises(KeyboardInterrupt, match=needle), run_folder(out, Config(), command="search"):
            if started:
                (out / "search").mkdir()
                (out / "search" / "checkpoint.pt").write_bytes(b"x")
            raise KeyboardInterrupt


def test_an_unreadable_checkpoint_names_the_real_remedy(tmp_path):
    from ab_plugin.io import CheckpointError, load_checkpoint

    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert "previous one" not in str(e.value) and "restart that stage from its first epoch" in str(e.value)


def test_an_unreadable_jpeg_is_named_without_object_addresses(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / cls / "ok.png")
    (tmp_path / "train" / "b" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = cli("search", "--dataset", f"imagefolder:{tmp_path}", "--imbalance", "1",
                        "--out", str(tmp_path / "r"))
    line = one_line_error(code, err, "zz_broken.jpg")
    assert " at 0x" not in line and "object" not in line


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    from ab_plugin import io

    full = os.statvfs_result((4096, 4096, 100, 0, 0, 100, 0, 0, 0, 255))
    monkeypatch.setattr(io.os, "statvfs", lambda p: full)

    def torch_like_writer(f):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    with pytest.raises(OSError, match="no space left to write .*checkpoint.pt"):
        io.atomic_write(tmp_path / "checkpoint.pt", torch_like_writer)
    assert list(tmp_path.iterdir()) == []


# 10. size limit of policy files ---------------------------------------------------------------------
def test_an_oversized_policy_file_is_refused_without_reading_it(finished, tmp_path):
    from ab_plugin.policies._file import MAX_POLICY_BYTES

    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.write((finished / "policy.json").read_bytes()[:-2])
        f.write(b" " * (MAX_POLICY_BYTES + 1) + b"}\n")
    code, _, err = cli("show", str(big))
    one_line_error(code, err, "MiB limit of a policy file")
