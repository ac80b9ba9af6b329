"""Optuna warm start: a coarse outer search over the knobs gradients do not reach, then gradient refinement.

The bilevel search learns α = (w, l, Δ, A) by hypergradients from an initialisation, with an upper
learning rate, on a validation split; those choices are not differentiable. ``ab-plugin warmstart`` runs an
Optuna study over them (:mod:`.space`), each trial a short proxy search (few epochs) whose per-epoch
validation balanced error is reported to the trial so that a pruner stops bad trials early (:mod:`.pruning`):

- the initialisation family and its strength: ``init`` in {la, cdt, vs} (``--inits``), LA τ (``tau``),
  CDT γ (``gamma``), VS both;
- the upper learning rate ``upper_lr`` (log scale);
- the validation split fraction ``val_fraction``;
- with ``--recipe-knobs`` (:class:`~.space.RecipeSpace`; off by default, so studies made without it resume
  as they were) the training recipe: ``weight_decay`` (log scale), mixup's ``mixup`` α (0 = off included;
  only with an engine that replays a batch's mix, ``head``), the DRW point ``drw_from`` (off or the start
  of a proxy epoch, the only points a proxy tells apart) and ``stage2`` (``auto``, the base search's own,
  ``none``, ``crt``, ``wb`` or ``search``; a trial with stage 2 applies it after its loop and is scored after
  it, so it is never pruned).
  The known-good points carry the base config's own recipe. ``--space NAME=LOW,HIGH`` sets any knob's range
  (``stage2=A,B``: its choices).

``ab-plugin search --warmstart STUDY|N`` (:func:`warmstart_config`, :mod:`.refine`) then starts the gradient
search from the best trial's settings, recipe included: the search and the retrain after it (and a later
``ab-plugin retrain RUN``, which reads the run's ``config.yaml``) train with the chosen weight decay, mixup,
DRW point and stage 2.

The study lives in a storage that survives a crash (:mod:`.storage`: ``OUT/study.db``, ``OUT/study.journal``
or a database server); rerunning the same command continues it, and every worker runs the *same* command::

    # one machine, 4 processes sharing OUT/study.db
    for i in 1 2 3 4; do ab-plugin warmstart --out runs/ws --n-trials 40 --quiet & done; wait
    # several machines, one PostgreSQL study
    ab-plugin warmstart --study-name ws-c10 --storage postgresql://ab:pw@db:5432/optuna --n-trials 200 --out runs/ws

``--n-trials`` is the study's total (:mod:`.study`); the trials of killed workers are failed and their
enqueued points retried (:mod:`.workers`).

Files in ``--out``: ``config.yaml`` (the base configuration), ``study.db`` or ``study.journal``,
``warmstart.json`` (summary), ``optuna_history.png``, ``optuna_intermediate.png``,
``optuna_importances.png`` (:mod:`.summary`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .pruning import TrialPruningCallback
from .refine import load_warmstart_study, warmstart_config
from .space import SearchSpace
from .study import WarmstartResult, run_warmstart

if TYPE_CHECKING:
    from .command import warmstart_command

__all__ = [
    "SearchSpace",
    "TrialPruningCallback",
    "WarmstartResult",
    "load_warmstart_study",
    "run_warmstart",
    "warmstart_command",
    "warmstart_config",
]


def __getattr__(name: str) -> Any:
    # the click command (and rich) load on first use: the trainer hook and the study API do not need them
    if name != "warmstart_command":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .command import warmstart_command

    return warmstart_command
