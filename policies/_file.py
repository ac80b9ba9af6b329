"""Policy file: a versioned JSON document holding the learned loss parameters and per-class augmentation.

Example (``C = 2``)::

    {
      "version": 2,
      "classes": ["cat", "dog"],
      "class_counts": [500, 50],
      "loss": {"class_weight": [1.0, 1.0], "logit_bias": [0.0, -0.3], "logit_scale": [1.0, 0.6]},
      "augmentation": {"kind": "ops", "ops": ["rotate", "flip"], "crop_flip": true,
                       "per_class": {"rotate": {"probability": [0.5, 0.7], "magnitude": [0.2, 0.4]},
                                     "flip": {"probability": [0.5, 0.5]}}},
      "provenance": {"dataset": "...", "backbone": "...", "created": "2025-01-01T00:00:00+00:00"}
    }

``augmentation.kind`` is ``ops`` (a :class:`ClassPolicy`: per-class probability and magnitude of each op) or
``bank`` (a :class:`~ab_plugin.policies.BankPolicy`: per-class mixture weights over a bank of CUDA strengths)::

      "augmentation": {"kind": "bank", "ops": ["rotate", "cutout"], "strengths": [0, 2, 4], "max_d": 30.0,
                       "crop_flip": true, "per_class": {"mixture": [[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]]}}

Version 1 files (before ``kind``; every one is of kind ``ops``) still load.

Data only: loading parses JSON (``json.loads``) and validates it; nothing is imported or executed.
``loss`` holds the effective per-class values of the loss ``w_y · CE(Δ ⊙ z + l, y)``: ``class_weight``
``w > 0``, ``logit_bias`` ``l`` and ``logit_scale`` ``Δ > 0`` (after the sigmoid when one is used).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._bank import BankPolicy
from ._ops import OPS
from ._policy import ClassPolicy

__all__ = [
    "FORMAT_VERSION",
    "LOSS_KEYS",
    "PolicyFile",
    "PolicyFileError",
    "save_policy",
    "load_policy",
    "parse_policy",
    "policy_from_dict",
    "check_num_classes",
    "policy_from_module",
    "policy_to_module",
    "augmentation_to_module",
    "make_provenance",
]

FORMAT_VERSION = 2
READS_VERSIONS: tuple[int, ...] = (1, 2)
"""Versions this ab-plugin reads: 1 is version 2 without ``augmentation.kind`` (always ``ops``)."""
LOSS_KEYS: tuple[str, ...] = ("class_weight", "logit_bias", "logit_scale")
_TOP_KEYS: tuple[str, ...] = ("version", "classes", "class_counts", "loss", "augmentation", "provenance")
_AUG_KEYS: dict[str, tuple[str, ...]] = {"ops": ("kind", "ops", "per_class", "crop_flip"),
                                         "bank": ("kind", "ops", "strengths", "max_d", "per_class", "crop_flip")}
_REEXPORT = "re-export it with `ab-plugin export`"
#: Largest policy file read (bytes): room for tens of thousands of classes, and a bound on the memory a
#: hostile or mistaken file can take while it is parsed.
MAX_POLICY_BYTES = 16 << 20


class PolicyFileError(ValueError):
    """A policy file (or dict) is unreadable or invalid; the one-line message names problem and fix."""


@dataclass
class PolicyFile:
    """Contents of a policy file (format :data:`FORMAT_VERSION`).

    Attributes:
        version: format version (:data:`FORMAT_VERSION`).
        classes: ``C`` class names, unique.
        class_counts: ``C`` training counts ``n_j >= 0``.
        loss: ``{"class_weight": [C], "logit_bias": [C], "logit_scale": [C]}`` (``w > 0``, ``l``, ``Δ > 0``).
        augmentation: ``{"kind": "ops", "ops": [...], "per_class": ClassPolicy.per_class(), "crop_flip": bool}``,
            ``{"kind": "bank", "ops", "strengths", "max_d", "per_class": {"mixture": [C][K]}, "crop_flip"}`` or
            ``None``.
        provenance: free-form JSON data: dataset, backbone, epochs, seed, metrics, created, ab_plugin version.
    """

    version: int
    classes: list[str]
    class_counts: list[int]
    loss: dict[str, list[float]]
    augmentation: dict[str, Any] | None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """``C``."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (deep copy)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> PolicyFile:
        """Validate ``data`` and build a :class:`PolicyFile` (see :func:`policy_from_dict`)."""
        return policy_from_dict(data, source)


# --------------------------------------------------------------------------- validation
def _err(source: str, problem: str, fix: str = _REEXPORT) -> PolicyFileError:
    sep = " " if problem.startswith(("has ", "is ")) else ": "
    return PolicyFileError(f"policy file {source}{sep}{problem}; {fix}")


def _as_float(v: Any) -> float | None:
    """``float(v)`` for a finite int/float (not bool), else ``None``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _float_list(source: str, where: str, v: Any, c: int, unit: str = "classes") -> list[float]:
    """``v`` as ``c`` finite floats, one per class (or per ``unit``: a bank's mixture row has one per strength)."""
    if not isinstance(v, list):
        raise _err(source, f"{where} must be a list of {c} numbers, got {type(v).__name__}")
    if len(v) != c:
        mismatch = " (class-count mismatch)" if unit == "classes" else ""
        raise _err(source, f"{where} has {len(v)} values but the file lists {c} {unit}{mismatch}")
    out: list[float] = []
    for i, item in enumerate(v):
        f = _as_float(item)
        if f is None:
            if isinstance(item, float):
                kind = "a non-finite"
            elif isinstance(item, int) and not isinstance(item, bool):
                kind = "an out-of-range (non-finite as a float)"
            else:
                kind = "a non-numeric"
            raise _err(source, f"{where}[{i}] is {kind} value ({item!r:.40}); every value must be a finite number")
        out.append(f)
    return out


def _check_keys(source: str, where: str, d: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise _err(source, f"{where} is missing key(s) {missing}")
    extra = sorted(str(k) for k in d if k not in keys)
    if extra:
        raise _err(source, f"{where} has unknown key(s) {extra} (expected exactly {list(keys)})")


def _check_version(source: str, data: Any) -> int:
    if not isinstance(data, dict):
        raise _err(source, f"top level must be a JSON object, got {type(data).__name__}")
    reads = " and ".join(str(v) for v in READS_VERSIONS)
    if "version" not in data:
        raise PolicyFileError(
            f"policy file {source} has no version; this ab-plugin reads versions {reads}: {_REEXPORT}")
    v = data["version"]
    if isinstance(v, bool) or not isinstance(v, int) or v not in READS_VERSIONS:
        raise PolicyFileError(
            f"policy file {source} has version {v!r:.40}; this ab-plugin reads versions {reads}: {_REEXPORT}")
    return v


def _validate_augmentation(source: str, aug: Any, c: int, version: int) -> dict[str, Any] | None:
    if aug is None:
        return None
    if not isinstance(aug, dict):
        raise _err(source, f"augmentation must be an object or null, got {type(aug).__name__}")
    if version == 1:  # before kinds: a per-op policy
        _check_keys(source, "augmentation", aug, _AUG_KEYS["ops"][1:])
        aug = {"kind": "ops", **aug}
    kind = aug.get("kind")
    if not isinstance(kind, str) or kind not in _AUG_KEYS:  # a list or dict would not even hash
        raise _err(source, f"augmentation.kind is {kind!r:.40} but must be one of {list(_AUG_KEYS)}")
    _check_keys(source, "augmentation", aug, _AUG_KEYS[kind])
    ops = aug["ops"]
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise _err(source, "augmentation.ops must be a list of op names")
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise _err(source, f"augmentation.ops has unknown op(s) {unknown}", f"known ops are {sorted(OPS)}")
    if len(set(ops)) != len(ops):
        raise _err(source, f"augmentation.ops lists an op twice: {ops}")
    if not isinstance(aug["crop_flip"], bool):
        raise _err(source, "augmentation.crop_flip must be true or false")
    if kind == "bank":
        return _validate_bank(source, aug, c)
    per_class = aug["per_class"]
    if not isinstance(per_class, dict):
        raise _err(source, "augmentation.per_class must be an object {op: {probability, magnitude}}")
    if set(per_class) != set(ops):
        raise _err(source, f"augmentation.per_class has ops {sorted(per_class)} but ops lists {sorted(ops)}")
    out_pc: dict[str, dict[str, list[float]]] = {}
    for op in ops:
        entry = per_class[op]
        where = f"augmentation.per_class.{op}"
        if not isinstance(entry, dict):
            raise _err(source, f"{where} must be an object")
        keys = ("probability", "magnitude") if OPS[op].has_magnitude else ("probability",)
        _check_keys(source, where, entry, keys)
        out_pc[op] = {}
        for k in keys:
            vals = _float_list(source, f"{where}.{k}", entry[k], c)
            bad = [i for i, f in enumerate(vals) if not 0.0 <= f <= 1.0]
            if bad:
                raise _err(
                    source,
                    f"{where}.{k}[{bad[0]}] = {vals[bad[0]]!r} is outside [0, 1]; "
                    "probabilities and magnitudes are fractions",
                )
            out_pc[op][k] = vals
    return {"kind": "ops", "ops": list(ops), "per_class": out_pc, "crop_flip": aug["crop_flip"]}


def _validate_bank(source: str, aug: dict[str, Any], c: int) -> dict[str, Any]:
    """The ``bank`` kind's own fields: strengths, ``max_d`` and the ``[C][K]`` mixture."""
    if not aug["ops"] or not all(OPS[o].has_magnitude for o in aug["ops"]):
        raise _err(source, "augmentation.ops of a bank must be ops with a magnitude (flip has none)")
    strengths = aug["strengths"]
    if (not isinstance(strengths, list) or len(strengths) < 2 or strengths[0] != 0
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in strengths)
            or any(b <= a for a, b in zip(strengths, strengths[1:], strict=False))):
        raise _err(source, "augmentation.strengths must be increasing whole numbers starting at 0 (at least 2)")
    max_d = _as_float(aug["max_d"])
    if max_d is None or max_d <= 0:
        raise _err(source, "augmentation.max_d must be a number > 0")
    per_class = aug["per_class"]
    if not isinstance(per_class, dict) or set(per_class) != {"mixture"}:
        raise _err(source, "augmentation.per_class of a bank must be an object {\"mixture\": [[K weights] per class]}")
    rows = per_class["mixture"]
    if not isinstance(rows, list) or len(rows) != c:
        raise _err(source, f"augmentation.per_class.mixture must hold {c} rows (one per class)")
    k = len(strengths)
    mixture = [_float_list(source, f"augmentation.per_class.mixture[{i}]", row, k, "strengths")
               for i, row in enumerate(rows)]
    for i, row in enumerate(mixture):
        if min(row) < 0 or abs(sum(row) - 1.0) > 1e-4:
            raise _err(source, f"augmentation.per_class.mixture[{i}] must be non-negative weights summing to 1")
    return {"kind": "bank", "ops": list(aug["ops"]), "strengths": list(strengths), "max_d": max_d,
            "per_class": {"mixture": mixture}, "crop_flip": aug["crop_flip"]}


def policy_from_dict(data: Any, source: str = "<dict>") -> PolicyFile:
    """Validate a decoded policy document and build a :class:`PolicyFile`.

    Numbers are normalised (``class_weight`` etc. become floats); the input is not modified.

    Args:
        data: decoded JSON (``dict``).
        source: name used in error messages (a path or zoo name).

    Raises:
        PolicyFileError: anything invalid (wrong version, missing keys, class-count mismatch, non-finite or
            non-numeric values, fractions outside ``[0, 1]``, ``class_weight <= 0`` or ``logit_scale <= 0``).
    """
    version = _check_version(source, data)
    _check_keys(source, "top level", data, _TOP_KEYS)
    classes = data["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(n, str) and n for n in classes):
        raise _err(source, "classes must be a non-empty list of non-empty class names")
    if len(set(classes)) != len(classes):
        dup = sorted(n for n, k in Counter(classes).items() if k > 1)
        raise _err(source, f"classes has duplicate names {dup[:5]}")
    c = len(classes)
    counts = data["class_counts"]
    if not isinstance(counts, list) or len(counts) != c:
        n = len(counts) if isinstance(counts, list) else type(counts).__name__
        raise _err(source, f"class_counts has {n} entries but the file lists {c} classes (class-count mismatch)")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        raise _err(source, "class_counts must be non-negative integers")
    loss = data["loss"]
    if not isinstance(loss, dict):
        raise _err(source, f"loss must be an object with keys {list(LOSS_KEYS)}")
    _check_keys(source, "loss", loss, LOSS_KEYS)
    loss_out = {k: _float_list(source, f"loss.{k}", loss[k], c) for k in LOSS_KEYS}
    for k in ("class_weight", "logit_scale"):
        bad = [i for i, f in enumerate(loss_out[k]) if not f > 0.0]
        if bad:
            raise _err(source, f"loss.{k}[{bad[0]}] = {loss_out[k][bad[0]]!r} but {k} must be > 0")
    aug = _validate_augmentation(source, data["augmentation"], c, version)
    prov = data["provenance"]
    if not isinstance(prov, dict):
        raise _err(source, f"provenance must be an object, got {type(prov).__name__}")
    try:  # free-form, but JSON data only
        prov = json.loads(json.dumps(prov, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise _err(source, f"provenance is not plain JSON data ({str(e)[:80]})") from None
    return PolicyFile(
        version=FORMAT_VERSION,
        classes=list(classes),
        class_counts=list(counts),
        loss=loss_out,
        augmentation=aug,
        provenance=prov,
    )


def _too_big(source: str, size: int) -> PolicyFileError:
    return _err(source, f"is {size / (1 << 20):.1f} MiB, over the {MAX_POLICY_BYTES >> 20} MiB limit of a policy file",
                "pass a policy file (a few KiB per hundred classes)")


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def parse_policy(text: str | bytes, source: str = "<string>") -> PolicyFile:
    """Parse and validate a policy document from JSON text.

    Raises:
        PolicyFileError: malformed or truncated JSON, non-finite numbers (``NaN``, ``Infinity``) or any
            validation error of :func:`policy_from_dict`.
    """
    if len(text) > MAX_POLICY_BYTES:
        raise _too_big(source, len(text))
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise _err(source, f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise _err(
            source,
            f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}; truncated or hand-edited?)",
        ) from None
    except RecursionError:
        raise _err(source, "is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # parse_constant, oversized integers
        raise _err(source, f"is not valid policy JSON ({str(e).splitlines()[0][:80]})") from None
    return policy_from_dict(data, source)


def _json_text(policy: PolicyFile) -> str:
    return json.dumps(policy.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def save_policy(path: str | os.PathLike[str], policy: PolicyFile) -> None:
    """Validate ``policy`` and write it as JSON, atomically (temp file in the same folder + ``os.replace``).

    Floats are written with ``repr`` (shortest round-trip form), so :func:`load_policy` reads back exactly
    the same values.

    Raises:
        PolicyFileError: the policy is invalid (nothing is written).
    """
    from ab_plugin.io import atomic_write

    path = Path(path)
    text = _json_text(policy_from_dict(policy.to_dict(), str(path)))
    atomic_write(path, lambda f: f.write(text), mode="w", encoding="utf-8")


def load_policy(path_or_name: str | os.PathLike[str], *, zoo_dir: str | os.PathLike[str] | None = None) -> PolicyFile:
    """Load and validate a policy file by path, or a zoo entry by name (``"cifar10-lt_100_resnet32"``).

    A string that names an existing file, ends in ``.json`` or contains a path separator is a path;
    anything else is looked up in the zoo (``zoo_dir``, else ``$AB_PLUGIN_ZOO``, else the packaged zoo).

    Raises:
        PolicyFileError: no such file / zoo entry, unreadable, or invalid (see :func:`parse_policy`).
    """
    from ._zoo import list_zoo, zoo_path

    p = Path(path_or_name)
    s = os.fspath(path_or_name)
    if "\0" in s:
        raise PolicyFileError(f"policy path {s!r:.80} contains a NUL character; pass a file path or zoo name")
    is_path = p.is_file() or p.suffix == ".json" or os.sep in s or (os.altsep is not None and os.altsep in s)
    if not is_path:
        candidate = zoo_path(s, zoo_dir)
        if not candidate.is_file():
            names = list_zoo(zoo_dir)
            have = ", ".join(names) if names else "none yet"
            raise PolicyFileError(
                f"no policy file or zoo entry named {s!r}; pass a path to a .json file or one of the zoo names ({have})"
            )
        p = candidate
    try:
        if p.stat().st_size > MAX_POLICY_BYTES:
            raise _too_big(str(p), p.stat().st_size)
        raw = p.read_bytes()
    except FileNotFoundError:
        raise PolicyFileError(f"policy file {s} does not exist; check the path or export one") from None
    except OSError as e:
        raise PolicyFileError(f"policy file {s} cannot be read ({e.strerror}); check the path") from None
    return parse_policy(raw, str(p))


def check_num_classes(policy: PolicyFile, num_classes: int) -> None:
    """Raise :class:`PolicyFileError` unless the policy has ``num_classes`` classes."""
    if policy.num_classes != int(num_classes):
        raise PolicyFileError(
            f"policy has {policy.num_classes} classes but the dataset has {int(num_classes)}; "
            "use a policy exported for this dataset"
        )


def policy_from_module(policy_module: ClassPolicy | BankPolicy) -> dict[str, Any]:
    """The ``augmentation`` section of a learned policy module (see :class:`PolicyFile`)."""
    if isinstance(policy_module, BankPolicy):
        return {"kind": "bank", "ops": list(policy_module.ops), "strengths": list(policy_module.strengths),
                "max_d": float(policy_module.max_d), "crop_flip": bool(policy_module.crop_flip),
                "per_class": {"mixture": policy_module.mixture.detach().double().cpu().tolist()}}
    return {
        "kind": "ops",
        "ops": list(policy_module.ops),
        "per_class": policy_module.per_class(),
        "crop_flip": bool(policy_module.crop_flip),
    }


def augmentation_to_module(aug: dict[str, Any], num_classes: int, *, learnable: bool = False,
                           **kw: Any) -> ClassPolicy | BankPolicy:
    """The policy module (identity basis) of a validated ``augmentation`` section (:func:`policy_from_module`'s
    inverse: exact for ``ops``, to float32 rounding for ``bank``).

    Raises:
        PolicyFileError: the section does not fit its kind's module.
    """
    kind = aug["kind"]
    try:
        if kind == "bank":
            module = BankPolicy(num_classes, strengths=aug["strengths"], ops=aug["ops"], max_d=aug["max_d"],
                                crop_flip=bool(aug["crop_flip"]), learnable=learnable, **kw)
            module.load_mixture(aug["per_class"]["mixture"])
            return module
        module = ClassPolicy(num_classes, aug["ops"], learnable=learnable, crop_flip=bool(aug["crop_flip"]), **kw)
        module.load_per_class(aug["per_class"])
        return module
    except ValueError as e:
        raise PolicyFileError(f"policy augmentation does not fit its {kind} policy ({e}); {_REEXPORT}") from None


def policy_to_module(policy: PolicyFile, *, learnable: bool = False, **kw: Any) -> ClassPolicy | BankPolicy | None:
    """Build the policy module (identity basis) holding the file's per-class augmentation:
    :class:`ClassPolicy` for kind ``ops``, :class:`~ab_plugin.policies.BankPolicy` for ``bank``.

    Exact: ``policy_from_module(policy_to_module(pf))`` equals ``pf.augmentation`` when it was exported
    from a float32 ``ops`` module (a bank's mixture to float32 rounding).

    Args:
        policy: a validated policy file.
        learnable: make the loaded parameters learnable (e.g. to continue a search).
        **kw: forwarded to the module (e.g. ``temperature``, ``padding``).

    Returns:
        the module, or ``None`` when the file has no augmentation section.
    """
    aug = policy.augmentation
    return None if aug is None else augmentation_to_module(aug, policy.num_classes, learnable=learnable, **kw)


def make_provenance(**fields: Any) -> dict[str, Any]:
    """Provenance dict with ``created`` (ISO 8601, UTC) and ``ab_plugin`` version filled in, plus ``fields``
    (dataset, backbone, epochs, seed, val/test metrics, ...)."""
    try:
        from importlib.metadata import version

        ver = version("ab-plugin")
    except Exception:  # not installed
        ver = "unknown"
    out: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "ab_plugin": ver,
    }
    out.update(fields)
    return out
