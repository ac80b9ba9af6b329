"""Config: the augmentation search's keys are checked with one-line errors, and the defaults keep PDA off."""

from __future__ import annotations

import pytest

from ab_plugin import Config


def test_augmentation_defaults_keep_pda_off():
    from ab_plugin.policies._policy import LEARNED_KINDS

    cfg = Config()
    assert cfg.augment not in LEARNED_KINDS  # nothing of A is learned unless asked for
    for kind in LEARNED_KINDS:  # and the defaults of the learned kinds are valid when it is
        cfg.replace(augment=kind).validate()


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("augment", "pda", "unknown --augment 'pda': choose from learned, fixed, generic, none"),
    ("augment_init_probability", 1.0, "--augment-init-probability must be in the open interval"),
    ("augment_init_magnitude", 0.0, "--augment-init-magnitude must be in the open interval"),
    ("augment_entropy", -0.1, "--augment-entropy must be >= 0"),
    ("augment_hypergrad", "jvp", "--augment-hypergrad must be head or backbone"),
])
def test_bad_augmentation_keys_are_one_line_errors(key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        Config(**{key: value}).validate()
