"""``ab-plugin``: search, retrain, evaluate, baseline, export, show (click + rich; rich only here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from ._console import RichProgress, command_options, console, emit, make_progress
from ._options import _resolve_config, config_options
from .config import Config


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="ab-plugin")
def main() -> None:
    """AutoBalance: learn the loss (and per-class augmentation) for imbalanced classification.

    \b
    Quick start (embedded digits-lt data, about a minute on 2 CPU cores):
      ab-plugin search --backbone resnet32 --out runs/demo
      ab-plugin show runs/demo/policy.json
    """


def _finish_run(out: Path, results: dict, fmt: str, title: str) -> None:
    from .policies import save_policy
    from .report import per_class_table, summary_table
    from .runs import summarize, write_plots

    summary = summarize(out, results)
    plots = write_plots(out, results)
    save_policy(out / "policy.json", _policy_from_summary(summary, out))

    def render() -> None:
        console.print(summary_table(title, {k: v.to_dict() for k, v in results.items() if k != "search"}
                                    or {k: v.to_dict() for k, v in results.items()}))
        console.print(per_class_table({**summary, "test_metrics": summary["test_metrics"]}))
        console.print(f"run folder: [bold]{out}[/]  (result.json, policy.json, {', '.join(p.name for p in plots)})")

    emit(fmt, summary, render)


def _policy_from_summary(summary: dict[str, Any], out: Path) -> Any:
    import datetime

    from . import __version__
    from .policies import FORMAT_VERSION, PolicyFile
    from .runs import read_run_config

    _, cfg = read_run_config(out)
    aug = summary.get("augmentation")
    return PolicyFile(
        version=FORMAT_VERSION,
        classes=summary["classes"],
        class_counts=summary["class_counts"],
        loss={k: summary["alpha"][k] for k in ("class_weight", "logit_bias", "logit_scale")},
        augmentation=aug,
        provenance={
            "dataset": cfg.dataset, "imbalance": cfg.imbalance, "n_max": cfg.n_max, "backbone": cfg.backbone,
            "epochs": cfg.epochs, "seed": cfg.seed, "engine": cfg.engine, "init": cfg.init, "sharing": cfg.sharing,
            "augment": cfg.augment,
            "val_metrics": _short(summary.get("val_metrics")), "test_metrics": _short(summary.get("test_metrics")),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "ab_plugin": __version__,
        },
    )


def _short(m: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if m is None else {k: m[k] for k in ("accuracy", "balanced_error", "worst_class_error") if k in m}


@main.command()
@config_options
@click.option("--out", type=click.Path(file_okay=False), default="runs/search", show_default=True,
              help="run folder")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--overwrite", is_flag=True, help="replace a different run already in --out")
@click.option("--retrain/--no-retrain", "do_retrain", default=True, show_default=True,
              help="after the search, retrain a fresh model on train + validation with α* fixed")
@click.option("--compare", default="ce", show_default=True,
              help="comma list of baselines trained alongside for the report (e.g. ce,la); '' for none")
@click.option("--download", is_flag=True, help="allow torchvision to download CIFAR into --data-dir")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--warmstart", default=None, metavar="STUDY|N",
              help="start from the best trial of a warm-start study: a warmstart run folder, a study name "
                   "(with --warmstart-storage), or N to run an N-trial study in OUT/warmstart first")
@click.option("--warmstart-storage", default=None, help="database URL of a --warmstart study name")
@command_options
def search(out: str, resume: bool, overwrite: bool, do_retrain: bool, compare: str, download: bool, quiet: bool,
           warmstart: str | None, warmstart_storage: str | None, fmt: str, **kwargs: Any) -> None:
    """Search α = (w, l, Δ, A) by bilevel optimisation, then retrain with α*.

    \b
    Examples:
      ab-plugin search --backbone resnet32                       # embedded digits-lt, ~1 min
      ab-plugin search --dataset imagefolder:/data/c10 --imbalance 100 --n-max 1000 --epochs 50 --compare ce,la
      ab-plugin search --dataset cifar10-lt --data-dir ~/data --download --engine neumann --device cuda
      ab-plugin search --out runs/x --resume                     # continue after a crash or Ctrl-C
    """
    from .runs import load_bundle, prepare_run_folder, read_run_config, run_search

    out_p = Path(out)
    # --resume alone continues with the run's own settings
    cfg = _resolve_config(kwargs, read_run_config(out_p)[1] if resume and (out_p / "config.yaml").exists() else None)
    if warmstart:
        from .warmstart import warmstart_config

        cfg = warmstart_config(cfg, warmstart, storage=warmstart_storage, out=out_p)
    _check_names(cfg)
    prepare_run_folder(out_p, cfg, resume=resume, overwrite=overwrite, command="search")
    bundle = load_bundle(cfg, download)
    baselines = [c.strip() for c in compare.split(",") if c.strip()]
    with make_progress(fmt == "table" and not quiet) as progress:
        results = run_search(out_p, cfg, bundle, do_retrain=do_retrain, compare=baselines,
                             callbacks_for=lambda stage, c: [RichProgress(progress, stage, c)])
    _finish_run(out_p, results, fmt, f"{cfg.dataset} (imbalance {cfg.imbalance:g}), {cfg.backbone}")


def _check_names(cfg: Config) -> None:
    """Fail fast, before any data is loaded, on names that do not exist."""
    from .data import list_datasets
    from .hypergrad import list_engines
    from .losses import LOSSES
    from .models import list_backbones
    from .objectives import list_objectives

    if cfg.engine not in list_engines():
        raise ValueError(f"unknown --engine {cfg.engine!r}: choose from {', '.join(list_engines())}")
    if cfg.objective not in list_objectives():
        raise ValueError(f"unknown --objective {cfg.objective!r}: choose from {', '.join(list_objectives())}")
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown --loss {cfg.loss!r}: choose from {', '.join(LOSSES)}")
    if not cfg.dataset.startswith("imagefolder:") and cfg.dataset not in list_datasets():
        raise ValueError(f"unknown --dataset {cfg.dataset!r}: choose from {', '.join(list_datasets())} "
                         "or imagefolder:PATH")
    if cfg.backbone not in list_backbones():
        import timm

        if not timm.is_model(cfg.backbone):
            raise ValueError(f"unknown --backbone {cfg.backbone!r}: choose one of resnet20..resnet110 "
                             "or a timm model name (timm.list_models())")


@main.command()
@click.argument("name", type=click.Choice(["ce", "la", "cdt", "vs", "ldam", "ldam-drw"]))
@config_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="run folder [default: runs/NAME]")
@click.option("--resume", is_flag=True, help="continue the run in --out")
@click.option("--overwrite", is_flag=True, help="replace a different run already in --out")
@click.option("--download", is_flag=True, help="allow torchvision to download CIFAR")
@click.option("--quiet", is_flag=True, help="no progress bars")
@command_options
def baseline(name: str, out: str | None, resume: bool, overwrite: bool, download: bool, quiet: bool, fmt: str,
             **kwargs: Any) -> None:
    """Train a hand-designed loss of the family (same recipe, same code path as the search).

    \b
    Examples:
      ab-plugin baseline la --tau 1.0 --out runs/la
      ab-plugin baseline ldam-drw --dataset cifar10-lt --data-dir ~/data
    """
    from .runs import load_bundle, prepare_run_folder, run_baseline

    cfg = _resolve_config(kwargs).replace(loss=name)
    _check_names(cfg)
    out_p = Path(out or f"runs/{name}")
    prepare_run_folder(out_p, cfg, resume=resume, overwrite=overwrite, command=f"baseline {name}")
    bundle = load_bundle(cfg, download)
    with make_progress(fmt == "table" and not quiet) as progress:
        results = run_baseline(out_p, name, cfg, bundle, [RichProgress(progress, name, cfg)])
    _finish_run(out_p, results, fmt, f"{name} on {cfg.dataset}")


@main.command(name="retrain")
@click.argument("source", type=click.Path(exists=True))
@config_options
@click.option("--out", type=click.Path(file_okay=False), required=True, help="run folder for the retrain")
@click.option("--resume", is_flag=True, help="continue the retrain in --out")
@click.option("--overwrite", is_flag=True, help="replace a different run already in --out")
@click.option("--quiet", is_flag=True, help="no progress bars")
@command_options
def retrain_cmd(source: str, out: str, resume: bool, overwrite: bool, quiet: bool, fmt: str, **kwargs: Any) -> None:
    """Retrain a fresh model with α fixed, from a run folder or a policy file.

    \b
    Examples:
      ab-plugin retrain runs/demo/policy.json --epochs 60 --out runs/retrain60
      ab-plugin retrain runs/demo --backbone resnet56 --out runs/r56
    """
    from .policies import check_num_classes, load_policy
    from .runs import load_bundle, prepare_run_folder, read_run_config, run_stage
    from .search import retrain

    src = Path(source)
    cfg = _resolve_config(kwargs, read_run_config(src)[1] if src.is_dir() else None)
    pf = load_policy(src / "policy.json" if src.is_dir() else src)
    bundle = load_bundle(cfg)
    check_num_classes(pf, bundle.train.num_classes)
    prepare_run_folder(Path(out), cfg, resume=resume, overwrite=overwrite, command="retrain")
    with make_progress(fmt == "table" and not quiet) as progress:
        result = run_stage(Path(out), "retrain", lambda d, r: retrain(
            pf.loss, bundle, cfg, augmentation=pf.augmentation, run_dir=d, resume=r,
            callbacks=[RichProgress(progress, "retrain", cfg)]))
    _finish_run(Path(out), {"retrain": result}, fmt, "retrain")


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--stage", default=None, help="which stage's model (retrain, search, baseline-ce...) [default: last]")
@command_options
def evaluate(run: str, stage: str | None, fmt: str) -> None:
    """Evaluate a run's trained model on its test set (balanced, worst-class, per-class error)."""
    from .io import load_checkpoint
    from .objectives import compute_metrics
    from .report import summary_table
    from .runs import load_bundle, read_run_config
    from .search import _model
    from .trainer import Trainer

    run_p = Path(run)
    _, cfg = read_run_config(run_p)
    stages = [s for s in ("retrain", "search") if (run_p / s / "checkpoint.pt").exists()]
    stages += sorted(p.parent.name for p in run_p.glob("baseline-*/checkpoint.pt"))
    if stage is None:
        if not stages:
            raise ValueError(f"no checkpoint in {run}: train first (ab-plugin search / baseline)")
        stage = stages[0]
    ck = load_checkpoint(run_p / stage / "checkpoint.pt")
    bundle = load_bundle(Config.from_dict(ck["config"]))
    loss_name = stage.removeprefix("baseline-") if stage.startswith("baseline-") else "autobalance"
    model = _model(cfg, bundle.train.num_classes, loss_name)
    model.load_state_dict(ck["model"])
    from .losses import ParametricCrossEntropy

    trainer = Trainer(model, ParametricCrossEntropy(bundle.train.num_classes), bundle.train,
                      cfg, mean=bundle.mean, std=bundle.std)
    logits, _ = trainer.predict(bundle.test)
    groups = bundle.test.groups.to(trainer.device) if bundle.test.groups is not None else None
    m = compute_metrics(logits, bundle.test.targets.to(trainer.device), bundle.train.num_classes, groups).to_dict()
    summary = {"stage": stage, "test_metrics": m, "balanced_error": m["balanced_error"]}
    emit(fmt, summary, lambda: console.print(summary_table(f"{run} ({stage})", {stage: summary})))


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="policy file to write (.json)")
@command_options
def export(run: str, output: str, fmt: str) -> None:
    """Export a finished run's α* and per-class augmentation as a policy file (versioned JSON)."""
    from .policies import load_policy, save_policy

    src = Path(run) / "policy.json"
    if not src.exists():
        raise ValueError(f"{run} has no finished result (policy.json): finish it with --resume first")
    pf = load_policy(src)
    save_policy(output, pf)
    emit(fmt, {"output": output, "classes": len(pf.classes)},
          lambda: console.print(f"wrote [bold]{output}[/] ({len(pf.classes)} classes)"))


@main.command()
@click.argument("policy", type=str)
@click.option("--heatmap", type=click.Path(dir_okay=False), default=None,
              help="PNG heat map path [default: beside the file, *.png]")
@command_options
def show(policy: str, heatmap: str | None, fmt: str) -> None:
    """Show a policy file (or a zoo name): per-class w, l, Δ and augmentation, plus a PNG heat map."""
    from .policies import load_policy, plot_policy_heatmap, policy_table

    pf = load_policy(policy)
    png = Path(heatmap) if heatmap else (Path(policy).with_suffix(".png") if Path(policy).exists()
                                          else Path(f"{policy}.png"))
    if pf.augmentation:
        plot_policy_heatmap(pf, png)
    summary = dataclasses.asdict(pf) if dataclasses.is_dataclass(pf) else dict(pf)

    def render() -> None:
        console.print(policy_table(pf))
        if pf.augmentation:
            console.print(f"heat map: [bold]{png}[/]")

    emit(fmt, summary, render)


def _register() -> None:
    from .warmstart import warmstart_command

    main.add_command(warmstart_command, "warmstart")


_register()

if __name__ == "__main__":
    main()
