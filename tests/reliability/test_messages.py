"""One-line messages for damaged study files and read-only policy folders, through the real `ab-plugin` CLI."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from ab_plugin import io
from ab_plugin.cli import main

REPO = Path(__file__).resolve().parents[2]
ZOO_POLICY = REPO / "policies" / "zoo" / "cifar10-lt_100_resnet32.json"


def _cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# 10. a journal storage with junk lines ----------------------------------------------------------------
def test_a_damaged_journal_names_the_file_and_the_line(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    out = tmp_path / "ws"
    out.mkdir()
    journal = out / "study.journal"
    study = optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))),
                                study_name="ws")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2] + [b"\x00\x01 not json\n"] + lines[2:]))
    before = _sha(journal)
    code, _, err = _cli("warmstart", "--backbone", "resnet20", "--epochs", "1", "--device", "cpu", "--quiet",
                        "--storage", "journal", "--n-trials", "3", "--out", str(out))
    lines_err = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert lines_err[-1].startswith(f"error: --storage {journal.resolve()}: the journal file is damaged (line 3 "
                                    "is not a journal entry"), err
    assert "restore it from a copy" in lines_err[-1]
    assert _sha(journal) == before


# 10. `show` of a policy in a read-only folder ------------------------------------------------------------
@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder that cannot be written: chmod 0555, and for root (who writes anyway) a refusing file system."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    shutil.copy(ZOO_POLICY, folder / "policy.json")
    folder.chmod(0o555)
    real_mkstemp = io.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(io.tempfile, "mkstemp", mkstemp)
    yield folder
    folder.chmod(0o755)


def test_show_of_a_policy_in_a_read_only_folder_warns_and_shows_it(read_only):
    before = _sha(read_only / "policy.json")
    code, _, err = _cli("show", str(read_only / "policy.json"))
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert warnings == [f"warning: heat map not written: {read_only} cannot be written (Read-only file system); "
                        "pass --heatmap PATH to write it elsewhere"] or (
        os.geteuid() != 0 and len(warnings) == 1 and "heat map not written" in warnings[0]), err
    assert "heat map:" not in err and "│ cat" in err  # the table is shown
    assert sorted(p.name for p in read_only.iterdir()) == ["policy.json"]
    assert _sha(read_only / "policy.json") == before


def test_show_writes_an_asked_heat_map_with_ordinary_permissions_and_refuses_an_unwritable_one(read_only, tmp_path):
    png = tmp_path / "maps" / "heat.png"
    code, _, err = _cli("show", str(read_only / "policy.json"), "--heatmap", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600
    code, _, err = _cli("show", str(read_only / "policy.json"), "--heatmap", str(read_only / "heat.png"))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: "), err
    assert sorted(p.name for p in read_only.iterdir()) == ["policy.json"]


# 21. the results table fits 80 columns --------------------------------------------------------------------
def test_the_results_table_fits_80_columns_with_whole_method_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli("baseline", "ldam-drw", "--backbone", "resnet20", "--epochs", "1", "--batch-size", "64",
                        "--device", "cpu", "--quiet", "--out", "r")
    assert code == 0, err
    table = err[:err.index("Per class")]
    assert "│ baseline-ldam-drw │" in table and "…" not in table, table
    assert all(len(line) <= 80 for line in table.splitlines()), table
    for header in ("method", "acc", "bal", "worst", "many", "med", "few", "time s", "worst-class error"):
        assert header in table, header
