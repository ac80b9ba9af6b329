"""Click options generated from :class:`Config` (shared by every command that takes a run config), and the
command class that shows them in sections.

The help text of a config option is its field's ``metadata["help"]`` (:mod:`ab_plugin.config`): there is no
second copy here. Registered names (losses, engines...) and the default are appended when ``--help`` is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import click

from .config import GROUPS, Config

# Config fields without an option: reachable through --config YAML only.
_HIDDEN = {"engine_options", "milestones"}

#: ``--help`` sections: the config groups, then the command's own options.
SECTIONS = {**GROUPS, "command": "Command", "output": "Output and errors"}


class GroupedOption(click.Option):
    """A click option that knows its ``--help`` section (a key of :data:`SECTIONS`)."""

    def __init__(self, *args: Any, group: str = "command", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A click command whose ``--help`` lists its options in sections (data, model, lower level, ...), the way
    timm's ``train.py`` groups its arguments; a usage error honours ``--format json`` and torchrun's ranks
    (see :func:`report_usage_error`)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                rows.setdefault(getattr(param, "group", "output"), []).append(record)
        for key in [*SECTIONS, *sorted(set(rows) - set(SECTIONS))]:
            if key in rows:
                with formatter.section(SECTIONS.get(key, key)):
                    formatter.write_dl(rows[key])

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        given = list(args)  # click consumes ``args`` while parsing
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            report_usage_error(e, given)
            raise


def torchrun_rank() -> int:
    """This process's rank as ``torchrun`` announces it in the environment (0 outside torchrun): known before
    any process group starts, so only rank 0 prints an error."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


def wants_json(args: list[str]) -> bool:
    """Whether the command line asks for ``--format json`` (read before click has parsed it)."""
    return "--format=json" in args or any(args[i] == "--format" and args[i + 1] == "json" for i in range(len(args) - 1))


def error_document(message: str, exit_code: int) -> str:
    """The one JSON document a failed command prints on stdout under ``--format json``."""
    return json.dumps({"error": message, "exit_code": exit_code})


def report_usage_error(e: click.UsageError, args: list[str]) -> None:
    """Before click prints a usage error on stderr: under ``--format json`` the error as one JSON document on
    stdout; on a torchrun rank other than 0, nothing at all (rank 0 says it once) and exit 2."""
    if torchrun_rank() != 0:
        raise SystemExit(e.exit_code)
    if wants_json(args):
        click.echo(error_document(e.format_message(), e.exit_code))


def _named_choices() -> dict[str, Callable[[], list[str]]]:
    """Fields whose value is a registered name: their help lists the names (``Config.validate`` checks them,
    with a one-line error, for the command line and YAML alike)."""
    from .data import list_datasets
    from .hypergrad import list_engines
    from .losses import list_inits, list_losses, list_sharings
    from .objectives import list_objectives
    from .policies import list_policies
    from .stage2 import list_stage2

    return {"dataset": list_datasets, "loss": list_losses, "engine": list_engines, "objective": list_objectives,
            "augment": list_policies, "sharing": list_sharings, "init": list_inits, "stage2": list_stage2}


def _option_for(f: dataclasses.Field, choices: dict[str, Callable[[], list[str]]]) -> Callable:
    name = "--" + f.name.replace("_", "-")
    help_text, group = f.metadata["help"], f.metadata["group"]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if f.name in choices:
        names = ", ".join(choices[f.name]())
        shown = ",".join(default) if isinstance(default, tuple) else default
        return click.option(name, f.name, type=str, default=None, cls=GroupedOption, group=group,
                            help=f"{help_text}; one of {names} [default: {shown}]")
    if isinstance(default, bool):
        return click.option(f"{name}/--no-{name[2:]}", f.name, default=None, cls=GroupedOption, group=group,
                            help=f"{help_text} [default: {'on' if default else 'off'}]")
    # the annotation decides the type, so `int | None` fields (e.g. --n-max) parse as int
    ann = str(f.type)
    kind = int if ann.startswith("int") else float if ann.startswith("float") else str
    shown = "" if default is None else f" [default: {default}]"
    return click.option(name, f.name, type=kind, default=None, cls=GroupedOption, group=group, help=help_text + shown)


def config_options(fn: Callable) -> Callable:
    """Adds one option per Config field (help text from the field's metadata) plus --config; values given
    override the YAML."""
    from .losses import HPARAM_NAMES

    choices = {**_named_choices(), "learn": lambda: list(HPARAM_NAMES)}
    for f in reversed([f for f in dataclasses.fields(Config) if f.name not in _HIDDEN]):
        fn = _option_for(f, choices)(fn)
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, cls=GroupedOption,
                      group="command", help="YAML file of config keys (a run folder's config.yaml works as it "
                                            "is); the options given on the command line override it")(fn)
    return fn


def resolve_config(kwargs: dict[str, Any], base: Config | None = None) -> Config:
    """The run's validated :class:`Config`: ``base`` (or the --config YAML, or the defaults) with the options
    actually given on top. Consumes the config options from ``kwargs``."""
    if kwargs.get("config_file"):
        base = Config.from_yaml(kwargs["config_file"])
    base = base or Config()
    kwargs.pop("config_file", None)
    names = {f.name for f in dataclasses.fields(Config)}
    # `learn` arrives as a comma list, which Config reads; an empty one counts as not given
    changes = {k: v for k, v in kwargs.items() if k in names and v is not None and not (k == "learn" and not v)}
    cfg = base.replace(**changes)
    cfg.validate()
    datasets = _named_choices()["dataset"]()
    if cfg.dataset.partition(":")[0] not in datasets:
        raise ValueError(f"unknown --dataset {cfg.dataset!r}: choose from {', '.join(datasets)} (imagefolder:PATH, "
                         "imagenet-lt:ROOT, listfile:TRAIN.txt,TEST.txt)")
    return cfg
