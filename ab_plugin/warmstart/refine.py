"""From a study to the gradient search: ``ab-plugin search --warmstart STUDY|N`` starts from the best trial."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ._names import ATTR_SETTINGS, STUDY_DB, STUDY_JOURNAL, SUMMARY
from ._optuna import import_optuna
from .space import SearchSpace, params_to_config
from .storage import StorageSpec, open_storage, resolve_storage, study_names
from .study import run_warmstart
from .summary import best_trial

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from ..data import DatasetBundle


def warmstart_config(base: Config, spec: str, *, storage: str | None, out: Path,
                     callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
                     bundle: DatasetBundle | None = None, space: SearchSpace | None = None) -> Config:
    """``base`` updated with the best warm-start trial's settings (``init``, ``tau``/``gamma``, ``upper_lr``,
    ``val_fraction``; from a ``--recipe-knobs`` study also ``weight_decay``, ``mixup``, ``drw_from``,
    ``stage2``), for ``ab-plugin search --warmstart SPEC``: they win over ``base``'s, and since a search's
    retrain runs the search's config, the retrain trains with them too.

    ``spec``: an integer N runs (or resumes) an N-trial study of ``space`` (default: :class:`~.space.SearchSpace`,
    no recipe knobs) in ``out/warmstart`` first, with the proxy length :func:`~.space.default_trial_epochs` of
    ``base.epochs``; a warmstart run folder (holding ``study.db`` or ``study.journal``); or a study name in
    ``storage`` (a database URL). A study that exists already was made with its own space: ``space`` is then
    refused.
    """
    s = str(spec).strip()
    if s.isdigit() or (s.startswith("-") and s[1:].isdigit()):
        n = int(s)
        if n < 1:
            raise ValueError(f"--warmstart N needs N >= 1 trials, got {n}")
        result = run_warmstart(base, Path(out) / "warmstart", n_trials=n, storage=storage, space=space,
                               study_name=f"{Path(out).resolve().name}-warmstart", callbacks=callbacks, bundle=bundle)
        study = result.study
    else:
        if space is not None:
            raise ValueError(f"--warmstart {s} names a finished study, whose space is fixed: the recipe knobs "
                             "(--warmstart-recipe-knobs) go with --warmstart N, or with `ab-plugin warmstart "
                             "--recipe-knobs`")
        study = load_warmstart_study(s, storage=storage)
    return params_to_config(base, best_trial(study).params)


def study_config(spec: str, *, storage: str | None) -> Config | None:
    """The search configuration a finished study ran its trials with (data, backbone, schedule; its per-machine
    keys ``device`` / ``data_dir`` left at their defaults), or ``None`` for ``spec`` N (the study is yet to run,
    from the command's own options) and for a study not made by ``ab-plugin warmstart``.

    ``ab-plugin search --warmstart STUDY`` starts from it, so the refined search trains on the study's data and
    model unless an option says otherwise."""
    s = str(spec).strip()
    if s.isdigit() or (s.startswith("-") and s[1:].isdigit()):
        return None
    settings = load_warmstart_study(s, storage=storage).user_attrs.get(ATTR_SETTINGS)
    return None if not settings else Config.from_dict(settings["config"])


def load_warmstart_study(spec: str | Path, *, storage: str | None = None, study_name: str | None = None
                         ) -> optuna.Study:
    """Load a study from a warmstart run folder (``study.db`` / ``study.journal`` inside) or by name from
    ``storage``. Errors name the fix (study not found, no storage given, several studies in one file)."""
    optuna = import_optuna()
    sspec, name = _locate(spec, storage, study_name)
    stor = open_storage(sspec)
    names = study_names(stor)
    if name is None:
        if len(names) != 1:
            raise ValueError(f"{sspec.display} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                             "name the one to use")
        name = names[0]
    if name not in names:
        raise ValueError(f"study {name!r} not found in {sspec.display}: choose one of "
                         f"{', '.join(names) or '(none: run `ab-plugin warmstart` first)'}")
    return optuna.load_study(study_name=name, storage=stor)


def _locate(spec: str | Path, storage: str | None, study_name: str | None) -> tuple[StorageSpec, str | None]:
    """The storage and study name ``spec`` points to (``None``: the storage's only study)."""
    folder = Path(spec)
    if folder.is_dir():
        if (folder / STUDY_DB).exists():
            sspec = resolve_storage("sqlite", folder)
        elif (folder / STUDY_JOURNAL).exists():
            sspec = resolve_storage("journal", folder)
        elif storage is not None:
            sspec = resolve_storage(storage, folder)
        else:
            raise ValueError(f"{folder} holds no study ({STUDY_DB} or {STUDY_JOURNAL}): pass a warmstart run folder, "
                             "or a study name together with its storage URL")
        return sspec, study_name or _read_summary(folder).get("study_name")
    if storage is None or storage in ("sqlite", "journal"):
        raise ValueError(f"--warmstart {str(spec)!r} is neither a number of trials nor a warmstart run folder: "
                         "pass N, a folder made by `ab-plugin warmstart`, or a study name with its --storage URL")
    return resolve_storage(storage, Path.cwd()), study_name or str(spec)


def _read_summary(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
