"""``ab-plugin warmstart``: the click command, its progress bar and its rich tables (rendering through
:mod:`ab_plugin._console`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._console import USER_ERRORS, command_options, console, emit, make_progress
from .._options import GroupedCommand, GroupedOption, config_options, resolve_config
from ..config import Config
from ._optuna import finished_states, import_optuna
from .pruning import create_pruner
from .space import PROXY_STAGE2, RecipeSpace, SearchSpace, space_from_options
from .storage import resolve_storage
from .study import WarmstartResult, run_warmstart

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def _option(*names: str, **kwargs: Any) -> Any:
    """``click.option`` of the command's own options: the "Command" section of --help."""
    return click.option(*names, cls=GroupedOption, **kwargs)


def _space_help() -> str:
    """``--space``'s help: each knob with its default range (``stage2``: its choices)."""

    def shown(ranges: dict[str, list[Any]]) -> str:
        return ", ".join(f"{k}={','.join(f'{v:g}' if isinstance(v, float) else v for v in values)}"
                         for k, values in ranges.items() if k != "inits")

    return (f"range of a searched knob, repeatable [defaults: {shown(SearchSpace().to_dict())}; with "
            f"--recipe-knobs {shown(RecipeSpace().to_dict())} (stage2: choices among {', '.join(PROXY_STAGE2)})]")


def _is_user_error(e: BaseException) -> bool:
    """One-line errors: bad input and I/O, a missing optional package, storage and database problems."""
    return isinstance(e, (*USER_ERRORS, ImportError)) or type(e).__module__.split(".")[0] in ("optuna", "sqlalchemy")


@click.command(name="warmstart", cls=GroupedCommand,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_option("--out", type=click.Path(file_okay=False), default="runs/warmstart", show_default=True,
         help="run folder (config.yaml, study.db / study.journal, warmstart.json, plots)")
@_option("--n-trials", type=click.IntRange(min=1), default=20, show_default=True,
         help="total finished (complete + pruned) trials of the study, over all workers")
@_option("--study-name", default=None,
         help="study name shared by all workers [default: the --out folder's name]")
@_option("--storage", default="sqlite", show_default=True,
         help="sqlite (OUT/study.db), journal (OUT/study.journal) or a database URL "
              "(postgresql://user:pw@host:5432/db) for workers on several machines")
@_option("--pruner", default="median", show_default=True,
         help="how trials whose validation error lags are stopped early: median | hyperband | percentile:P | "
              "threshold:X | none")
@_option("--pruner-startup", type=click.IntRange(min=0), default=5, show_default=True,
         help="trials completed before the median / percentile pruner prunes")
@_option("--sampler", type=click.Choice(["tpe", "random"]), default="tpe", show_default=True,
         help="Optuna sampler proposing each trial's values, seeded with --seed")
@_option("--trial-epochs", type=click.IntRange(min=1), default=None,
         help="epochs of each proxy search [default: --epochs / 6, at least 2]")
@_option("--inits", default="la,cdt,vs", show_default=True,
         help="initialisation families searched (comma list of neutral, la, cdt, vs)")
@_option("--recipe-knobs", is_flag=True,
         help="also search the training recipe: --weight-decay (log scale), --mixup α (0: off; with the head "
              "engine only), the --drw-from point (off or a proxy epoch's start) and --stage2; the search that "
              "refines the best trial and its retrain train with them")
@_option("--space", "ranges", multiple=True, metavar="NAME=LOW,HIGH", help=_space_help())
@_option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
         help="stop this worker after this many SECONDS of wall time (the study stays resumable) [default: none]")
@_option("--quiet", is_flag=True, help="no progress bar (the result is still printed)")
@command_options(stopped="finished trials are in the study; rerun the same command to continue",
                 user_error=_is_user_error)
@config_options
def warmstart_command(out: str, n_trials: int, study_name: str | None, storage: str, pruner: str, pruner_startup: int,
                      sampler: str, trial_epochs: int | None, inits: str, recipe_knobs: bool, ranges: tuple[str, ...],
                      timeout: float | None, quiet: bool, fmt: str, **kwargs: Any) -> None:
    """Optuna warm start: a coarse study over the init family and strength (LA τ, CDT γ, VS), the upper
    learning rate and the validation fraction (with --recipe-knobs also weight decay, mixup, the DRW point and
    stage 2); each trial a short proxy search, pruned early when its validation balanced error lags. Rerunning
    the same command continues the study.

    \b
    Examples:
      ab-plugin warmstart --backbone resnet20 --epochs 30 --n-trials 20 --out runs/ws
      ab-plugin search --warmstart runs/ws --epochs 30 --out runs/demo   # refine from the best trial
      ab-plugin search --warmstart 20 --out runs/demo                      # both in one go
      ab-plugin warmstart --recipe-knobs --space mixup=0,0.5 --space stage2=none,crt --out runs/wsr
    \b
    Workers (each runs the same command; --n-trials is the study's total):
      for i in 1 2 3 4; do ab-plugin warmstart --out runs/ws --n-trials 40 --quiet & done; wait
      ab-plugin warmstart --storage journal --out runs/ws ...              # journal file, same machine
      ab-plugin warmstart --study-name ws --storage postgresql://ab:pw@db:5432/optuna --out runs/ws ...
    """
    cfg = resolve_config(kwargs)
    space = space_from_options(inits, recipe=recipe_knobs, ranges=ranges)
    resolve_storage(storage, Path(out))  # bad --storage fails before any data is loaded
    create_pruner(pruner, max_resource=1)
    result = _run_with_progress(cfg, Path(out), enabled=fmt == "table" and not quiet, n_trials=n_trials,
                                study_name=study_name, storage=storage, pruner=pruner, pruner_startup=pruner_startup,
                                sampler=sampler, trial_epochs=trial_epochs, space=space, timeout=timeout)
    emit(fmt, result.summary, lambda: _render(result.summary))


def _run_with_progress(cfg: Config, out: Path, *, enabled: bool, n_trials: int, **kwargs: Any) -> WarmstartResult:
    complete, pruned = finished_states()

    with make_progress(enabled, counts=True) as progress, _quiet_optuna():
        task = progress.add_task("warm start", total=n_trials, info="")

        def update(study: optuna.Study, trial: FrozenTrial) -> None:
            done = study.get_trials(deepcopy=False, states=(complete, pruned))
            scored = [t for t in done if t.state == complete and t.value is not None]
            info = f"trial {trial.number} {trial.state.name.lower()}"
            if scored:
                b = min(scored, key=lambda t: t.value)
                info += f" · best {100 * b.value:.1f}% (#{b.number})"
            info += f" · pruned {sum(t.state == pruned for t in done)}"
            progress.update(task, completed=min(n_trials, len(done)), info=info)

        return run_warmstart(cfg, out, n_trials=n_trials, callbacks=[update], **kwargs)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    optuna = import_optuna()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _fmt_params(params: dict[str, Any]) -> dict[str, str]:
    """Table cells: floats to 3 digits, ``None`` (the DRW point's off) as "off"."""
    return {k: (f"{v:.3g}" if isinstance(v, float) else "off" if v is None else str(v)) for k, v in params.items()}


def _render(summary: dict[str, Any]) -> None:
    from rich.table import Table

    keys = ["init", "tau", "gamma", "upper_lr", "val_fraction"]
    keys += sorted({k for r in summary["top"] for k in r["params"]} - set(keys))
    table = Table(title=f"warm start {summary['study_name']!r}: best trials (validation balanced error)")
    for col in ("#", "val error", *keys, "epochs", "seconds"):
        table.add_column(col, justify="left" if col in ("init",) else "right")
    for r in summary["top"]:
        p = _fmt_params(r["params"])
        table.add_row(str(r["number"]), f"{100 * r['value']:.2f}%", *[p.get(k, "-") for k in keys],
                      str(r["last_step"] or "-"), f"{r['seconds']:.1f}" if r["seconds"] is not None else "-")
    console.print(table)
    states = Table(title="trials by state")
    shown = {k: v for k, v in summary["states"].items() if v or k in ("complete", "pruned")}
    for k in shown:
        states.add_column(k, justify="right")
    states.add_row(*[str(v) for v in shown.values()])
    console.print(states)
    if summary.get("best"):
        b = summary["best"]
        console.print(f"best: trial [bold]{b['number']}[/] {100 * b['value']:.2f}% with "
                      + ", ".join(f"{k}={v}" for k, v in _fmt_params(b["params"]).items()))
    console.print(f"study {summary['study_name']!r} in [bold]{summary['storage']}[/]; "
                  f"plots: {', '.join(summary.get('plots') or []) or 'none'}")
    console.print(f"next: [bold]ab-plugin search --warmstart {summary['out']}[/] (refines from the best trial)")
