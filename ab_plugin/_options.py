"""Click options generated from :class:`Config` (shared by every command that takes a run config)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from .config import Config

# Config fields exposed as options; the rest stay reachable through --config YAML.
_HIDDEN = {"engine_options", "milestones", "learn"}


def _named_choices() -> dict[str, Callable[[], list[str]]]:
    """Fields whose value is a registered name: their help lists the names (``Config.validate`` checks them,
    with a one-line error, for the command line and YAML alike)."""
    from .data import list_datasets
    from .hypergrad import list_engines
    from .losses import list_losses, list_sharings
    from .objectives import list_objectives
    from .policies import list_policies

    return {"dataset": list_datasets, "loss": list_losses, "engine": list_engines, "objective": list_objectives,
            "augment": list_policies, "sharing": list_sharings}


def _option_for(f: dataclasses.Field, choices: dict[str, Callable[[], list[str]]]) -> Callable:
    name = "--" + f.name.replace("_", "-")
    default = f.default
    if f.name in choices:
        names = ", ".join(choices[f.name]())
        return click.option(name, f.name, type=str, default=None, help=f"one of {names} [default: {default}]")
    if isinstance(default, bool):
        return click.option(f"{name}/--no-{name[2:]}", f.name, default=None, help=f"[default: {default}]")
    # the annotation decides the type, so `int | None` fields (e.g. --n-max) parse as int
    ann = str(f.type)
    kind = int if ann.startswith("int") else float if ann.startswith("float") else str
    return click.option(name, f.name, type=kind, default=None, help=f"[default: {default}]")


def config_options(fn: Callable) -> Callable:
    """Adds one option per Config field plus --config, --learn; values given override the YAML."""
    from .losses import HPARAM_NAMES

    choices = _named_choices()
    for f in reversed([f for f in dataclasses.fields(Config) if f.name not in _HIDDEN]):
        fn = _option_for(f, choices)(fn)
    fn = click.option("--learn", "learn", default=None,
                      help=f"comma list of {','.join(HPARAM_NAMES)} [default: logit_bias,logit_scale]")(fn)
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                      help="YAML file of config keys; command-line options override it")(fn)
    return fn


def _resolve_config(kwargs: dict[str, Any], base: Config | None = None) -> Config:
    """``base`` (or the --config YAML, or the defaults) with the options actually given on top."""
    if kwargs.get("config_file"):
        base = Config.from_yaml(kwargs["config_file"])
    base = base or Config()
    kwargs.pop("config_file", None)
    learn = kwargs.pop("learn", None)
    names = {f.name for f in dataclasses.fields(Config)}
    changes = {k: v for k, v in kwargs.items() if k in names and v is not None}
    if learn:
        changes["learn"] = learn  # Config reads a comma list
    cfg = base.replace(**changes)
    cfg.validate()
    datasets = _named_choices()["dataset"]()
    if cfg.dataset.partition(":")[0] not in datasets:
        raise ValueError(f"unknown --dataset {cfg.dataset!r}: choose from {', '.join(datasets)} (imagefolder:PATH, "
                         "imagenet-lt:ROOT, listfile:TRAIN.txt,TEST.txt)")
    return cfg
