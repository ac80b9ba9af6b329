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
    augment: str = "fixed"  # fixed (crop + flip) | learned (per-class policy) | none
    # loss family
    loss: str = "autobalance"  # ce | la | cdt | vs | ldam | ldam-drw | autobalance
    tau: float = 1.0
    gamma: float = 0.2
    init: str = "la"  # autobalance init: neutral | la | cdt | vs
    learn: tuple[str, ...] = ("logit_bias", "logit_scale")
    # per_class | groups:K | poly:K | hat:K. The paper's frequency dictionary is the default: per-class
    # values over-fit the few validation images of tail classes (protocol Q, benchmarks/RESULTS.md)
    sharing: str = "poly:3"
    # upper level
    objective: str = "balanced"
    engine: str = "head"  # head | neumann | cg | unrolled
    engine_options: dict[str, Any] = field(default_factory=dict)
    upper_start: float = 0.4  # fraction of epochs with α fixed (the paper: 120 / 300)
    interval: int = 5  # lower steps between hyper-steps (the paper: 20; the head engine is cheap)
    hyper_batches: int = 10  # training (and, for full engines, validation) batches per hyper-step
    upper_optimizer: str = "adam"  # adam | sgd
    # Adam moves each raw α value by about upper_lr per hyper-step, so lr x hyper-steps bounds how far α
    # travels: from init="neutral" on a short schedule (protocol Q: 90 steps) use ~0.05 to reach LA-sized
    # margins (benchmarks/RESULTS.md); the default suits the LA init
    upper_lr: float = 0.01
    upper_momentum: float = 0.9
    upper_weight_decay: float = 1e-4
    upper_warmup_epochs: float = 1.0  # the upper lr ramps up linearly over this many epochs of hyper-steps
    upper_decay: bool = False  # scale the upper lr by the lower schedule (lr / peak lr), as the paper's code does
    upper_average: float = 0.0  # α exported as its average over this last fraction of the hyper-steps (0: last α)
    clip: float = 1.0  # max L2 norm of a hypergradient
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    # run
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    seed: int = 0

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
        fixed = {k: tuple(v) if isinstance(getattr(cls(), k), tuple) and v is not None else v for k, v in d.items()}
        cfg = cls(**fixed)
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
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.imbalance >= 1, f"--imbalance must be >= 1 (max/min class count), got {self.imbalance}")
        need(0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.lr > 0 and self.upper_lr >= 0, "learning rates must be positive")
        need(0 <= self.upper_start <= 1, f"--upper-start is a fraction of the epochs in [0, 1], got {self.upper_start}")
        need(self.interval >= 1 and self.hyper_batches >= 1, "--interval and --hyper-batches must be >= 1")
        need(self.schedule in ("cosine", "step"), f"--schedule must be cosine or step, got {self.schedule!r}")
        need(self.augment in ("fixed", "learned", "none"),
             f"--augment must be fixed, learned or none, got {self.augment!r}")
        need(self.upper_optimizer in ("adam", "sgd"),
             f"--upper-optimizer must be adam or sgd, got {self.upper_optimizer!r}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"--device must be auto, cpu or cuda, got {self.device!r}")
