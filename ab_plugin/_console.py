"""Terminal rendering shared by every click command: one-line errors, progress bars, JSON or table output.

rich is used only here and in the command modules.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ._options import GroupedOption, error_document, torchrun_rank
from .callbacks import TrainerCallback
from .config import Config

console = Console(stderr=True)

#: Errors shown as one line by default (bad input, missing files, I/O); anything else is a bug: traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError, OSError)


def _is_user_error(e: BaseException) -> bool:
    return isinstance(e, USER_ERRORS)


def command_options(fn: Callable | None = None, *, stopped: str = "",
                    user_error: Callable[[BaseException], bool] = _is_user_error) -> Callable:
    """--format, --debug and one-line errors for every command.

    ``@command_options`` as it is, or ``@command_options(stopped=..., user_error=...)`` for a command whose
    Ctrl-C leaves something behind that the interrupt itself does not name (``stopped``: the message after
    "stopped: "; a run folder's interrupt names what was saved) or whose one-line errors are a different set
    (``user_error(e)``: show ``e`` as one line; default: :data:`USER_ERRORS`). Library warnings show as one
    ``warning:`` line each.
    """
    if fn is None:
        return functools.partial(command_options, stopped=stopped, user_error=user_error)

    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", cls=GroupedOption,
                  group="output", help='table: rich tables and progress bars on the terminal; json: one JSON '
                                       'document on stdout for scripts (on failure: {"error": ..., "exit_code": ...})')
    @click.option("--debug", is_flag=True, cls=GroupedOption, group="output",
                  help="show the full Python traceback of an error instead of its one-line message")
    @functools.wraps(fn)
    def wrapper(*args: Any, fmt: str, debug: bool, **kwargs: Any) -> Any:
        # under torchrun every rank runs this command: rank 0 alone reports an error (known from the
        # environment, before any process group starts); every rank exits with the same code
        speaks = torchrun_rank() == 0
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return fn(*args, fmt=fmt, **kwargs)
        except KeyboardInterrupt as e:
            # a run folder's KeyboardInterrupt says what was saved (see ab_plugin.runs.run_folder)
            msg = str(e) or ("stopped: " + stopped if stopped else "stopped")
            if speaks:
                _fail_json(fmt, msg, 130)
                click.echo(msg, err=True)
            sys.exit(130)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if debug or not user_error(e):
                if speaks:
                    _fail_json(fmt, f"{type(e).__name__}: {msg}", 1)
                raise
            if speaks:
                _fail_json(fmt, msg, 2)
                click.echo(f"error: {msg}", err=True)
            sys.exit(2)

    return wrapper


def _fail_json(fmt: str, message: str, exit_code: int) -> None:
    """Under ``--format json``, a failed command's one JSON document on stdout (none was printed before it:
    a command emits its result last, see :func:`emit`)."""
    if fmt == "json":
        click.echo(error_document(message, exit_code))


def warn(message: str) -> None:
    """One warning line on stderr (never wrapped, so scripts can grep it)."""
    click.echo(f"warning: {message}", err=True)


def _show_warning(message: Warning | str, *args: Any, **kwargs: Any) -> None:
    warn(str(message).splitlines()[0])


class RichProgress(TrainerCallback):
    """Trainer callback: one progress bar per stage with ETA and live metrics."""

    def __init__(self, progress: Progress, stage: str, cfg: Config) -> None:
        self.progress, self.stage, self.cfg = progress, stage, cfg
        self.task = None

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        if self.task is None:
            total = self.cfg.epochs * trainer.steps_per_epoch
            self.task = self.progress.add_task(self.stage, total=total, completed=trainer.state.step, info="")

    def on_step_end(self, trainer: Any, step: int, loss: float | None) -> None:
        self.progress.update(self.task, completed=step)

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        info = f"epoch {epoch + 1}/{self.cfg.epochs} loss {record['train_loss']:.3f}"
        if "val" in record:
            info += f" val bal.err {100 * record['val']['balanced_error']:.1f}%"
        if record.get("upper_active"):
            info += f" hyper-steps {record['hyper_steps']}"
        self.progress.update(self.task, info=info)


def make_progress(enabled: bool, *, counts: bool = False) -> Progress:
    """One bar per task with elapsed time, ETA and the task's ``info`` field; ``counts``: show
    ``completed/total`` (e.g. trials) instead of a percentage."""
    amount = TextColumn("{task.completed}/{task.total}") if counts else TextColumn("{task.percentage:>3.0f}%")
    return Progress(TextColumn("[bold]{task.description:<14}"), BarColumn(), amount,
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, disable=not enabled, transient=False)


def emit(fmt: str, summary: dict[str, Any], render: Callable[[], None]) -> None:
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
    else:
        render()
