"""Run configuration: one dataclass, loadable from YAML (safe) and overridable from the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Config:
    """Every knob of a training, search or retrain run. Units: epochs are whole passes over the
    training split; ``*_at`` fractions are of the run's total epochs."""

    # data
    dataset: str = "digits-lt"
    data_dir: str | None = None
    imbalance: float = 100.0
    profile: str = "exp"
    n_max: int | None = None
    val_fraction: float = 0.2
    val_min_per_class: int = 1  # validation images per class at least (never more than half a class)
    # list-file datasets: the recipe's crop size (default 224); the others: resize every image to it (default: as is)
    image_size: int | None = None
    # model and lower level
    backbone: str = "resnet32"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 2.0
    schedule: str = "cosine"  # cosine | step
    milestones: tuple[float, ...] = (0.733, 0.867)  # step schedule: ×0.1 at these fractions
    # fixed (crop + flip) | generic (one learned policy for all classes) | learned (per-class policy, PDA) | none
    augment: str = "fixed"
    # generic / learned: every op starts near the identity (rarely applied, weak) and the upper level grows it
    augment_init_probability: float = 0.1
    augment_init_magnitude: float = 0.1
    augment_entropy: float = 0.0  # generic / learned: weight of the gate-entropy bonus on the upper objective
    # generic / learned with the head engine: A's hypergradient from the classifier's refit only (head), or plus
    # the backbone's response to A, its inverse curvature taken as lr x interval (backbone: ~3 steps per hyper-step)
    augment_hypergrad: str = "backbone"
    # loss family
    loss: str = "autobalance"  # ce | la | cdt | vs | ldam | ldam-drw | autobalance
    tau: float = 1.0
    gamma: float = 0.2
    init: str = "la"  # autobalance init: neutral | la | cdt | vs
    learn: tuple[str, ...] = ("logit_bias", "logit_scale")
    # per_class | groups:K | poly:K | hat:K. A frequency dictionary (the paper's D_π) ties classes of similar
    # frequency together, so no tail class's handful of validation images sets a value on its own
    sharing: str = "poly:3"
    # upper level
    objective: str = "balanced"
    engine: str = "head"  # head | neumann | cg | unrolled
    engine_options: dict[str, Any] = field(default_factory=dict)
    upper_start: float = 0.4  # fraction of epochs with α fixed (the paper: 120 / 300)
    interval: int = 5  # lower steps between hyper-steps (the paper: 20; the head engine is cheap)
    hyper_batches: int = 10  # training (and, for full engines, validation) batches per hyper-step
    upper_optimizer: str = "adam"  # adam | sgd
    # Adam moves each raw α value by about upper_lr per hyper-step, so upper_lr x hyper-steps bounds how far
    # α can travel from its init. 0.1 with the decay and averaging below lets the neutral init reach LA-sized
    # margins on a 50-epoch schedule (chosen on protocol Q tuning seed 10, benchmarks/RESULTS.md)
    upper_lr: float = 0.1
    upper_momentum: float = 0.9
    upper_weight_decay: float = 1e-4
    upper_warmup_epochs: float = 1.0  # the upper lr ramps up linearly over this many epochs of hyper-steps
    upper_decay: bool = True  # scale the upper lr by the lower schedule (lr / peak lr), as the paper's code does
    upper_average: float = 0.25  # α exported as its average over this last fraction of the hyper-steps (0: last α)
    clip: float = 1.0  # max L2 norm of a hypergradient
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    # run
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    workers: int = 4  # DataLoader processes decoding a list-file dataset's JPEGs (in-memory datasets need none)
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}: see `ab-plugin search --help` for the valid ones")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ValueError(f"config file {path} not found: check the path") from None
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML ({e.__class__.__name__}): fix its syntax") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys to values")
        return cls.from_dict(data)

    def validate(self) -> None:
        """Check values and names (types are checked on construction); a one-line ``ValueError`` names the fix.

        ``dataset`` is only a label here (the Python API takes any :class:`DatasetBundle`); the commands
        check it against :func:`ab_plugin.data.list_datasets`."""
        from .hypergrad import list_engines
        from .losses import HPARAM_NAMES, list_losses, list_sharings
        from .objectives import list_objectives
        from .policies import list_policies

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
        need(self.workers >= 0, f"--workers must be >= 0 (0 decodes in the main process), got {self.workers}")
        need(self.lr > 0 and self.upper_lr >= 0, "learning rates must be positive")
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
        need(self.augment_hypergrad in ("head", "backbone"),
             f"--augment-hypergrad must be head or backbone, got {self.augment_hypergrad!r}")
        need(self.upper_optimizer in ("adam", "sgd"),
             f"--upper-optimizer must be adam or sgd, got {self.upper_optimizer!r}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"--device must be auto, cpu or cuda, got {self.device!r}")
        known("loss", self.loss, list_losses())
        known("engine", self.engine, list_engines())
        known("objective", self.objective, list_objectives())
        known("sharing", self.sharing.partition(":")[0], list_sharings())
        for name in self.learn:
            known("learn", name, list(HPARAM_NAMES))


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """``value`` as the field's declared type (ints widen to float, a lone item or a comma list becomes a
    tuple); anything else is a one-line ``ValueError`` naming the key."""
    kind = annotation.split(" | ")[0]
    if value is None and annotation.endswith("| None"):
        return None

    def bad(what: str) -> ValueError:
        return ValueError(f"config key {name!r} must be {what}, got {value!r:.60} ({type(value).__name__})")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if not (number and float(value).is_integer()):
            raise bad("a whole number")
        return int(value)
    if kind == "float":
        if not number:
            raise bad("a number")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind.startswith("tuple["):
        item = kind[len("tuple["):].split(",")[0]
        if isinstance(value, str) and item == "str":
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            raise bad(f"a list of {item} values (e.g. [{'0.5' if item == 'float' else 'logit_bias'}])")
        return tuple(_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    if kind.startswith("dict["):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of option names to values (e.g. {steps: 5})")
        return dict(value)
    raise TypeError(f"Config field {name!r} has an annotation {annotation!r} that _coerce does not handle")
