"""Reading a finished (or running) study: its best trial, a JSON-ready summary and Optuna's plots."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_write
from ._names import ATTR_SURPLUS, PLOT_HISTORY, PLOT_IMPORTANCES, PLOT_INTERMEDIATE
from ._optuna import import_optuna

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The complete trial of lowest validation balanced error (ties: the earliest)."""
    ts = import_optuna().trial.TrialState
    done = [t for t in study.get_trials(deepcopy=False, states=(ts.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        counts = _state_counts(study)
        raise ValueError(f"study {study.study_name!r} has no complete trial yet "
                         f"({', '.join(f'{k} {v}' for k, v in counts.items() if v) or 'no trials'}): "
                         "let `ab-plugin warmstart` finish at least one trial")
    return min(done, key=lambda t: (t.value, t.number))


def _state_counts(study: optuna.Study) -> dict[str, int]:
    ts = import_optuna().trial.TrialState
    counts = {s.name.lower(): 0 for s in (ts.COMPLETE, ts.PRUNED, ts.FAIL, ts.RUNNING, ts.WAITING)}
    counts["surplus"] = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == ts.FAIL and t.user_attrs.get(ATTR_SURPLUS):
            counts["surplus"] += 1
        else:
            counts[t.state.name.lower()] += 1
    return counts


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    steps = sorted(t.intermediate_values)
    return {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params),
            "last_step": steps[-1] if steps else None, "seconds": t.user_attrs.get("seconds")}


def summarize_study(study: optuna.Study, *, n_trials: int | None = None, top: int = 5) -> dict[str, Any]:
    """JSON-ready summary: state counts, the best trial, the ``top`` complete trials, pruned trials."""
    ts = import_optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == ts.COMPLETE and t.value is not None),
                      key=lambda t: (t.value, t.number))
    counts = _state_counts(study)
    best = _trial_row(complete[0]) if complete else None
    return {
        "study_name": study.study_name,
        "direction": "minimize",
        "metric": "validation balanced error",
        "n_trials": n_trials,
        "finished": counts["complete"] + counts["pruned"],
        "states": counts,
        "best": best,
        "top": [_trial_row(t) for t in complete[:top]],
        "pruned": [_trial_row(t) for t in trials if t.state == ts.PRUNED],
    }


def write_study_plots(study: optuna.Study, out: str | Path) -> tuple[list[Path], dict[str, str]]:
    """Optuna's optimisation history, intermediate values and parameter importances as PNG files in ``out``.

    Returns the written paths and ``{plot: reason}`` for the plots skipped (importances need at least two
    complete trials whose parameters vary).
    """
    optuna = import_optuna()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    out = Path(out)
    ts = optuna.trial.TrialState
    complete = [t for t in study.get_trials(deepcopy=False, states=(ts.COMPLETE,)) if t.value is not None]
    varied = len({t.value for t in complete}) > 1 and any(
        len({json.dumps(u.params.get(k)) for u in complete}) > 1 for t in complete for k in t.params)
    has_curves = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    plan: list[tuple[str, str, Callable[[], Any] | None]] = [
        ("history", PLOT_HISTORY, (lambda: vis.plot_optimization_history(study)) if complete else None),
        ("intermediate", PLOT_INTERMEDIATE, (lambda: vis.plot_intermediate_values(study)) if has_curves else None),
        ("importances", PLOT_IMPORTANCES,
         (lambda: vis.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)))
         if len(complete) >= 2 and varied else None),
    ]
    reasons = {"history": "no complete trial", "intermediate": "no reported values",
               "importances": "needs at least 2 complete trials whose parameters and values vary"}
    written, skipped = [], {}
    for key, name, make in plan:
        if make is None:
            skipped[key] = reasons[key]
            continue
        try:
            # rc_context: optuna switches pyplot to its ggplot style; other plots of the process keep theirs
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")  # optuna's matplotlib backend is marked experimental
                ax = make()
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                atomic_write(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=110,
                                                                        bbox_inches="tight"))
            plt.close(fig)
            written.append(out / name)
        except Exception as e:  # a plot never costs the study's result
            skipped[key] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            plt.close("all")
    return written, skipped
