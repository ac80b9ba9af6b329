"""Run folders keep every promise README makes, through the real `ab-plugin` CLI: an interrupted --overwrite
is settled (old run restored, or its hidden copy deleted), checkpoints are checksummed, a folder is locked
through any symlink to it, one command never takes another's folder, and resuming a finished run changes
no file."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import cli, one_line_error

from ab_plugin.config import Config
from ab_plugin.io import CheckpointError, load_checkpoint, save_checkpoint
from ab_plugin.runs import lock_run_folder, run_folder

TINY = ["--backbone", "resnet20", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--quiet"]




def _files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder``: sha256 and modification time (ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _sums(folder: Path) -> dict[str, str]:
    return {k: v[0] for k, v in _files(folder).items()}


def _asides(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.replaced-*"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished search (no retrain, no baselines); tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("folders") / "run"
    code, _, err = cli("search", *TINY, "--out", str(out), "--no-retrain", "--compare", "")
    assert code == 0, err
    return out


@pytest.fixture
def run(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ab_plugin.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(cond, p: subprocess.Popen, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.005)


# 1. an interrupted --overwrite ----------------------------------------------------------------------
def test_overwrite_killed_before_its_first_checkpoint_gives_the_old_run_back(run):
    before = _sums(run)
    p = _spawn("search", *TINY, "--epochs", "3", "--seed", "1", "--no-retrain", "--compare", "",
               "--out", str(run), "--overwrite")
    _wait_for(lambda: bool(_asides(run)), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not list(run.glob("*/checkpoint.pt")), "killed too late: the new run had a checkpoint"
    assert _asides(run)  # what the kill leaves: the old run hidden, the new one without a checkpoint
    code, out, err = cli("evaluate", str(run), "--format", "json")  # the next command settles it
    assert code == 0, err
    assert f"warning: restored the earlier run in {run.resolve()}" in err
    assert _sums(run) == before and not _asides(run)


def test_overwrite_deletes_the_old_run_once_the_new_one_has_a_checkpoint(run):
    p = _spawn("search", *TINY, "--epochs", "400", "--seed", "1", "--no-retrain", "--compare", "",
               "--out", str(run), "--overwrite")

    def new_run_checkpointed() -> bool:  # the new run's own checkpoint (not the old run's, before the move)
        cfg = run / "config.yaml"
        return cfg.exists() and yaml.safe_load(cfg.read_text())["seed"] == 1 and (run / "search" / "checkpoint.pt"
                                                                                 ).exists()

    _wait_for(new_run_checkpointed, p)
    _wait_for(lambda: not _asides(run), p, timeout=30)
    assert not (run / "search" / "result.json").exists()  # deleted while the search runs, not at its end
    p.send_signal(signal.SIGKILL)
    p.wait()
    code, _, err = cli("evaluate", str(run), "--stage", "search")
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 1 and not _asides(run)


def test_a_stale_hidden_copy_beside_a_started_run_is_deleted_by_the_next_command(run, finished, tmp_path):
    aside = run.with_name(f".{run.name}.replaced-999999")
    shutil.copytree(finished, aside)  # as left by an --overwrite killed after its first checkpoint
    before = _sums(run)
    code, _, err = cli("search", "--out", str(run), "--resume", "--quiet")
    assert code == 0, err
    assert not aside.exists() and _sums(run) == before


def test_a_run_holding_the_folder_keeps_its_hidden_copy(run, finished):
    aside = run.with_name(f".{run.name}.replaced-999999")
    shutil.copytree(finished, aside)
    with lock_run_folder(run):
        assert cli("evaluate", str(run))[0] == 0  # a reader does not settle a folder in use
    assert aside.exists()


def test_the_hidden_copy_goes_as_soon_as_the_new_run_checkpoints(run):
    with run_folder(run, Config(seed=5), command="search", overwrite=True):
        (aside,) = _asides(run)
        (run / "search").mkdir()
        save_checkpoint(run / "search" / "checkpoint.pt", {"epoch": 1})
        t0 = time.monotonic()
        while aside.exists() and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert not aside.exists()  # inside the block: the run goes on without the old copy


# 6. checksummed checkpoints ---------------------------------------------------------------------------
def test_a_checkpoint_stays_a_plain_torch_file_and_any_damage_is_found(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = {"w": torch.randn(64, 64), "epoch": 3}
    save_checkpoint(path, state)
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])
    assert torch.equal(load_checkpoint(path)["w"], state["w"])
    good = path.read_bytes()
    g = torch.Generator().manual_seed(0)
    for at in (0, len(good) // 3, len(good) // 2, len(good) - 4096 - 100):
        noise = bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist())
        path.write_bytes(good[:at] + noise + good[at + 4096:])
        with pytest.raises(CheckpointError, match=f"checkpoint {path} is damaged") as e:
            load_checkpoint(path)
        assert "\n" not in str(e.value) and "delete it" in str(e.value)


def test_resume_refuses_a_damaged_checkpoint_and_writes_no_result(run):
    for name in ("result.json", "policy.json", "search/result.json"):
        (run / name).unlink()  # the search stage is unfinished: --resume loads its checkpoint
    ck = run / "search" / "checkpoint.pt"
    data = bytearray(ck.read_bytes())
    assert len(data) > 3 * 4096
    data[len(data) // 2:len(data) // 2 + 4096] = os.urandom(4096)
    ck.write_bytes(bytes(data))
    before = _sums(run)
    code, _, err = cli("search", "--out", str(run), "--resume", "--quiet")
    one_line_error(code, err, str(ck), "checksum does not match", "delete it")
    assert _sums(run) == before and not (run / "result.json").exists() and not (run / "policy.json").exists()
    code, _, err = cli("evaluate", str(run), "--stage", "search")
    one_line_error(code, err, str(ck), "checksum does not match")


# 4. the lock is on the folder, whatever path names it ---------------------------------------------------
def test_a_symlink_to_a_folder_in_use_is_refused(run, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(run)
    before = _sums(run)
    with lock_run_folder(run):
        code, _, err = cli("search", "--out", str(alias), "--resume", "--quiet")
        one_line_error(code, err, "is in use by another ab-plugin run", f"pid {os.getpid()}")
    with lock_run_folder(alias):
        code, _, err = cli("search", "--out", str(run), "--resume", "--quiet")
        one_line_error(code, err, "is in use by another ab-plugin run")
    assert _sums(run) == before and alias.is_symlink()


def test_overwrite_through_a_symlink_replaces_the_folder_and_keeps_the_link(run, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(run)
    code, _, err = cli("baseline", "ce", *TINY, "--out", str(alias), "--overwrite")
    assert code == 0, err
    assert alias.is_symlink() and alias.resolve() == run.resolve()
    assert yaml.safe_load((run / "config.yaml").read_text())["command"] == "baseline ce"
    assert not (run / "search").exists() and not _asides(run) and not _asides(alias)


# 3. one command never takes another's folder ----------------------------------------------------------
def test_warmstart_refuses_a_search_run_folder(run):
    before = _sums(run)
    code, _, err = cli("warmstart", *TINY, "--n-trials", "1", "--out", str(run))
    one_line_error(code, err, f"run folder {run} holds a `search` run, not a `warmstart` one")
    assert _sums(run) == before
    code, _, err = cli("search", "--out", str(run), "--resume", "--quiet")
    assert code == 0, err


@pytest.mark.parametrize("args", [["search", "--resume"], ["search"], ["baseline", "ce"]])
def test_a_run_command_refuses_a_warmstart_folder(tmp_path, args):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "config.yaml").write_text(yaml.safe_dump({"command": "warmstart", **Config().to_dict()}))
    (ws / "study.db").write_bytes(b"SQLite format 3\0")
    before = _sums(ws)
    code, _, err = cli(*args, *TINY, "--out", str(ws))
    one_line_error(code, err, f"run folder {ws} holds a `warmstart` run, not a")
    assert _sums(ws) == before


# 7. resuming a finished run changes nothing ------------------------------------------------------------
def test_resume_of_a_finished_run_rewrites_no_file(run):
    before = _files(run)
    time.sleep(1.1)  # a rewritten policy.json would get another `created` second
    code, out, err = cli("search", "--out", str(run), "--resume", "--quiet", "--format", "json")
    assert code == 0, err
    assert _files(run) == before
