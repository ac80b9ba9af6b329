"""How far a learned augmentation policy moved from its start: per class, per op (the search's reach)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["policy_movement"]


def policy_movement(augmentation: Mapping[str, Any], init_probability: float, init_magnitude: float) -> dict[str, Any]:
    """Signed change of every per-class probability and magnitude from the search's start values.

    Args:
        augmentation: a policy file's ``augmentation`` section of kind ``ops`` (``ops`` and ``per_class``
            ``{op: {"probability": [C], "magnitude": [C]}}``, fractions in ``[0, 1]``).
        init_probability: probability every op started from (fraction).
        init_magnitude: magnitude every op started from (fraction of the op's range).

    Returns:
        ``{"start": {"probability", "magnitude"}, "per_class": {op: {key: [C] final - start}},
        "mean_abs": {op: {key: mean over classes of |change|}}, "class_mean_abs": [C] mean |change| over
        ops and keys, "max_abs": largest |change|}``; all plain floats (JSON).

    Raises:
        ValueError: a ``bank`` section (it has no per-op values; a bank's run records its expected strength per
            class after every epoch instead, ``augmentation_mean_strength`` in ``metrics.jsonl``).
    """
    if augmentation["kind"] != "ops":
        raise ValueError(f"policy_movement measures an ops policy, not a {augmentation['kind']!r} one")
    start = {"probability": float(init_probability), "magnitude": float(init_magnitude)}
    per_class: dict[str, dict[str, list[float]]] = {}
    for op in augmentation["ops"]:
        entry = augmentation["per_class"][op]
        per_class[op] = {key: [float(v) - start[key] for v in entry[key]] for key in start if key in entry}
    columns = [vals for entry in per_class.values() for vals in entry.values()]
    num_classes = len(columns[0]) if columns else 0
    return {
        "start": start,
        "per_class": per_class,
        "mean_abs": {op: {key: sum(abs(v) for v in vals) / len(vals) for key, vals in entry.items()}
                     for op, entry in per_class.items()},
        "class_mean_abs": [sum(abs(col[c]) for col in columns) / len(columns) for c in range(num_classes)],
        "max_abs": max((abs(v) for col in columns for v in col), default=0.0),
    }
