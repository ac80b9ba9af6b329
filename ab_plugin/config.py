"""Run configuration: one dataclass, loadable from YAML (safe) and overridable from the CLI.

Every field carries its explanation in ``metadata``: ``help`` (what it does, its unit), ``group`` (the
section of ``--help`` it shows in) and, for numbers, ``range`` (the inclusive bounds ``validate`` checks).
The command-line options (:mod:`ab_plugin._options`) are generated from these fields, so the text lives here
only once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Sections of ``--help``, in order (the way timm's ``train.py`` groups its options).
GROUPS = {
    "data": "Dataset",
    "model": "Model",
    "lower": "Lower level: optimizer and learning-rate schedule",
    "augment": "Augmentation",
    "recipe": "Training recipe: mixup / CutMix and deferred re-weighting (every run kind)",
    "loss": "Loss family (α and its initialisation)",
    "upper": "Upper level: the search of α",
    "stage2": "Stage 2: classifier re-training on frozen features",
    "run": "Run and device",
}

#: Keys a run folder's ``config.yaml`` holds beside the config (the command and its options): ``--config``
#: accepts such a file as it is and ignores them.
RUN_KEYS = ("command", "options")

#: Limits on what a config value may hold (a YAML alias bomb expands far beyond them).
MAX_STR = 4096
MAX_ITEMS = 256
MAX_INT = 2**53


def _opt(default: Any = dataclasses.MISSING, *, group: str, help: str, range: tuple[float, float] | None = None,
         factory: Any = dataclasses.MISSING) -> Any:
    meta = {"help": help, "group": group, **({"range": range} if range else {})}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """Every knob of a training, search or retrain run. Each field's ``metadata["help"]`` says what it does and
    in which unit (epochs are whole passes over the training split; fractions such as ``upper_start`` are of
    the run's epochs, ``upper_average`` of its hyper-steps); ``--help`` shows the same text."""

    # data
    dataset: str = _opt("digits-lt", group="data", help=(
        "dataset to train on: a registered name, imagefolder:PATH (train/ and test/ folders of class folders), "
        "imagenet-lt:ROOT or listfile:TRAIN.txt,TEST.txt"))
    data_dir: str | None = _opt(None, group="data", help=(
        "folder holding (or receiving, with --download) the torchvision datasets such as CIFAR"))
    imbalance: float = _opt(100.0, group="data", help=(
        "imbalance ratio: images of the largest class / images of the smallest (>= 1) when the dataset is "
        "subsampled into a long tail"))
    profile: str = _opt("exp", group="data", help=(
        "shape of the long tail between the largest and smallest class: exp (exponential), exp_floor or step"))
    n_max: int | None = _opt(None, group="data", range=(1, 10**9), help=(
        "training images of the largest class after subsampling [default: all the dataset has]"))
    val_fraction: float = _opt(0.2, group="data", help=(
        "fraction (0, 1) of each class's training images held out as the search's validation split"))
    val_min_per_class: int = _opt(1, group="data", range=(1, 10**6), help=(
        "validation images per class at least (never more than half a class)"))
    image_size: int | None = _opt(None, group="data", range=(1, 8192), help=(
        "pixels (square): list-file datasets' crop size (default 224); the others: resize every image to it "
        "(default: as it is)"))
    mean: tuple[float, ...] | None = _opt(None, group="data", help=(
        "per-channel normalisation mean of images scaled to [0, 1] (R,G,B), instead of the dataset's statistics "
        "or a pretrained timm model's"))
    std: tuple[float, ...] | None = _opt(None, group="data", help=(
        "per-channel normalisation std (R,G,B, > 0), instead of the dataset's or a pretrained timm model's"))
    # model
    backbone: str = _opt("resnet32", group="model", help=(
        "network: resnet20 | resnet32 | resnet44 | resnet56 | resnet110 (CIFAR ResNets) or any timm model name"))
    pretrained: bool = _opt(False, group="model", help=(
        "start from pretrained weights: timm's own source for a timm model (its local cache; may download), "
        "the classifier re-initialised for the dataset's classes; CIFAR ResNets need --pretrained-file"))
    pretrained_file: str | None = _opt(None, group="model", help=(
        "local checkpoint to start from (a state_dict, or a dict with a state_dict / model key); the classifier "
        "is re-initialised for the dataset's classes (implies --pretrained)"))
    # lower level
    epochs: int = _opt(30, group="lower", range=(1, 100_000), help=(
        "passes over the training split, for the search and for each retrain / baseline"))
    batch_size: int = _opt(64, group="lower", range=(1, 2**20), help="images per lower-level step")
    lr: float = _opt(0.1, group="lower", help="peak learning rate of the model's SGD (after the warm-up), > 0")
    momentum: float = _opt(0.9, group="lower", range=(0.0, 1.0), help="SGD momentum of the model, in [0, 1]")
    freeze_backbone: bool = _opt(False, group="lower", help=(
        "linear probe: train only the classifier (the backbone's weights and BatchNorm statistics stay fixed)"))
    backbone_lr_scale: float = _opt(1.0, group="lower", help=(
        "the backbone's learning rate as a fraction of --lr, in (0, 1] (the classifier gets the full --lr)"))
    # 2e-3: chosen on protocol Q's tuning seeds 10-13 from {5e-4, 1e-3, 2e-3, 5e-3}, where it was the best
    # value for LA, LDAM-DRW and the default search alike (benchmarks/RESULTS.md, "The default weight decay")
    weight_decay: float = _opt(2e-3, group="lower", range=(0.0, math.inf), help=(
        "L2 weight decay of the model's SGD, >= 0"))
    warmup_epochs: float = _opt(2.0, group="lower", range=(0.0, math.inf), help=(
        "epochs over which the learning rate ramps up linearly to --lr (fractions allowed)"))
    schedule: str = _opt("cosine", group="lower", help=(
        "learning-rate decay after the warm-up: cosine (to 0 at the end) or step (x0.1 at the milestones)"))
    milestones: tuple[float, ...] = _opt(group="lower", factory=lambda: (0.733, 0.867), help=(
        "step schedule: x0.1 at these fractions (0, 1) of the epochs"))
    # augmentation
    augment: str = _opt("fixed", group="augment", help=(
        "fixed: crop + flip; generic: one learned policy for all classes; learned: a per-class learned policy "
        "(PDA); bank: per-class learned mixture over a bank of CUDA strengths 0,2,..,10, through the expected "
        "loss (head engine); cuda: crop + flip, then CUDA's per-class curriculum of op count and strength (not "
        "learned; a retrain starts its own); none: no augmentation"))
    augment_init_probability: float = _opt(0.1, group="augment", help=(
        "generic / learned: probability (0, 1) each op starts with (near the identity: rarely applied); the "
        "upper level grows it. bank: the mixture's mass spread evenly over the bank, the rest on strength 0"))
    augment_warm_start: bool = _opt(False, group="augment", help=(
        "bank: follow CUDA's curriculum until the upper phase starts, then start the mixture from its levels "
        "(else from near strength 0)"))
    augment_init_magnitude: float = _opt(0.1, group="augment", help=(
        "generic / learned: strength (0, 1) each op starts with (weak); the upper level grows it"))
    augment_entropy: float = _opt(0.0, group="augment", range=(0.0, math.inf), help=(
        "generic / learned: weight (>= 0) of the gate-entropy bonus on the upper objective"))
    augment_hypergrad: str = _opt("auto", group="augment", help=(
        "generic / learned / bank with the head engine: A's hypergradient from the classifier's refit only (head), "
        "or plus the backbone's response to A, its inverse curvature taken as lr x interval (backbone: about "
        "3 steps per hyper-step, 6 times that for a bank); auto: backbone, but head for a bank"))
    # training recipe (Bag of Tricks, Zhang et al. 2021): for baselines, the search and the retrain alike
    mixup: float = _opt(0.0, group="recipe", range=(0.0, math.inf), help=(
        "mixup α >= 0 (0: off): each batch blends its augmented images with a shuffled copy by λ ~ Beta(α, α) "
        "and trains on the soft targets λ·y + (1 − λ)·y[perm] (Bag of Tricks on CIFAR-LT: 1)"))
    cutmix: float = _opt(0.0, group="recipe", range=(0.0, math.inf), help=(
        "CutMix α >= 0 (0: off): pastes a box of area 1 − λ, λ ~ Beta(α, α), from a shuffled copy, λ corrected "
        "to the box's exact area; with --mixup too, each batch uses one of the two with probability 0.5"))
    mixup_off: float | None = _opt(None, group="recipe", range=(0.0, 1.0), help=(
        "from this fraction [0, 1] of the epochs on, train without mixup / CutMix (Bag of Tricks' fine-tuning "
        "after mixup) [default: mix to the end]"))
    drw_from: float | None = _opt(None, group="recipe", range=(0.0, 1.0), help=(
        "deferred re-weighting for any loss: from this fraction [0, 1] of the epochs on, each class's term is "
        "also weighted by its class-balanced weight (effective number, β = 0.9999, mean 1) [default: off; "
        "ldam-drw: 0.8]"))
    rebalance_from: float | None = _opt(None, group="recipe", range=(0.0, 1.0), help=(
        "deferred re-balancing, for baselines, retrains and the stage 1 of --stage2 search: plain cross-entropy "
        "until this fraction [0, 1] of the epochs, then the chosen loss (Bag of Tricks' DRW for balanced "
        "softmax: --loss la --tau 1 --rebalance-from 0.8) [default: the loss from the start]"))
    # loss family
    loss: str = _opt("autobalance", group="loss", help=(
        "loss of the run: autobalance searches α; the others are fixed losses of the family"))
    tau: float = _opt(1.0, group="loss", range=(0.0, math.inf), help=(
        "logit-adjustment strength τ >= 0 (LA and VS, and the la / vs inits): bias τ·log(class prior)"))
    gamma: float = _opt(0.2, group="loss", range=(0.0, math.inf), help=(
        "CDT / VS exponent γ >= 0: logit scale (class count / largest count)^γ"))
    init: str = _opt("la", group="loss", help=(
        "where the search starts α (neutral: no margins; la / cdt / vs: that loss's values from --tau / --gamma)"))
    learn: tuple[str, ...] = _opt(group="loss", factory=lambda: ("logit_bias", "logit_scale"), help=(
        "the parts of α the search learns (comma list)"))
    sharing: str = _opt("poly:3", group="loss", help=(
        "how classes share α: per_class | groups:K | poly:K | hat:K. A frequency dictionary (the paper's D_π) "
        "ties classes of similar frequency together, so no tail class's handful of validation images sets a "
        "value on its own (K: groups, degree or hats, <= the classes)"))
    # upper level
    objective: str = _opt("balanced", group="upper", help="validation objective the search minimises")
    engine: str = _opt("head", group="upper", help=(
        "hypergradient engine: head (refit the classifier only; cheap), neumann, cg or unrolled (whole network)"))
    engine_options: dict[str, Any] = _opt(group="upper", factory=dict, help=(
        "extra keyword options of the engine (YAML mapping, e.g. {steps: 5})"))
    upper_start: float = _opt(0.4, group="upper", help=(
        "fraction [0, 1] of the epochs with α fixed before the search starts moving it (the paper: 120 / 300)"))
    interval: int = _opt(5, group="upper", range=(1, 10**6), help=(
        "lower steps between hyper-steps (the paper: 20; the head engine is cheap)"))
    hyper_batches: int = _opt(10, group="upper", range=(1, 10**4), help=(
        "training (and, for full engines, validation) batches per hyper-step"))
    upper_optimizer: str = _opt("adam", group="upper", help="optimizer of α: adam or sgd")
    upper_lr: float = _opt(0.1, group="upper", range=(0.0, math.inf), help=(
        "learning rate of α (>= 0). Adam moves each raw α value by about upper_lr per hyper-step, so upper_lr "
        "x hyper-steps bounds how far α can travel from its init; 0.1 with the decay and averaging lets the "
        "neutral init reach LA-sized margins on a 50-epoch schedule (protocol Q, benchmarks/RESULTS.md)"))
    upper_momentum: float = _opt(0.9, group="upper", range=(0.0, 1.0), help=(
        "momentum of α's SGD (--upper-optimizer sgd), in [0, 1]"))
    upper_weight_decay: float = _opt(1e-4, group="upper", range=(0.0, math.inf), help=(
        "weight decay of α's optimizer, >= 0"))
    upper_warmup_epochs: float = _opt(1.0, group="upper", range=(0.0, math.inf), help=(
        "epochs of hyper-steps over which the upper learning rate ramps up linearly"))
    upper_decay: bool = _opt(True, group="upper", help=(
        "scale the upper learning rate by the lower schedule (lr / peak lr), as the paper's code does"))
    upper_average: float = _opt(0.25, group="upper", range=(0.0, 1.0), help=(
        "α is exported as its average over this last fraction [0, 1] of the hyper-steps (0: the last α)"))
    clip: float = _opt(1.0, group="upper", range=(0.0, math.inf), help=(
        "largest L2 norm of a hypergradient, >= 0 (0: no clipping)"))
    max_bad_steps: int = _opt(20, group="upper", range=(1, 10**6), help=(
        "consecutive non-finite (skipped) steps before the run stops"))
    # stage 2
    stage2: str = _opt("auto", group="stage2", help=(
        "auto: the search and its retrain use search wherever it can serve (augmentation not learned, an "
        "objective on classes, the head engine, a backbone that trains), else none; baselines none (chosen on "
        "protocol Q tuning seeds, benchmarks/RESULTS.md). Otherwise, "
        "after stage 1, freeze the backbone, compute its features once and re-train the classifier on them: "
        "crt (fresh classifier, CE, class-balanced sampling; Kang et al. ICLR 2020), tau-norm (rows w_j / "
        "||w_j||^τ, bias dropped, τ in 0..2 chosen on validation balanced error; Kang et al.), wb (weight "
        "balancing: class-balanced loss, weight decay and MaxNorm; Alshammari et al. CVPR 2022), search "
        "(search: learn α on the frozen features by exact hyper-steps; retrain / baselines: the classifier "
        "solved exactly for their fixed loss). tau-norm on a dataset without a validation split holds out "
        "--val-fraction of the training set for τ"))
    stage2_epochs: int = _opt(10, group="stage2", range=(1, 100_000), help=(
        "crt / wb: passes over the features (both papers: 10)"))
    stage2_lr: float | None = _opt(None, group="stage2", range=(0.0, math.inf), help=(
        "crt / wb: peak learning rate of the classifier's SGD (momentum 0.9, cosine to 0) [default: crt 0.2 x "
        "--batch-size / 512 (Kang et al.: 0.2 at 512), wb 0.01 (Alshammari et al., batch 64)]"))
    stage2_weight_decay: float | None = _opt(None, group="stage2", range=(0.0, math.inf), help=(
        "L2 weight decay of the classifier in stage 2 [default: crt 5e-4 (Kang et al.), wb 0.1 (Alshammari "
        "et al.), search --weight-decay]"))
    maxnorm: float = _opt(0.1, group="stage2", range=(0.0, 1.0), help=(
        "wb: MaxNorm radius as min + maxnorm x (max - min) of the starting classifier's row norms, projected "
        "after every step (Alshammari et al.: 0.1)"))
    stage2_hyper_steps: int = _opt(10, group="stage2", range=(1, 10**6), help=(
        "search: hyper-steps on α, each on the classifier solved on the frozen features to a gradient norm of "
        "1e-7 in float64 (L-BFGS then Newton, warm-started); --upper-* set α's optimizer, no warm-up"))
    # run
    device: str = _opt("auto", group="run", help="auto (cuda when there is one), cpu, cuda or cuda:N")
    amp: bool = _opt(False, group="run", help="mixed precision (bfloat16 autocast) on CUDA; ignored on the CPU")
    channels_last: bool = _opt(True, group="run", help="channels-last memory layout of the model and its inputs")
    workers: int | None = _opt(None, group="run", range=(0, 1024), help=(
        "DataLoader processes decoding a list-file dataset's JPEGs (in-memory datasets need none; 0: decode "
        "in the main process) [default: min(4, the CPU cores this process may use), decided on the machine "
        "that runs, so a saved config.yaml says null]"))
    seed: int = _opt(0, group="run", range=(0, 2**32 - 1), help=(
        "random seed of the data split, the model's initial weights and the batch order"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))

    @property
    def loader_workers(self) -> int:
        """DataLoader worker processes a run uses: ``workers``, or :func:`default_workers` when it is unset."""
        return default_workers() if self.workers is None else self.workers

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def for_role(self, search: bool) -> Config:
        """This config with ``stage2="auto"`` made concrete. For the search and its retrain (``search=True``):
        ``search``, the exact stage-2 search, unless the run asks for what only the one-stage search does
        (learned augmentation, a group objective, an engine other than ``head``), then ``none``; ``none`` with
        ``freeze_backbone`` too, whose search is the exact search already. For a baseline: ``none``, its paper's
        recipe. Any other ``stage2`` is returned as it is."""
        from .objectives import GROUP_OBJECTIVES
        from .policies._policy import LEARNED_KINDS

        if self.stage2 != "auto":
            return self
        exact = search and self.augment not in LEARNED_KINDS and self.objective not in GROUP_OBJECTIVES \
            and self.engine == "head" and not self.freeze_backbone
        return self.replace(stage2="search" if exact else "none")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            shown = ", ".join(_short(k) for k in unknown[:5])
            raise ValueError(f"unknown config keys [{shown}{', ...' if len(unknown) > 5 else ''}]: see "
                             "`ab-plugin search --help` for the valid ones")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """A config file of keys, or a run folder's ``config.yaml`` as it is (its :data:`RUN_KEYS` are
        ignored). YAML aliases (``*name``) are refused: written out, no config value repeats itself."""
        try:
            data = yaml.load(Path(path).read_text(), Loader=_NoAliasLoader) or {}
        except FileNotFoundError:
            raise ValueError(f"config file {path} not found: check the path") from None
        except _AliasError as e:
            raise ValueError(f"config file {path} {e}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML ({e.__class__.__name__}): fix its syntax") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys to values")
        return cls.from_dict({k: v for k, v in data.items() if k not in RUN_KEYS})

    def validate(self) -> None:
        """Check values and names (types, finiteness and sizes are checked on construction); a one-line
        ``ValueError`` names the fix.

        ``dataset`` is only a label here (the Python API takes any :class:`DatasetBundle`); the commands
        check it against :func:`ab_plugin.data.list_datasets`."""
        from .hypergrad import list_engines
        from .losses import HPARAM_NAMES, list_inits, list_losses, list_sharings
        from .objectives import GROUP_OBJECTIVES, list_objectives
        from .policies import list_policies
        from .policies._policy import LEARNED_KINDS
        from .stage2 import list_stage2

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        def known(option: str, name: str, names: list[str]) -> None:
            need(name in names, f"unknown --{option} {name!r}: choose from {', '.join(names)}")

        need(self.imbalance >= 1, f"--imbalance must be >= 1 (max/min class count), got {self.imbalance}")
        need(0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        need(self.val_min_per_class >= 1, f"--val-min-per-class must be >= 1, got {self.val_min_per_class}")
        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.n_max is None or self.n_max >= 1, f"--n-max must be >= 1, got {self.n_max}")
        need(self.image_size is None or self.image_size >= 1, f"--image-size must be >= 1, got {self.image_size}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            need(v is None or len(v) == 3, f"--{name} takes 3 values (R,G,B), got {v and list(v)}")
        need(self.std is None or min(self.std) > 0, f"--std values must be > 0, got {self.std and list(self.std)}")
        need(self.workers is None or self.workers >= 0,
             f"--workers must be >= 0 (0 decodes in the main process), got {self.workers}")
        need(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(0 < self.backbone_lr_scale <= 1, f"--backbone-lr-scale must be in (0, 1], got {self.backbone_lr_scale}")
        need(self.upper_lr >= 0, f"--upper-lr must be >= 0 (0: α stays at its init), got {self.upper_lr}")
        need(0 <= self.upper_start <= 1, f"--upper-start is a fraction of the epochs in [0, 1], got {self.upper_start}")
        need(self.interval >= 1 and self.hyper_batches >= 1, "--interval and --hyper-batches must be >= 1")
        need(self.max_bad_steps >= 1, f"--max-bad-steps must be >= 1, got {self.max_bad_steps}")
        need(all(0 < m < 1 for m in self.milestones),
             f"milestones are fractions in (0, 1), got {list(self.milestones)}")
        need(self.schedule in ("cosine", "step"), f"--schedule must be cosine or step, got {self.schedule!r}")
        known("augment", self.augment, list_policies())
        for name in ("augment_init_probability", "augment_init_magnitude"):
            v = getattr(self, name)
            need(0 < v < 1, f"--{name.replace('_', '-')} must be in the open interval (0, 1), got {v}")
        need(self.augment_entropy >= 0, f"--augment-entropy must be >= 0, got {self.augment_entropy}")
        need(self.augment_hypergrad in ("auto", "head", "backbone"),
             f"--augment-hypergrad must be auto, head or backbone, got {self.augment_hypergrad!r}")
        need(self.upper_optimizer in ("adam", "sgd"),
             f"--upper-optimizer must be adam or sgd, got {self.upper_optimizer!r}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"--device must be auto, cpu or cuda, got {self.device!r}")
        known("loss", self.loss, list_losses())
        known("stage2", self.stage2, ["auto", *list_stage2()])
        need(not (self.stage2 == "search" and self.augment in LEARNED_KINDS),
             f"--stage2 search learns α on features computed once, without augmentation: --augment {self.augment} "
             "would learn nothing; use --augment none or fixed")
        need(not (self.stage2 == "search" and self.objective in GROUP_OBJECTIVES),
             f"--stage2 search takes the validation objective on classes: --objective {self.objective} needs "
             "groups, which it does not carry; use balanced, worst-class, cvar or blend")
        need(not (self.freeze_backbone and self.augment in LEARNED_KINDS),
             f"--freeze-backbone computes the features once, without augmentation: --augment {self.augment} would "
             "learn nothing; use --augment none or fixed")
        known("init", self.init, list_inits())
        known("engine", self.engine, list_engines())
        known("objective", self.objective, list_objectives())
        known("sharing", self.sharing.partition(":")[0], list_sharings())
        for name in self.learn:
            known("learn", name, list(HPARAM_NAMES))
        for f in dataclasses.fields(self):
            if "range" not in f.metadata:
                continue
            lo, hi = f.metadata["range"]
            v = getattr(self, f.name)
            need(v is None or lo <= v <= hi,
                 f"--{f.name.replace('_', '-')} must be in [{_bound(lo)}, {_bound(hi)}], got {v}")


def default_workers() -> int:
    """DataLoader workers when ``--workers`` is not given: min(4, the CPU cores this process may use), so
    PyTorch never warns that a loader has more workers than the machine has cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _bound(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}" if isinstance(x, float) else str(x)


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlist = _repr.maxdict = _repr.maxtuple = 4
_repr.maxlevel = 2


def _short(value: Any) -> str:
    """A bounded repr: never builds the whole text of a large (or alias-expanded) value."""
    return _repr.repr(value)


def _check_size(name: str, value: Any) -> None:
    """Refuse a nested value with more than :data:`MAX_ITEMS` items or :data:`MAX_STR` characters, counting
    without expanding it (a YAML alias bomb references one list a billion times)."""
    budget = [MAX_ITEMS]

    def walk(v: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > 8:
            raise ValueError(f"config key {name!r} holds too large or deep a value (more than {MAX_ITEMS} items or "
                             "8 levels, e.g. an expanded YAML alias): write a small mapping of plain values")
        if isinstance(v, str) and len(v) > MAX_STR:
            raise ValueError(f"config key {name!r} holds a string of {len(v)} characters (at most {MAX_STR})")
        if isinstance(v, dict):
            for k, x in v.items():
                walk(k, depth + 1)
                walk(x, depth + 1)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x, depth + 1)

    walk(value, 0)


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """``value`` as the field's declared type (ints widen to float, a lone item or a comma list becomes a
    tuple); anything else, a non-finite float, an int beyond ±2**53 or an oversized value is a one-line
    ``ValueError`` naming the key."""
    kind = annotation.split(" | ")[0]
    if value is None and annotation.endswith("| None"):
        return None

    def bad(what: str) -> ValueError:
        return ValueError(f"config key {name!r} must be {what}, got {_short(value)} ({type(value).__name__})")

    _check_size(name, value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if not (number and (isinstance(value, int) or (math.isfinite(value) and value.is_integer()))):
            raise bad("a whole number")
        if abs(value) > MAX_INT:
            raise bad(f"a whole number of at most {MAX_INT:.3g} in size")
        return int(value)
    if kind == "float":
        if not number:
            raise bad("a number")
        if isinstance(value, int) and abs(value) > MAX_INT**2:
            raise bad("a finite number")
        if not math.isfinite(value):
            raise bad("a finite number (not inf or nan)")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind.startswith("tuple["):
        item = kind[len("tuple["):].split(",")[0]
        if isinstance(value, str) and item in ("str", "float"):  # a comma list, as the command line gives it
            items = [v.strip() for v in value.split(",") if v.strip()]
            if item == "float":
                try:
                    items = [float(v) for v in items]  # type: ignore[misc]
                except ValueError:
                    raise bad("a comma list of numbers (e.g. 0.5,0.5,0.5)") from None
            value = items
        elif not isinstance(value, (list, tuple)):
            raise bad(f"a list of {item} values (e.g. [{'0.5' if item == 'float' else 'logit_bias'}])")
        return tuple(_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    if kind.startswith("dict["):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of option names to values (e.g. {steps: 5})")
        return dict(value)
    raise TypeError(f"Config field {name!r} has an annotation {annotation!r} that _coerce does not handle")


class _AliasError(yaml.YAMLError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a config needs none, and an alias bomb is made of them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasError(f"uses a YAML alias (*{event.anchor}, line {event.start_mark.line + 1}): write the "
                              "value out instead")
        return super().compose_node(parent, index)
