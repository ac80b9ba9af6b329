"""Stage 2 driven from a :class:`~ab_plugin.trainer.Trainer`: thin wrappers that compute the frozen backbone's
features once and hand them to the functional core (linear probe, recipes, exact search of α)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Split
from ..distributed import barrier, is_rank_zero
from ..io import load_checkpoint, save_checkpoint
from ..models import split_model
from ..trainer import CHECKPOINT, Trainer
from ..upper import UpperLevel
from ._classifier import fit_classifier
from ._exact import SearchTrace, search_alpha
from ._features import Features, features_of
from ._recipes import Info, float64_copy, get_recipe, stage2_weight_decay

#: a stage folder's finished stage 2, beside the checkpoint (which keeps stage 1 for a resumed loop)
STAGE2_FILE = "stage2.pt"


def save_stage2(trainer: Trainer, result: dict[str, Any]) -> None:
    """Write the finished stage 2 into the trainer's run folder (if any), atomically: the classifier it left
    (weight ``[C, D]``, bias ``[C]``: τ-normalised, MaxNorm-projected or solved, as the test metrics saw it), the
    loss's state (the search's α*) and ``result`` (the :class:`~ab_plugin.search.RunResult` fields stage 2 set,
    plain data)."""
    if trainer.run_dir is None:
        return
    if is_rank_zero():
        save_checkpoint(Path(trainer.run_dir) / STAGE2_FILE, {
            "classifier": linear_classifier(trainer).state_dict(), "loss": trainer.loss.state_dict(),
            "result": result})
    barrier()


def load_stage2(trainer: Trainer) -> dict[str, Any] | None:
    """The ``result`` of a stage 2 that finished in the trainer's run folder, with its classifier and loss state
    loaded into the trainer (so that a resumed run neither redoes it nor applies a recipe twice); ``None``
    when it did not finish there."""
    path = None if trainer.run_dir is None else Path(trainer.run_dir) / STAGE2_FILE
    if path is None or not path.exists():
        return None
    saved = load_checkpoint(path, map_location=trainer.device)
    linear_classifier(trainer).load_state_dict(saved["classifier"])
    trainer.loss.load_state_dict(saved["loss"])
    return saved["result"]


def load_stage2_classifier(model: nn.Module, stage_dir: Path) -> bool:
    """Load the classifier of the stage 2 that finished in ``stage_dir`` (if one did) into ``model``, whose
    checkpoint holds stage 1; whether there was one."""
    path = stage_dir / STAGE2_FILE
    if not path.exists():
        return False
    split_model(model)[1].load_state_dict(load_checkpoint(path)["classifier"])
    return True


def linear_classifier(trainer: Trainer) -> nn.Linear:
    """The trainer's classifier, which stage 2 needs to be a plain linear layer."""
    clf = trainer.classifier
    if type(clf) is not nn.Linear:
        raise ValueError(f"stage 2 and --freeze-backbone re-train a linear classifier; this model's is a "
                         f"{type(clf).__name__} (LDAM's normed head?): use another loss or --stage2 none")
    return clf


def trainer_features(trainer: Trainer, data: Split) -> Features:
    """``data``'s features by the trainer's model (eval mode, no augmentation), computed once."""
    return features_of(trainer.model, data, mean=trainer.mean, std=trainer.std, device=trainer.device,
                       channels_last=trainer.cfg.channels_last, num_workers=trainer.cfg.loader_workers)


def linear_probe(trainer: Trainer) -> Features:
    """Stage 1 of a frozen backbone: the classifier trained on the training split's features, computed once,
    with the run's loss and lower-level settings (``--epochs``, ``--batch-size``, ``--lr`` on a cosine without
    warm-up, ``--momentum``, ``--weight-decay``; every example once per epoch). Marks the trainer's stage as
    finished and saves its checkpoint. Returns the features (stage 2 reuses them)."""
    cfg, t0 = trainer.cfg, time.perf_counter()
    train = trainer_features(trainer, trainer.train_data)
    fit_classifier(linear_classifier(trainer), *train.pair(), trainer.loss, epochs=cfg.epochs,
                   batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                   seed=cfg.seed)
    st = trainer.state
    st.epoch, st.seconds = cfg.epochs, st.seconds + time.perf_counter() - t0
    if trainer.run_dir is not None:
        trainer.save(trainer.run_dir / CHECKPOINT)
    return train


def apply_recipe(trainer: Trainer, name: str, val: Split | None = None, train: Features | None = None) -> Info:
    """Recipe ``name`` on the trainer's classifier (in place) with the trainer's loss, on the training split's
    features (``train`` when already computed) and, for a recipe that chooses on them, ``val``'s. The info
    holds the recipe's choices and ``seconds``."""
    t0 = time.perf_counter()
    recipe = get_recipe(name)
    if recipe.needs_val and val is None:
        raise ValueError(f"stage-2 recipe {name!r} chooses on a validation split: pass val=")
    clf = linear_classifier(trainer)
    train = train or trainer_features(trainer, trainer.train_data)
    info = recipe.apply(clf, trainer.loss, train, trainer_features(trainer, val) if recipe.needs_val else None,
                        trainer.cfg)
    return {"recipe": name, **info, "seconds": time.perf_counter() - t0}


def exact_search(trainer: Trainer, val: Split, objective: Callable[..., Tensor]) -> tuple[SearchTrace, Info]:
    """The exact stage-2 search of the trainer's α on its frozen backbone: training and ``val`` features once
    (float64), ``--stage2-hyper-steps`` hyper-steps, α's optimizer from the ``--upper-*`` options (no warm-up;
    averaged over the last ``--upper-average`` of the steps). Leaves α* in the trainer's loss and the
    classifier solved for it in the model."""
    cfg = trainer.cfg
    train_f, val_f = (trainer_features(trainer, s).to(torch.float64) for s in (trainer.train_data, val))
    steps = cfg.stage2_hyper_steps
    upper = UpperLevel(trainer.loss.hparameters(), optimizer=cfg.upper_optimizer, lr=cfg.upper_lr,
                       momentum=cfg.upper_momentum, weight_decay=cfg.upper_weight_decay, clip=cfg.clip,
                       average_from=int(steps * (1 - cfg.upper_average)) if cfg.upper_average > 0 else None)
    clf = linear_classifier(trainer)
    exact = float64_copy(clf)
    trace = search_alpha(exact, trainer.loss, objective, train_f.pair(), val_f.pair(), upper, steps=steps,
                         weight_decay=stage2_weight_decay(cfg), tol=1e-7)
    clf.load_state_dict(exact.state_dict())
    info = {"recipe": "search", "hyper_steps": trace.hyper_steps, "seconds": trace.seconds,
            "seconds_per_hyper_step": trace.seconds / max(1, trace.hyper_steps),
            "max_solve_grad_norm": trace.max_solve_grad_norm}
    return trace, info
