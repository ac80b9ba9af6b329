"""Run folders: what a search / retrain / baseline writes, how a run resumes, how it is refused.

Layout of ``--out DIR``::

    config.yaml         resolved configuration (what was asked + defaults)
    search/             checkpoint.pt, metrics.jsonl, result.json   (bilevel search)
    retrain/            checkpoint.pt, metrics.jsonl, result.json   (α fixed, train + val)
    baseline-NAME/      checkpoint.pt, metrics.jsonl, result.json
                        stage2.pt in any of them: a finished --stage2 (its classifier, α, what it chose)
    result.json         summary: α*, metrics (test balanced error under ``balanced_error``)
    policy.json         the exported policy file
    *.png               plots
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from .config import Config
from .data import DatasetBundle, create_dataset
from .distributed import barrier, is_rank_zero
from .inputs import crop_size
from .io import atomic_write, write_json
from .search import AutoBalance, RunResult, retrain, train_baseline
from .warmstart._names import STUDY_DB, STUDY_JOURNAL
from .warmstart._names import SUMMARY as WARMSTART_SUMMARY

RESULT = "result.json"
CONFIG = "config.yaml"
POLICY = "policy.json"
PLOTS = ("per_class_error.png", "alpha_vs_frequency.png", "alpha_trajectory.png", "augmentation_movement.png",
         "augmentation_levels.png")


class RunFolderError(ValueError):
    pass


def load_bundle(cfg: Config, download: bool = False) -> DatasetBundle:
    return create_dataset(cfg.dataset, data_dir=cfg.data_dir, imbalance=cfg.imbalance, profile=cfg.profile,
                          n_max=cfg.n_max, download=download, image_size=cfg.image_size, crop_size=crop_size(cfg))


def check_inputs(cfg: Config, bundle: DatasetBundle) -> None:
    """Everything a run needs that the config alone cannot tell (sharing size vs classes, the device, at
    least two classes), checked before its folder is touched."""
    from .losses import create_sharing
    from .trainer import resolve_device

    n = bundle.train.num_classes
    if n < 2:
        raise ValueError(f"dataset {cfg.dataset!r} has {n} class: imbalanced classification needs at least two")
    name, _, size = cfg.sharing.partition(":")
    if name in ("groups", "hat") and size.strip().isdigit() and int(size) > n:
        raise ValueError(f"--sharing {cfg.sharing} asks for {int(size)} {name} but dataset {cfg.dataset!r} has "
                         f"{n} classes: use {name}:K with K <= {n} (or per_class)")
    create_sharing(cfg.sharing, bundle.train.class_counts())
    resolve_device(cfg.device)


def _saved(out: Path) -> dict[str, Any]:
    """The raw ``config.yaml`` of a run folder ({} when there is none); a damaged file is a one-line error."""
    path = out / CONFIG
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path} is damaged ({type(e).__name__}): restore it, or start the run anew in "
                             "another --out (or with --overwrite)") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} is damaged (not a mapping of keys): restore it, or start the run anew in "
                             "another --out (or with --overwrite)")
    return data


def _started(out: Path) -> bool:
    """Whether ``out`` holds anything worth keeping: a checkpoint or a result (of a warm start: its study)."""
    return ((out / RESULT).exists() or any(out.glob("*/checkpoint.pt")) or any(out.glob("*/result.json"))
            or any((out / name).exists() for name in (STUDY_DB, STUDY_JOURNAL, WARMSTART_SUMMARY)))


def _command_of(saved: dict[str, Any]) -> str:
    return str(saved.get("command", "search"))


def check_command(out: str | Path, command: str) -> None:
    """Refuse ``out`` when it holds a started run of another command (a warm start in a search's folder, a
    baseline in a retrain's...): one command never rewrites another's ``config.yaml``."""
    out = Path(out)
    have = _saved(out)
    if have and _command_of(have) != command and _started(out):
        raise RunFolderError(f"run folder {out} holds a `{_command_of(have)}` run, not a `{command}` one: choose "
                             "another --out (another command never reuses a run's folder)")


def prepare_run_folder(out: Path, cfg: Config, *, resume: bool, overwrite: bool, command: str,
                       options: dict[str, Any] | None = None) -> Path | None:
    """Check that ``out`` may take this run and save its resolved config (and run ``options``).

    A folder whose run never reached a checkpoint counts as empty. With ``overwrite``, a different run is
    moved aside to a hidden sibling folder, whose path is returned (``None`` when nothing was moved): the
    caller deletes it once the new run has started, or moves it back (see :func:`run_folder`).
    """
    wanted = {"command": command, **({"options": options} if options else {}), **cfg.to_dict()}
    saved = have = _saved(out)
    if have and not _started(out) and not resume:
        have = {}  # a start that failed before its first checkpoint left nothing to keep
    replace = False
    if have and _command_of(have) != command and not overwrite:
        raise RunFolderError(f"run folder {out} holds a `{_command_of(have)}` run, not a `{command}` one: choose "
                             "another --out" + ("" if resume else ", or --overwrite to replace it"))
    if have and have != wanted:
        if resume:
            raise RunFolderError(
                f"run folder {out} holds a run with a different configuration: resume it with its own "
                "settings (`--resume` and no other options), or start it anew with --overwrite"
            )
        if not overwrite:
            raise RunFolderError(
                f"run folder {out} already holds a different run: choose another --out, pass --resume to "
                "continue it, or --overwrite to replace it"
            )
        replace = True
    elif have and not resume:
        if not overwrite and (out / RESULT).exists():
            raise RunFolderError(f"run folder {out} already holds a finished run: use another --out or --overwrite")
        replace = overwrite
    elif resume and not have:
        raise RunFolderError(f"nothing to resume in {out}: start the run without --resume")
    aside = None
    if replace:
        aside = out.with_name(f".{out.name}{_ASIDE}{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        out.rename(aside)
        saved = {}
    out.mkdir(parents=True, exist_ok=True)
    if saved != wanted:  # a resumed run's config.yaml stays as it was written
        atomic_write(out / CONFIG, lambda f: yaml.safe_dump(wanted, f, sort_keys=True), mode="w")
    return aside


_ASIDE = ".replaced-"


def _asides(real: Path) -> list[Path]:
    """The hidden copies of earlier runs that ``--overwrite`` moved aside from ``real``, oldest first."""
    found = [p for p in real.parent.glob(f".{glob.escape(real.name)}{_ASIDE}*") if p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def _settle(real: Path) -> None:
    """Finish what an ``--overwrite`` killed mid-way left beside ``real`` (call it holding the folder's lock):
    once the new run has a checkpoint the old one is deleted; before that, the old one is put back."""
    asides = _asides(real)
    if not asides:
        return
    if _started(real):
        for a in asides:
            shutil.rmtree(a, ignore_errors=True)
        return
    *older, last = asides
    for a in older:
        shutil.rmtree(a, ignore_errors=True)
    shutil.rmtree(real, ignore_errors=True)
    last.rename(real)
    warnings.warn(f"restored the earlier run in {real}: the --overwrite run that replaced it stopped before its "
                  "first checkpoint", stacklevel=2)


def settle_run_folder(out: str | Path) -> None:
    """:func:`_settle` for a reader (``--resume``'s saved options, ``evaluate``...): done only when no run holds
    the folder, since a live run owns its hidden copy."""
    real = Path(out).resolve()
    if not _asides(real):
        return
    try:
        with lock_run_folder(real):
            _settle(real)
    except (RunFolderError, OSError):
        pass  # in use (the run holding it settles its own copy), or a folder this reader cannot change


class _Aside:
    """The hidden copy of the run that ``--overwrite`` replaced: a watcher thread deletes it as soon as the new
    run has written its first checkpoint; :meth:`close` puts it back if the new run never got that far."""

    def __init__(self, out: Path, path: Path) -> None:
        self.out, self.path = out, path
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ab-plugin-aside", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if self._drop_if_started():
                return

    def _drop_if_started(self) -> bool:
        with self._lock:
            if self.path is not None and _started(self.out):
                shutil.rmtree(self.path, ignore_errors=True)
                self.path = None
            return self.path is None

    def close(self, failed: bool) -> None:
        """Delete the copy (the new run finished, or failed after its first checkpoint) or put it back."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            if self.path is None:
                return
            if failed and not _started(self.out):
                shutil.rmtree(self.out, ignore_errors=True)
                self.path.rename(self.out)
            else:
                shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


@contextlib.contextmanager
def lock_run_folder(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (``filelock`` on a ``.NAME.lock`` file beside the resolved folder, so
    replacing ``out`` keeps it and a symlink to the folder takes the same lock); a second writer gets a
    one-line :class:`RunFolderError`. The kernel drops the lock if the process dies."""
    real = Path(out).resolve()
    real.parent.mkdir(parents=True, exist_ok=True)
    path = real.with_name(f".{real.name}.lock")
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            pid = path.read_text().strip() or "?"
        except OSError:
            pid = "?"
        raise RunFolderError(f"run folder {out} is in use by another ab-plugin run (pid {pid}): wait for it to "
                             "finish, or choose another --out") from None
    try:
        path.write_text(str(os.getpid()))  # for the message above; the lock is the open file, not its text
        yield
    finally:
        with contextlib.suppress(OSError):
            path.write_text("")
        lock.release()


@contextlib.contextmanager
def run_folder(out: str | Path, cfg: Config, *, command: str, resume: bool = False, overwrite: bool = False,
               options: dict[str, Any] | None = None) -> Iterator[Path]:
    """Claim ``out`` for a run while the block runs: locked, checked, config saved.

    A run replaced with ``overwrite`` is kept aside until the new one has written a checkpoint; if the
    new run fails before that, the old run is put back untouched. Under torchrun rank 0 claims the folder
    and the other ranks wait for it.
    """
    out = Path(out)
    if not is_rank_zero():
        barrier()
        yield out
        return
    real = out.resolve()  # `--out alias` of a folder is that folder: same lock, and --overwrite moves the folder
    with lock_run_folder(real):
        _settle(real)
        moved = prepare_run_folder(real, cfg, resume=resume, overwrite=overwrite, command=command, options=options)
        aside = _Aside(real, moved) if moved is not None else None
        barrier()
        try:
            yield out
        except BaseException as e:
            started = _started(real)
            if aside is not None:
                aside.close(failed=True)
                aside = None
            if isinstance(e, KeyboardInterrupt):
                raise KeyboardInterrupt(
                    f"stopped: the last finished epoch is saved in {out}; continue with --resume" if started else
                    f"stopped before the first epoch finished: nothing of this run was saved in {out}"
                ) from None
            raise
        finally:
            if aside is not None:
                aside.close(failed=False)


def read_run(out: Path) -> tuple[str, dict[str, Any], Config]:
    """``(command, options, config)`` saved in a run folder; a missing or damaged file is a one-line error."""
    settle_run_folder(out)
    data = _saved(out)
    if not data:
        raise RunFolderError(f"{out} is not a run folder (no config.yaml): pass the --out folder of a run")
    command = data.pop("command", "search")
    options = data.pop("options", None) or {}
    try:
        return command, options, Config.from_dict(data)
    except ValueError as e:
        raise RunFolderError(f"{out / CONFIG} is damaged ({e})") from None


def run_stage(out: Path, name: str, run: Callable[[Path, bool], RunResult]) -> RunResult:
    """Run one stage in ``out/name`` unless it already finished; resume from its checkpoint if any.

    Under torchrun every rank runs the stage and rank 0 writes its files."""
    stage = out / name
    done = stage / RESULT
    if done.exists():
        return RunResult.from_dict(json.loads(done.read_text()))
    resume = (stage / "checkpoint.pt").exists()
    barrier()  # every rank has looked at the stage folder before rank 0 changes it
    if not resume and is_rank_zero():
        (stage / "metrics.jsonl").unlink(missing_ok=True)
    result = run(stage, resume)
    if is_rank_zero():
        write_json(done, result.to_dict())
    barrier()
    return result


def run_search(out: Path, cfg: Config, bundle: DatasetBundle, *, do_retrain: bool = True,
               compare: Sequence[str] = (), callbacks_for: Callable[[str, Config], Sequence[Any]] = lambda s, c: ()
               ) -> dict[str, RunResult]:
    """Search, then (optionally) retrain and train comparison baselines; every stage resumable."""
    results: dict[str, RunResult] = {}
    results["search"] = run_stage(out, "search", lambda d, r: AutoBalance(cfg).fit(
        bundle, run_dir=d, resume=r, callbacks=callbacks_for("search", cfg)))
    if do_retrain:
        results["retrain"] = run_stage(out, "retrain", lambda d, r: retrain(
            results["search"], bundle, cfg, run_dir=d, resume=r, callbacks=callbacks_for("retrain", cfg)))
    for name in compare:
        results[f"baseline-{name}"] = run_stage(out, f"baseline-{name}", lambda d, r, n=name: train_baseline(
            n, bundle, cfg, run_dir=d, resume=r, callbacks=callbacks_for(f"baseline-{n}", cfg)))
    return results


def run_baseline(out: Path, name: str, cfg: Config, bundle: DatasetBundle,
                 callbacks: Sequence[Any] = ()) -> dict[str, RunResult]:
    return {f"baseline-{name}": run_stage(out, f"baseline-{name}", lambda d, r: train_baseline(
        name, bundle, cfg, run_dir=d, resume=r, callbacks=callbacks))}


def final_stage(results: dict[str, RunResult]) -> str:
    """The stage whose model a run reports: retrain, else search, else the first one."""
    return next((k for k in ("retrain", "search") if k in results), next(iter(results)))


def augmentation_movement(results: dict[str, RunResult]) -> dict[str, Any] | None:
    """How far the searched augmentation policy moved from its start, per class and op (see
    :func:`ab_plugin.policies.policy_movement`); ``None`` when the search learned no policy."""
    from .policies import policy_movement
    from .policies._policy import LEARNED_KINDS

    s = results.get("search")
    if (s is None or s.augmentation is None or s.config.get("augment") not in LEARNED_KINDS
            or s.augmentation["kind"] != "ops"):  # a bank's movement is its mean strength per epoch
        return None
    return policy_movement(s.augmentation, s.config["augment_init_probability"], s.config["augment_init_magnitude"])


def augmentation_levels(result: RunResult) -> dict[str, list[int]]:
    """``{"augmentation_levels": [C]}``: the per-class strength levels a curriculum policy (``--augment cuda``)
    ended the stage with; ``{}`` for the other policies."""
    from .policies._cuda import LEVELS_KEY

    levels = result.history[-1].get(LEVELS_KEY) if result.history else None
    return {} if levels is None else {"augmentation_levels": levels}


def summarize(results: dict[str, RunResult]) -> dict[str, Any]:
    """A run's summary: α*, metrics of the final model (test balanced error under ``balanced_error``),
    per-stage times and skipped-step counts; ``augmentation_movement`` when the search learned a policy,
    ``augmentation_levels`` (of the final stage, and per stage) when a curriculum drove the augmentation."""
    final_name = final_stage(results)
    final = results[final_name]
    movement = augmentation_movement(results)
    return {
        **({"augmentation_movement": movement} if movement is not None else {}),
        **augmentation_levels(final),
        "final": final_name,
        "classes": final.classes,
        "class_counts": final.class_counts,
        "alpha": final.alpha,
        "augmentation": final.augmentation,
        "test_metrics": final.test_metrics,
        "val_metrics": (results.get("search") or final).val_metrics,
        "balanced_error": (final.test_metrics or {}).get("balanced_error"),
        "stages": _stages(results),
    }


def _stages(results: dict[str, RunResult]) -> dict[str, dict[str, Any]]:
    """Per stage: method, times, step counts and metrics; a stage with a ``--stage2`` re-training also shows
    its model before it, as ``NAME:stage1`` (test metrics only), and what stage 2 chose under ``stage2``."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in results.items():
        if v.stage1_test_metrics is not None:
            out[f"{k}:stage1"] = {"method": v.method, "test_metrics": v.stage1_test_metrics}
        out[k] = {"method": v.method, "seconds": v.seconds, "test_metrics": v.test_metrics,
                  "val_metrics": v.val_metrics, "hyper_steps": v.hyper_steps, "skipped_steps": v.skipped_steps,
                  "skipped_hyper_steps": v.skipped_hyper_steps, "steps": v.steps, **augmentation_levels(v),
                  **({"stage2": v.stage2} if v.stage2 is not None else {})}
    return out


def finish_run(out: Path, results: dict[str, RunResult]) -> tuple[dict[str, Any], list[Path]]:
    """Write a run's outputs into ``out``: ``result.json`` (see :func:`summarize`), ``policy.json`` (the
    final α and augmentation, validation metrics of the search) and the plots; returns the summary and the
    plot paths. ``policy.json`` is written last, so a folder holding one holds a finished run: resuming it
    rewrites nothing."""
    from .policies import PolicyFileError, save_policy
    from .policies._file import policy_from_dict

    if (out / POLICY).exists() and (out / RESULT).exists():  # finished before (--resume): its files stay as they are
        summary = json.loads((out / RESULT).read_text())
        return summary, [p for p in (out / name for name in PLOTS) if p.exists()]
    summary = summarize(results)
    policy = dataclasses.replace(results[summary["final"]], val_metrics=summary["val_metrics"]).to_policy()
    try:
        policy_from_dict(policy.to_dict(), str(out / POLICY))
    except PolicyFileError as e:
        raise RuntimeError(f"the run in {out} ended with values a policy cannot hold ({e}); its checkpoints are "
                           "kept: lower --lr / --upper-lr and start again with --overwrite") from None
    plots = write_plots(out, results)
    write_json(out / RESULT, summary)
    save_policy(out / POLICY, policy)
    return summary, plots


def write_plots(out: Path, results: dict[str, RunResult]) -> list[Path]:
    from .policies._cuda import LEVELS_KEY
    from .report import (
        plot_alpha_trajectory,
        plot_alpha_vs_frequency,
        plot_augmentation_levels,
        plot_augmentation_movement,
        plot_per_class_error,
    )

    paths = []
    final = results[final_stage(results)]

    def label(name: str) -> str:
        return "AutoBalance" if name == "retrain" else name.removeprefix("baseline-").upper()

    errors = {label(name): r.test_metrics["per_class_error"] for name, r in results.items()
              if r.test_metrics and name != "search"} or {"final": final.test_metrics["per_class_error"]}
    p = out / PLOTS[0]
    plot_per_class_error(final.class_counts, errors, p)
    paths.append(p)
    if "search" in results:
        s = results["search"]
        p = out / PLOTS[1]
        plot_alpha_vs_frequency(s.class_counts, s.alpha, p)
        paths.append(p)
        if s.history:
            p = out / PLOTS[2]
            plot_alpha_trajectory(s.history, p)
            paths.append(p)
        movement = augmentation_movement(results)
        if movement is not None:
            p = out / PLOTS[3]
            plot_augmentation_movement(s.class_counts, movement, p)
            paths.append(p)
    curricula = {name: r.history for name, r in results.items() if augmentation_levels(r)}
    if curricula:
        p = out / PLOTS[4]
        plot_augmentation_levels(curricula, LEVELS_KEY, p)
        paths.append(p)
    return paths
