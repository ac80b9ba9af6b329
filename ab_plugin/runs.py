"""Run folders: what a search / retrain / baseline writes, how a run resumes, how it is refused.

Layout of ``--out DIR``::

    config.yaml         resolved configuration (what was asked + defaults)
    search/             checkpoint.pt, metrics.jsonl, result.json   (bilevel search)
    retrain/            checkpoint.pt, metrics.jsonl, result.json   (α fixed, train + val)
    baseline-NAME/      checkpoint.pt, metrics.jsonl, result.json
    result.json         summary: α*, metrics (test balanced error under ``balanced_error``)
    policy.json         the exported policy file
    *.png               plots
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .config import Config
from .data import DatasetBundle, create_dataset
from .io import atomic_write, write_json
from .search import AutoBalance, RunResult, retrain, train_baseline

RESULT = "result.json"


class RunFolderError(ValueError):
    pass


def load_bundle(cfg: Config, download: bool = False) -> DatasetBundle:
    return create_dataset(cfg.dataset, data_dir=cfg.data_dir, imbalance=cfg.imbalance, profile=cfg.profile,
                          n_max=cfg.n_max, download=download, seed=cfg.seed)


def prepare_run_folder(out: Path, cfg: Config, *, resume: bool, overwrite: bool, command: str) -> None:
    """Create ``out`` or check that it holds the same run; save the resolved config."""
    cfg_path = out / "config.yaml"
    wanted = {"command": command, **cfg.to_dict()}
    if cfg_path.exists():
        try:
            have = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError:
            have = {}
        if have != wanted and not overwrite:
            if resume:
                raise RunFolderError(
                    f"run folder {out} holds a run with a different configuration: resume it with its own "
                    "settings (`--resume` and no other options), or pass --overwrite"
                )
            raise RunFolderError(
                f"run folder {out} already holds a different run: choose another --out, pass --resume to "
                "continue it, or --overwrite to replace it"
            )
        if not resume and not overwrite and (out / RESULT).exists():
            raise RunFolderError(f"run folder {out} already holds a finished run: use another --out or --overwrite")
        if overwrite:
            for sub in out.glob("*/checkpoint.pt"):
                sub.unlink()
            for sub in out.glob("*/metrics.jsonl"):
                sub.unlink()
            for f in list(out.glob("*/result.json")) + [out / RESULT]:
                f.unlink(missing_ok=True)
    elif resume:
        raise RunFolderError(f"nothing to resume in {out}: start the run without --resume")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(cfg_path, lambda f: yaml.safe_dump(wanted, f, sort_keys=True), mode="w")


def read_run_config(out: Path) -> tuple[str, Config]:
    path = out / "config.yaml"
    if not path.exists():
        raise RunFolderError(f"{out} is not a run folder (no config.yaml): pass the --out folder of a run")
    data = yaml.safe_load(path.read_text()) or {}
    command = data.pop("command", "search")
    return command, Config.from_dict(data)


def run_stage(out: Path, name: str, run: Callable[[Path, bool], RunResult]) -> RunResult:
    """Run one stage in ``out/name`` unless it already finished; resume from its checkpoint if any."""
    stage = out / name
    done = stage / RESULT
    if done.exists():
        return RunResult.from_dict(json.loads(done.read_text()))
    resume = (stage / "checkpoint.pt").exists()
    if not resume:
        (stage / "metrics.jsonl").unlink(missing_ok=True)
    result = run(stage, resume)
    write_json(done, result.to_dict())
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


def summarize(out: Path, results: dict[str, RunResult]) -> dict[str, Any]:
    """Write ``result.json`` (α*, metrics of the final model) and return it."""
    final = results.get("retrain") or results.get("search") or next(iter(results.values()))
    summary = {
        "final": next(k for k, v in results.items() if v is final),
        "classes": final.classes,
        "class_counts": final.class_counts,
        "alpha": final.alpha,
        "augmentation": final.augmentation,
        "test_metrics": final.test_metrics,
        "val_metrics": (results.get("search") or final).val_metrics,
        "balanced_error": (final.test_metrics or {}).get("balanced_error"),
        "stages": {k: {"method": v.method, "seconds": v.seconds, "test_metrics": v.test_metrics,
                       "val_metrics": v.val_metrics, "hyper_steps": v.hyper_steps,
                       "skipped_steps": v.skipped_steps, "skipped_hyper_steps": v.skipped_hyper_steps}
                   for k, v in results.items()},
    }
    write_json(out / RESULT, summary)
    return summary


def write_plots(out: Path, results: dict[str, RunResult]) -> list[Path]:
    from .report import plot_alpha_trajectory, plot_alpha_vs_frequency, plot_per_class_error

    paths = []
    final = results.get("retrain") or results.get("search") or next(iter(results.values()))
    def label(name: str) -> str:
        return "AutoBalance" if name == "retrain" else name.removeprefix("baseline-").upper()

    errors = {label(name): r.test_metrics["per_class_error"] for name, r in results.items()
              if r.test_metrics and name != "search"} or {"final": final.test_metrics["per_class_error"]}
    p = out / "per_class_error.png"
    plot_per_class_error(final.class_counts, errors, p)
    paths.append(p)
    if "search" in results:
        s = results["search"]
        p = out / "alpha_vs_frequency.png"
        plot_alpha_vs_frequency(s.class_counts, s.alpha, p)
        paths.append(p)
        if s.history:
            p = out / "alpha_trajectory.png"
            plot_alpha_trajectory(s.history, p)
            paths.append(p)
    return paths
