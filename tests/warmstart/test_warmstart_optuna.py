"""Optuna warm start on the embedded digits-lt data: real studies in SQLite / journal files, real proxy searches.

Trials are tiny (resnet20, 2-3 epochs, batch 16; ~0.5-2 s each). The CLI runs in subprocesses for the crash and
multi-worker tests (``python -m ab_plugin.warmstart``, the same click command ``ab-plugin warmstart`` registers).
A PostgreSQL test runs when ``AB_PLUGIN_TEST_POSTGRES_URL`` names a reachable server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

from ab_plugin import Config
from ab_plugin.warmstart import SearchSpace, load_warmstart_study, run_warmstart, warmstart_command, warmstart_config
from ab_plugin.warmstart._names import STUDY_DB
from ab_plugin.warmstart.pruning import create_pruner
from ab_plugin.warmstart.space import params_to_config
from ab_plugin.warmstart.storage import open_storage, resolve_storage
from ab_plugin.warmstart.summary import best_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
TS = optuna.trial.TrialState
FINISHED = (TS.COMPLETE, TS.PRUNED)

# a proxy search that learns within one epoch (so that validation errors differ and the pruner can act)
LEARNS = Config(backbone="resnet20", epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.5, upper_start=0.0,
                device="cpu")
# the fastest useful proxy (106 training images): for the process tests, where only bookkeeping matters
FAST = LEARNS.replace(epochs=2, n_max=40)
FAST_ARGS = ["--backbone", "resnet20", "--epochs", "2", "--n-max", "40", "--batch-size", "16", "--lr", "0.05",
             "--warmup-epochs", "0.5", "--upper-start", "0", "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: the 2 shared cores are often busy, and oversubscribed threads slow trials tenfold."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _args(out: Path, *extra: str) -> list[str]:
    """The ``ab-plugin warmstart`` options of the process tests."""
    return [*FAST_ARGS, "--out", str(out), "--quiet", "--format", "json", *extra]


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ab_plugin.warmstart", *_args(out, *extra)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _study(out: Path) -> optuna.Study:
    return load_warmstart_study(out)


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory):
    """4 trials of 2 epochs, a percentile pruner at the 1st percentile after one startup trial: every trial whose
    error after epoch 1 is above the best one's so far is stopped there."""
    out = tmp_path_factory.mktemp("ws") / "prune"
    result = run_warmstart(LEARNS, out, n_trials=4, trial_epochs=2, pruner="percentile:1", pruner_startup=1)
    return out, result


def test_trials_are_pruned_early_and_the_study_completes(pruned_study):
    out, result = pruned_study
    study = result.study
    trials = study.get_trials(deepcopy=False)
    assert len(_finished(study)) == 4 == len(trials)
    pruned = [t for t in trials if t.state == TS.PRUNED]
    assert pruned, [(t.number, t.state, t.intermediate_values) for t in trials]
    for t in pruned:  # stopped after epoch 1 of 2: the pruner saved the rest of the run
        assert sorted(t.intermediate_values) == [1]
    complete = [t for t in trials if t.state == TS.COMPLETE]
    assert complete and all(sorted(t.intermediate_values) == [1, 2] for t in complete)
    # the known-good points came first, LA τ = 1 as trial 0, with the base upper_lr / val_fraction
    base = {"upper_lr": LEARNS.upper_lr, "val_fraction": LEARNS.val_fraction}
    assert trials[0].params == {"init": "la", "tau": 1.0, **base}
    assert [t.params["init"] for t in trials[:3]] == ["la", "vs", "cdt"]


def test_summary_json_and_plots(pruned_study):
    out, result = pruned_study
    summary = json.loads((out / "warmstart.json").read_text())
    assert summary["states"]["complete"] + summary["states"]["pruned"] == summary["finished"] == 4
    assert summary["best"]["number"] == optuna.load_study(study_name="prune", storage=f"sqlite:///{out / STUDY_DB}"
                                                          ).best_trial.number
    assert summary["storage_kind"] == "sqlite" and summary["study_name"] == "prune"
    assert (out / "optuna_history.png").stat().st_size > 1000
    assert (out / "optuna_intermediate.png").exists()
    # importances need two complete trials whose parameters and values vary: drawn or skipped with a reason
    assert (out / "optuna_importances.png").exists() or "importances" in summary["plots_skipped"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["command"] == "warmstart" and cfg["backbone"] == "resnet20"


def test_warmstart_config_carries_the_best_trial_into_the_search(pruned_study, tmp_path):
    from ab_plugin.runs import prepare_run_folder

    out, result = pruned_study
    best = result.study.best_trial
    base = Config(backbone="resnet20", epochs=4, init="neutral", upper_lr=0.05, val_fraction=0.3, tau=0.0, gamma=0.0)
    cfg = warmstart_config(base, str(out), storage=None, out=tmp_path / "search")
    _assert_settings(cfg.to_dict(), best.params)
    assert cfg.epochs == 4 and cfg.backbone == "resnet20"  # the rest of the search's config is kept
    # what `ab-plugin search --warmstart <folder>` saves: the refined search starts from the best settings
    prepare_run_folder(tmp_path / "search", cfg, resume=False, overwrite=False, command="search")
    _assert_settings(yaml.safe_load((tmp_path / "search" / "config.yaml").read_text()), best.params)


def test_search_cli_warmstart_option_if_registered(pruned_study, tmp_path):
    """Runs once `ab-plugin search --warmstart` exists (cli.py registers it); skipped before."""
    from ab_plugin.cli import main

    search = main.commands["search"]
    if "warmstart" not in {p.name for p in search.params}:
        pytest.skip("ab-plugin search has no --warmstart option yet (registered in cli.py by its owner)")
    out, result = pruned_study
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["search", "--warmstart", str(out), "--backbone", "resnet20", "--epochs", "1",
                                    "--device", "cpu", "--no-retrain", "--compare", "", "--quiet", "--out", str(run),
                                    "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    _assert_settings(saved, result.study.best_trial.params)


def test_search_warmstart_trains_on_the_studys_data_and_model(pruned_study, tmp_path):
    """The `next:` line the warm start prints, as it is: the study's backbone and schedule, not the defaults."""
    from ab_plugin.cli import main

    out, result = pruned_study
    study_cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (study_cfg["backbone"], study_cfg["batch_size"]) != (Config().backbone, Config().batch_size)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["search", "--warmstart", str(out), "--epochs", "1", "--no-retrain", "--compare",
                                    "", "--quiet", "--out", str(run), "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("dataset", "backbone", "batch_size", "lr", "n_max", "upper_start"):
        assert saved[key] == study_cfg[key], key
    assert saved["epochs"] == 1  # an option given here still wins
    _assert_settings(saved, result.study.best_trial.params)


def _assert_settings(cfg: dict, params: dict) -> None:
    for k, v in params.items():
        assert cfg[k] == v if isinstance(v, str) else cfg[k] == pytest.approx(v), k


def test_warmstart_config_with_a_number_runs_a_fresh_study_first(tmp_path):
    base = FAST.replace(epochs=2)
    cfg = warmstart_config(base, "2", storage=None, out=tmp_path / "run")
    study = _study(tmp_path / "run" / "warmstart")
    assert study.study_name == "run-warmstart" and len(_finished(study)) == 2 == len(study.trials)
    assert params_to_config(base, study.best_trial.params) == cfg
    # a second call (a resumed search) reuses the finished study instead of running more trials
    assert warmstart_config(base, "2", storage=None, out=tmp_path / "run") == cfg
    assert len(study.get_trials(deepcopy=False)) == 2


def test_journal_storage_resumes_without_duplicating_enqueued_points(tmp_path):
    out = tmp_path / "j"
    run_warmstart(FAST, out, n_trials=2, storage="journal", pruner="none", plots=False)
    assert (out / "study.journal").exists() and not (out / STUDY_DB).exists()
    result = run_warmstart(FAST, out, n_trials=4, storage="journal", pruner="none", plots=False)
    trials = result.study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state == TS.COMPLETE for t in trials)
    assert sum(t.params == SearchSpace().known_good(FAST)[0] for t in trials) == 1
    assert len(load_warmstart_study(out).trials) == 4


def test_killed_worker_resumes_from_the_stored_trials(tmp_path):
    out = tmp_path / "crash"
    cmd = _cli(out, "--n-trials", "4", "--pruner", "none")
    err = tmp_path / "worker.err"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    before: list[optuna.trial.FrozenTrial] = []
    storage = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / STUDY_DB).exists():
                # open_storage, not a bare load_study: this poll races the worker to create the tables, and only
                # the product's opener retries that race (a bare RDBStorage failed CI with "table already exists")
                storage = storage or open_storage(resolve_storage(None, out))
                try:
                    before = optuna.load_study(study_name="crash", storage=storage).get_trials(states=FINISHED)
                except KeyError:  # the study is not created yet
                    before = []
                if before:
                    break
            time.sleep(0.05)
        assert before, f"no trial finished in 60 s: {err.read_text()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = optuna.load_study(study_name="crash", storage=storage).get_trials()  # opened: a trial finished
    done_before = {t.number: t.value for t in killed if t.state in FINISHED}
    interrupted = [t.number for t in killed if t.state == TS.RUNNING]  # the kill's zombie (if it hit a trial)
    assert 1 <= len(done_before) < 4 and len(interrupted) <= 1

    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    study = _study(out)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 4 == summary["finished"]  # the target counts the trials of both runs
    assert {t.number: t.value for t in finished if t.number in done_before} == done_before  # kept, not redone
    assert not [t for t in trials if t.state in (TS.RUNNING, TS.WAITING)]
    # the trial the kill interrupted is failed (its process is gone), never left running or counted
    assert [t.number for t in trials if t.state == TS.FAIL] == interrupted
    # the restart added trials after the stored ones: numbering continues, nothing is renumbered
    new = [t.number for t in trials if t.number not in {k.number for k in killed}]
    assert new and min(new) > max(k.number for k in killed)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # the known-good points were enqueued once, by the first run only; a point the kill interrupted is retried
    points = SearchSpace().known_good(FAST)
    enqueued = [t for t in trials if "fixed_params" in t.system_attrs and "ab_plugin.retry_of" not in t.user_attrs]
    assert len(enqueued) == len(points) == 3
    for point in points:
        assert sum(t.params == point for t in finished) == 1, point
    assert trials[0].params == points[0] and trials[0].state == TS.COMPLETE


# the ``ab-plugin warmstart`` command, run once ``argv[1]`` holds one file per worker (2)
_AT_BARRIER = """
import sys, time, pathlib
from ab_plugin.warmstart import warmstart_command
barrier = pathlib.Path(sys.argv[1])
(barrier / sys.argv[2]).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.01)
warmstart_command.main(sys.argv[3:], prog_name="ab-plugin warmstart")
"""


def test_two_workers_share_one_sqlite_study(tmp_path):
    out, barrier = tmp_path / "shared", tmp_path / "barrier"
    barrier.mkdir()
    # full-size proxies (363 images, ~1 s a trial). Both workers meet at a barrier after their imports, so that a
    # slow interpreter start cannot let one of them finish the study before the other joins.
    args = _args(out, "--n-trials", "6", "--pruner", "median", "--pruner-startup", "2", "--n-max", "144")
    procs = [subprocess.Popen([sys.executable, "-c", _AT_BARRIER, str(barrier), str(i), *args], cwd=tmp_path,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    study = _study(out)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    numbers = [t.number for t in trials]
    assert len(finished) == 6  # the total target, exactly
    assert len(set(numbers)) == len(numbers) and sorted(numbers) == list(range(len(numbers)))  # none lost
    # anything else can only be a surplus claim that lost a race (never run, not counted)
    assert all(t.state in FINISHED or t.user_attrs.get("ab_plugin.surplus") for t in trials)
    workers = {t.user_attrs["ab_plugin.worker"].split(":")[1] for t in finished}
    assert len(workers) == 2, "both workers ran trials"
    assert sum("fixed_params" in t.system_attrs for t in trials) == 3  # enqueued once, by the creator
    # the two workers did not sample the same points
    sampled = [json.dumps(t.params, sort_keys=True) for t in finished if "fixed_params" not in t.system_attrs]
    assert len(set(sampled)) == len(sampled)


def test_bad_input_gives_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown --pruner 'mean'"):
        create_pruner("mean", max_resource=3)
    with pytest.raises(ValueError, match="percentile:P needs 0 < P < 100"):
        create_pruner("percentile:150", max_resource=3)
    with pytest.raises(ValueError, match="unknown --storage 'sqlit'"):
        resolve_storage("sqlit", tmp_path)
    with pytest.raises(ValueError, match="bad --storage URL"):
        resolve_storage("postgresql://user@host:notaport/db", tmp_path)
    with pytest.raises(ValueError, match="unsupported --storage backend 'oracle'"):
        resolve_storage("oracle://u:p@h/db", tmp_path)
    assert "secret" not in resolve_storage("postgresql://u:secret@h:5432/db", tmp_path).display
    with pytest.raises(ValueError, match="neither a number of trials nor a warmstart run folder"):
        warmstart_config(FAST, "no-such-study", storage=None, out=tmp_path)
    with pytest.raises(ValueError, match="holds no study"):
        warmstart_config(FAST, str(tmp_path), storage=None, out=tmp_path)
    with pytest.raises(ValueError, match="needs N >= 1"):
        warmstart_config(FAST, "0", storage=None, out=tmp_path)
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="study 'missing' not found in .*choose one of other"):
        warmstart_config(FAST, "missing", storage=str(tmp_path / "x.db"), out=tmp_path)
    with pytest.raises(ValueError, match="has no complete trial yet"):
        warmstart_config(FAST, "other", storage=str(tmp_path / "x.db"), out=tmp_path)
    with pytest.raises(ValueError, match="unknown --inits"):
        SearchSpace(inits=("la", "ldam")).validate()

    runner = CliRunner()
    for args, msg in ((["--pruner", "mean"], "error: unknown --pruner 'mean'"),
                      (["--storage", "mongodb"], "error: unknown --storage 'mongodb'"),
                      (["--storage", f"sqlite:///{tmp_path}"], "error: cannot open --storage "),
                      (["--storage", "postgresql://ab:pw@127.0.0.1:1/optuna"], "error: "),
                      (["--inits", "la,focal"], "error: unknown --inits focal")):
        res = runner.invoke(warmstart_command, [*FAST_ARGS, "--out", str(tmp_path / "cli"), "--quiet", *args])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(msg), res.output
        assert "pw" not in res.output


def test_workers_with_different_settings_are_refused(tmp_path):
    out = tmp_path / "s"
    run_warmstart(FAST, out, n_trials=1, pruner="none", plots=False)
    with pytest.raises(ValueError, match=r"other settings \(lr 0.05 -> 0.2\)"):
        run_warmstart(FAST.replace(lr=0.2), out, n_trials=2, pruner="none", plots=False)
    # the device may differ between machines
    assert run_warmstart(FAST.replace(device="auto"), out, n_trials=1, plots=False).summary["finished"] == 1


POSTGRES = os.environ.get("AB_PLUGIN_TEST_POSTGRES_URL")


def _postgres_skip_reason() -> str | None:
    if not POSTGRES:
        return "AB_PLUGIN_TEST_POSTGRES_URL is not set (e.g. postgresql://ab:ab@127.0.0.1:5432/ab_test)"
    try:
        open_storage(resolve_storage(POSTGRES, Path.cwd())).get_all_studies()
    except Exception as e:  # no driver, unreachable server, bad credentials
        return f"PostgreSQL at AB_PLUGIN_TEST_POSTGRES_URL is not usable: {str(e).splitlines()[0]}"
    return None


@pytest.mark.skipif(_postgres_skip_reason() is not None, reason=str(_postgres_skip_reason()))
def test_postgresql_storage_two_workers_and_warmstart_by_name(tmp_path):
    name = f"ab-test-{uuid.uuid4().hex[:8]}"
    try:
        cmd = _cli(tmp_path / "pg", "--n-trials", "4", "--pruner", "none", "--study-name", name, "--storage",
                   POSTGRES)
        procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=180) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        study = optuna.load_study(study_name=name, storage=resolve_storage(POSTGRES, tmp_path).target)
        trials = study.get_trials()
        assert len([t for t in trials if t.state in FINISHED]) == 4
        assert len({t.number for t in trials}) == len(trials)
        assert sum("fixed_params" in t.system_attrs for t in trials) == 3
        cfg = warmstart_config(Config(), name, storage=POSTGRES, out=tmp_path)
        # tiny proxies can tie, and PostgreSQL returns tied best trials in no set order: warmstart_config takes
        # the earliest of them (best_trial), which must be a best one
        best = best_trial(study)
        assert best.value == study.best_value
        assert cfg.init == best.params["init"]
        assert cfg.upper_lr == pytest.approx(best.params["upper_lr"])
    finally:
        try:
            optuna.delete_study(study_name=name, storage=resolve_storage(POSTGRES, tmp_path).target)
        except KeyError:
            pass
