"""``ab-plugin``: search, retrain, evaluate, baseline, export, show (click + rich; rich only here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from ._console import RichProgress, command_options, console, emit, make_progress, warn
from ._options import GroupedCommand, GroupedOption, config_options, resolve_config
from .config import Config
from .losses import list_losses


class _Commands(click.Group):
    """The ``ab-plugin`` group: its commands show their options in sections (:class:`GroupedCommand`)."""

    command_class = GroupedCommand


def option(*names: str, **kwargs: Any) -> Any:
    """``click.option`` of a command's own options (run folder, resume...): the "Command" section of --help."""
    return click.option(*names, cls=GroupedOption, **kwargs)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="ab-plugin")
def main() -> None:
    """AutoBalance: learn the loss (and per-class augmentation) for imbalanced classification.

    \b
    Quick start (embedded digits-lt data, about a minute on 2 CPU cores):
      ab-plugin search --backbone resnet32 --out runs/demo
      ab-plugin show runs/demo/policy.json
    """


def _render_run(out: Path, summary: dict[str, Any], plots: list[Path], fmt: str, title: str) -> None:
    """Print a finished run (table or JSON) and its warnings; fail when a stage skipped most of its steps
    (under ``--format json`` before printing, so stdout holds one document: the error)."""
    from .report import per_class_table, summary_table

    stages = summary["stages"]

    def render() -> None:
        console.print(summary_table(title, {k: v for k, v in stages.items() if k != "search"} or stages))
        console.print(per_class_table(summary))
        console.print(f"run folder: [bold]{out}[/]  (result.json, policy.json, {', '.join(p.name for p in plots)})")

    _check_hyper_steps(stages)
    if fmt == "json":
        _check_skipped(stages)
        emit(fmt, summary, render)
    else:
        emit(fmt, summary, render)
        _check_skipped(stages)


def _check_hyper_steps(stages: dict[str, dict[str, Any]]) -> None:
    """A search that took no hyper-step learned nothing: its α (and policy) are the starting values."""
    search = stages.get("search")
    if search is not None and search.get("hyper_steps", 0) == 0:
        warn(f"the search took 0 hyper-steps in its {search.get('steps', 0)} lower steps, so α (and any learned "
             "policy) is its starting value, not a learned one: give the upper level steps (more --epochs, "
             "a smaller --batch-size, --upper-start or --interval)")


def _title(cfg: Config, summary: dict[str, Any]) -> str:
    """The report's title, with the imbalance the training set really has (max / min class count)."""
    from .report import imbalance_of

    counts = summary.get("class_counts")
    real = imbalance_of(counts) if counts else cfg.imbalance
    asked = "" if abs(real - cfg.imbalance) <= 0.05 * cfg.imbalance else f", asked {cfg.imbalance:g}"
    return f"{cfg.dataset} (imbalance {real:.3g}{asked}), {cfg.backbone}"


def _finish_run(out: Path, results: dict[str, Any]) -> tuple[dict[str, Any], list[Path]] | None:
    """Write the run's outputs: summary and plot paths, or ``None`` on the ranks other than 0 (which write none)."""
    from .distributed import is_rank_zero
    from .runs import finish_run

    return finish_run(out, results) if is_rank_zero() else None


def _resuming(resume: bool, out: Path) -> bool:
    """``--resume``, or a worker group that ``torchrun --max-restarts`` restarted in a folder it had started."""
    from .distributed import restarted
    from .runs import CONFIG

    return resume or (restarted() and (out / CONFIG).exists())


def _ranks(cfg: Config) -> Any:
    """The torchrun process group (if any) for a run on ``cfg.device``."""
    from .distributed import process_group
    from .trainer import resolve_device

    return process_group(resolve_device(cfg.device))


def _progress(fmt: str, quiet: bool) -> Any:
    from .distributed import is_rank_zero

    return make_progress(fmt == "table" and not quiet and is_rank_zero())


def _check_skipped(stages: dict[str, dict[str, Any]]) -> None:
    """Non-finite steps are skipped during training; say so, and fail when they were most of a stage."""
    for name, st in stages.items():
        skipped, steps = st.get("skipped_steps", 0), st.get("steps", 0)
        if skipped:
            warn(f"stage {name} skipped {skipped} of {steps} steps (non-finite loss): lower --lr")
        if steps and 2 * skipped > steps:
            raise RuntimeError(f"stage {name} skipped most of its steps ({skipped} of {steps}): its results are "
                               "unreliable; lower --lr (or --upper-lr) and start again with --overwrite")


def _saved_options(out: Path, resume: bool) -> tuple[dict[str, Any], Config | None]:
    """On --resume, the options and config a run folder saved (its own settings win over the defaults)."""
    from .runs import CONFIG, read_run

    if not (resume and (out / CONFIG).exists()):
        return {}, None
    _, options, cfg = read_run(out)
    return options, cfg


def _given(name: str) -> bool:
    return click.get_current_context().get_parameter_source(name) != click.core.ParameterSource.DEFAULT


def _baselines(compare: str) -> list[str]:
    names = [c.strip() for c in compare.split(",") if c.strip()]
    valid = [n for n in list_losses() if n != "autobalance"]
    for n in names:
        if n not in valid:
            raise ValueError(f"unknown --compare baseline {n!r}: choose from {', '.join(valid)}")
    return names


@main.command()
@config_options
@option("--out", type=click.Path(file_okay=False), default="runs/search", show_default=True,
        help="run folder the run writes (config.yaml, checkpoints, result.json, policy.json, plots)")
@option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint, with its own settings")
@option("--overwrite", is_flag=True, help="replace a different run already in --out (kept until the new one "
                                           "has saved its first checkpoint)")
@option("--retrain/--no-retrain", "do_retrain", default=True, show_default=True,
        help="after the search, retrain a fresh model on train + validation with α* fixed")
@option("--compare", default="ce", show_default=True,
        help="comma list of baselines (fixed losses) trained alongside for the report (e.g. ce,la); '' for none")
@option("--download", is_flag=True, help="allow torchvision to download CIFAR into --data-dir")
@option("--quiet", is_flag=True, help="no progress bars (the result is still printed)")
@option("--warmstart", default=None, metavar="STUDY|N",
        help="start from the best trial of a warm-start study: a warmstart run folder, a study name "
             "(with --warmstart-storage), or N to run an N-trial study in OUT/warmstart first")
@option("--warmstart-storage", default=None,
        help="database URL of the study that --warmstart names (e.g. sqlite:///ws.db, postgresql://...)")
@option("--warmstart-recipe-knobs", "warmstart_recipe", is_flag=True,
        help="with --warmstart N: the study also searches the training recipe (weight decay, mixup, the DRW point, "
             "stage 2), as `ab-plugin warmstart --recipe-knobs` does; the search and its retrain train with the "
             "best trial's recipe")
@command_options
def search(out: str, resume: bool, overwrite: bool, do_retrain: bool, compare: str, download: bool, quiet: bool,
           warmstart: str | None, warmstart_storage: str | None, warmstart_recipe: bool, fmt: str,
           **kwargs: Any) -> None:
    """Search α = (w, l, Δ, A) by bilevel optimisation, then retrain with α*.

    \b
    Examples:
      ab-plugin search --backbone resnet32                       # embedded digits-lt, ~1 min
      ab-plugin search --dataset imagefolder:/data/c10 --imbalance 100 --n-max 1000 --epochs 50 --compare ce,la
      ab-plugin search --dataset cifar10-lt --data-dir ~/data --download --engine neumann --device cuda
      ab-plugin search --dataset imagenet-lt:/data/imagenet --backbone resnet50 --workers 16 --device cuda
      ab-plugin search --out runs/x --resume                     # continue after a crash or Ctrl-C
    """
    from .runs import check_inputs, load_bundle, run_folder, run_search

    out_p = Path(out)
    resume = _resuming(resume, out_p)
    saved, saved_cfg = _saved_options(out_p, resume)
    if warmstart and saved_cfg is None:
        from .warmstart.refine import study_config

        # a study's own data, model and schedule, under the options given here
        saved_cfg = study_config(warmstart, storage=warmstart_storage)
    # --resume alone continues with the run's own settings, --compare and --no-retrain included
    cfg = resolve_config(kwargs, saved_cfg)
    baselines = _baselines(compare) if _given("compare") or "compare" not in saved else list(saved["compare"])
    do_retrain = do_retrain if _given("do_retrain") or "retrain" not in saved else bool(saved["retrain"])
    if warmstart_recipe and not warmstart:
        raise click.UsageError("--warmstart-recipe-knobs goes with --warmstart N")
    if warmstart:
        from .warmstart import warmstart_config
        from .warmstart.space import RecipeSpace, SearchSpace

        space = SearchSpace(recipe=RecipeSpace()) if warmstart_recipe else None
        cfg = warmstart_config(cfg, warmstart, storage=warmstart_storage, out=out_p, space=space)
    _check_backbone(cfg)
    bundle = load_bundle(cfg, download)
    check_inputs(cfg, bundle)
    with _ranks(cfg), run_folder(out_p, cfg, command="search", resume=resume, overwrite=overwrite,
                                 options={"compare": baselines, "retrain": do_retrain}), \
            _progress(fmt, quiet) as progress:
        results = run_search(out_p, cfg, bundle, do_retrain=do_retrain, compare=baselines,
                             callbacks_for=lambda stage, c: [RichProgress(progress, stage, c)])
        done = _finish_run(out_p, results)
    if done:
        _render_run(out_p, *done, fmt, _title(cfg, done[0]))


def _check_backbone(cfg: Config) -> None:
    """Fail fast, before any data is loaded, on a backbone that does not exist or a missing --pretrained-file."""
    from .models import check_backbone

    check_backbone(cfg.backbone, pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file, label="--backbone")


@main.command()
@click.argument("name", type=click.Choice([n for n in list_losses() if n != "autobalance"]))
@config_options
@option("--out", type=click.Path(file_okay=False), default=None,
        help="run folder the baseline writes (config.yaml, checkpoint, result.json, policy.json) [default: runs/NAME]")
@option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint, with its own settings")
@option("--overwrite", is_flag=True, help="replace a different run already in --out (kept until the new one "
                                           "has saved its first checkpoint)")
@option("--download", is_flag=True, help="allow torchvision to download CIFAR into --data-dir")
@option("--quiet", is_flag=True, help="no progress bars (the result is still printed)")
@command_options
def baseline(name: str, out: str | None, resume: bool, overwrite: bool, download: bool, quiet: bool, fmt: str,
             **kwargs: Any) -> None:
    """Train a hand-designed loss of the family (same recipe, same code path as the search).

    \b
    Examples:
      ab-plugin baseline la --tau 1.0 --out runs/la
      ab-plugin baseline ldam-drw --dataset cifar10-lt --data-dir ~/data
    """
    from .runs import check_inputs, load_bundle, run_baseline, run_folder

    out_p = Path(out or f"runs/{name}")
    resume = _resuming(resume, out_p)
    cfg = resolve_config(kwargs, _saved_options(out_p, resume)[1]).replace(loss=name)
    _check_backbone(cfg)
    bundle = load_bundle(cfg, download)
    check_inputs(cfg, bundle)
    with _ranks(cfg), run_folder(out_p, cfg, command=f"baseline {name}", resume=resume, overwrite=overwrite), \
            _progress(fmt, quiet) as progress:
        results = run_baseline(out_p, name, cfg, bundle, [RichProgress(progress, name, cfg)])
        done = _finish_run(out_p, results)
    if done:
        _render_run(out_p, *done, fmt, f"{name} on {cfg.dataset}")


@main.command(name="retrain")
@click.argument("source", type=click.Path(exists=True))
@config_options
@option("--out", type=click.Path(file_okay=False), required=True,
        help="run folder the retrain writes (config.yaml, retrain/, result.json, policy.json)")
@option("--resume", is_flag=True, help="continue the retrain in --out from its last checkpoint")
@option("--overwrite", is_flag=True, help="replace a different run already in --out (kept until the new one "
                                           "has saved its first checkpoint)")
@option("--quiet", is_flag=True, help="no progress bars (the result is still printed)")
@command_options
def retrain_cmd(source: str, out: str, resume: bool, overwrite: bool, quiet: bool, fmt: str, **kwargs: Any) -> None:
    """Retrain a fresh model with α fixed, from a run folder or a policy file.

    \b
    Examples:
      ab-plugin retrain runs/demo/policy.json --epochs 60 --out runs/retrain60
      ab-plugin retrain runs/demo --backbone resnet56 --out runs/r56
    """
    from .policies import load_policy
    from .policies._file import check_num_classes
    from .runs import POLICY, check_inputs, load_bundle, read_run, run_folder, run_stage
    from .search import fixed_loss_from_alpha, retrain

    src, out_p = Path(source), Path(out)
    resume = _resuming(resume, out_p)
    base = _saved_options(out_p, resume)[1] or (read_run(src)[2] if src.is_dir() else None)
    cfg = resolve_config(kwargs, base)
    pf = load_policy(src / POLICY if src.is_dir() else src)
    if base is None and cfg.stage2 == "auto":
        # α is retrained the way it was learned: the file says with which stage 2 (none: a file from before
        # --stage2 auto, or an α learned inside a training loop by the integrations)
        cfg = cfg.replace(stage2=pf.provenance.get("stage2", "none"))
        cfg.validate()
    _check_backbone(cfg)
    bundle = load_bundle(cfg)
    check_num_classes(pf, bundle.train.num_classes)
    fixed_loss_from_alpha(pf.loss)  # α must be usable in float32 before the folder is claimed
    check_inputs(cfg, bundle)
    with _ranks(cfg), run_folder(out_p, cfg, command="retrain", resume=resume, overwrite=overwrite), \
            _progress(fmt, quiet) as progress:
        result = run_stage(out_p, "retrain", lambda d, r: retrain(
            pf.loss, bundle, cfg, augmentation=pf.augmentation, run_dir=d, resume=r,
            callbacks=[RichProgress(progress, "retrain", cfg)]))
        done = _finish_run(out_p, {"retrain": result})
    if done:
        _render_run(out_p, *done, fmt, "retrain")


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@option("--stage", default=None,
        help="which stage's model to evaluate (retrain, search, baseline-ce...) "
             "[default: retrain, else search, else a baseline]")
@command_options
def evaluate(run: str, stage: str | None, fmt: str) -> None:
    """Evaluate a run's trained model on its test set (balanced, worst-class, per-class error; many / medium /
    few-shot accuracy)."""
    from .evaluation import evaluate as evaluate_model
    from .inputs import normalization
    from .io import load_checkpoint
    from .report import summary_table
    from .runs import load_bundle, read_run
    from .search import build_model
    from .stage2 import load_stage2_classifier
    from .trainer import resolve_device

    run_p = Path(run)
    _, _, cfg = read_run(run_p)
    stages = [s for s in ("retrain", "search") if (run_p / s / "checkpoint.pt").exists()]
    stages += sorted(p.parent.name for p in run_p.glob("baseline-*/checkpoint.pt"))
    if stage is None:
        if not stages:
            raise ValueError(f"no checkpoint in {run}: train first (ab-plugin search / baseline)")
        stage = stages[0]
    elif stage not in stages:
        raise ValueError(f"no stage {stage!r} with a checkpoint in {run}: choose from {', '.join(stages) or 'none'}")
    ck = load_checkpoint(run_p / stage / "checkpoint.pt")
    bundle = load_bundle(Config.from_dict(ck["config"]))
    loss_name = stage.removeprefix("baseline-") if stage.startswith("baseline-") else "autobalance"
    model = build_model(cfg, bundle.train.num_classes, loss_name)
    model.load_state_dict(ck["model"])
    load_stage2_classifier(model, run_p / stage)  # the checkpoint keeps stage 1; stage 2's classifier is beside it
    device = resolve_device(cfg.device)
    mean, std = normalization(cfg, model, bundle)
    m = evaluate_model(model.to(device), bundle.test, mean=mean, std=std, device=device,
                       channels_last=cfg.channels_last, amp=cfg.amp, num_workers=cfg.loader_workers,
                       train_counts=bundle.train.class_counts().tolist()).to_dict()
    summary = {"stage": stage, "test_metrics": m, "balanced_error": m["balanced_error"]}
    emit(fmt, summary, lambda: console.print(summary_table(f"{run} ({stage})", {stage: summary})))


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@option("-o", "--output", type=click.Path(dir_okay=False), required=True,
        help="policy file to write (versioned JSON, .json); retrain and show read it")
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
@option("--heatmap", type=click.Path(dir_okay=False), default=None,
        help="where to write the PNG heat map of the per-class augmentation [default: beside the file, *.png]")
@command_options
def show(policy: str, heatmap: str | None, fmt: str) -> None:
    """Show a policy file (or a zoo name): per-class w, l, Δ and augmentation, plus a PNG heat map."""
    from .policies import load_policy
    from .policies._display import plot_policy_heatmap, policy_table

    pf = load_policy(policy)
    png = Path(heatmap) if heatmap else (Path(policy).with_suffix(".png") if Path(policy).exists()
                                          else Path(f"{policy}.png"))
    if pf.augmentation:  # beside the file may be read-only (an installed zoo): a warning, no file
        png = plot_policy_heatmap(pf, png, skip_unwritable=heatmap is None)
    summary = dataclasses.asdict(pf) if dataclasses.is_dataclass(pf) else dict(pf)

    def render() -> None:
        console.print(policy_table(pf))
        if pf.augmentation and png is not None:
            console.print(f"heat map: [bold]{png}[/]")

    emit(fmt, summary, render)


def _register() -> None:
    from .warmstart import warmstart_command

    main.add_command(warmstart_command, "warmstart")


_register()

if __name__ == "__main__":
    main()
