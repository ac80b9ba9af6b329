"""policy_movement: signed per-class change of a searched policy from its start."""

from __future__ import annotations

import pytest

from ab_plugin.policies import policy_movement


def test_movement_is_final_minus_start_per_class_and_op() -> None:
    aug = {
        "kind": "ops",
        "ops": ["rotate", "flip"],
        "crop_flip": True,
        "per_class": {
            "rotate": {"probability": [0.1, 0.4], "magnitude": [0.2, 0.05]},
            "flip": {"probability": [0.3, 0.1]},
        },
    }
    mv = policy_movement(aug, 0.1, 0.1)
    assert mv["start"] == {"probability": 0.1, "magnitude": 0.1}
    assert mv["per_class"]["rotate"]["probability"] == pytest.approx([0.0, 0.3])
    assert mv["per_class"]["rotate"]["magnitude"] == pytest.approx([0.1, -0.05])
    assert set(mv["per_class"]["flip"]) == {"probability"}
    assert mv["mean_abs"]["rotate"]["magnitude"] == pytest.approx(0.075)
    assert mv["class_mean_abs"] == pytest.approx([(0.0 + 0.1 + 0.2) / 3, (0.3 + 0.05 + 0.0) / 3])
    assert mv["max_abs"] == pytest.approx(0.3)


def test_a_bank_has_no_per_op_movement() -> None:
    aug = {"kind": "bank", "ops": ["rotate"], "strengths": [0, 5], "max_d": 30.0, "crop_flip": True,
           "per_class": {"mixture": [[0.5, 0.5]]}}
    with pytest.raises(ValueError, match="measures an ops policy, not a 'bank' one"):
        policy_movement(aug, 0.1, 0.1)
