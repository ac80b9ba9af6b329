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
    cfg.replace(augment="cuda").validate()  # CUDA's curriculum, a rival that learns nothing
    assert "cuda" not in LEARNED_KINDS


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("augment", "pda", "unknown --augment 'pda': choose from learned, fixed, generic, none, cuda"),
    ("augment_init_probability", 1.0, "--augment-init-probability must be in the open interval"),
    ("augment_init_magnitude", 0.0, "--augment-init-magnitude must be in the open interval"),
    ("augment_entropy", -0.1, "--augment-entropy must be >= 0"),
    ("augment_hypergrad", "jvp", "--augment-hypergrad must be auto, head or backbone"),
])
def test_bad_augmentation_keys_are_one_line_errors(key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        Config(**{key: value}).validate()


def _fields(kind: str) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(Config) if str(f.type).split(" | ")[0] == kind]


@pytest.mark.parametrize("name", _fields("float"))
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10**400])
def test_every_float_key_must_be_finite(name, value):
    with pytest.raises(ValueError, match=f"config key '{name}' must be a finite number"):
        Config(**{name: value})


@pytest.mark.parametrize("name", _fields("int"))
@pytest.mark.parametrize("value", [10**26, 1e30, -(10**400)])
def test_every_int_key_is_bounded_in_one_line(name, value):
    with pytest.raises(ValueError, match=f"config key '{name}' must be a whole number of at most"):
        Config(**{name: value})


def test_every_ranged_key_refuses_values_beyond_its_bounds_and_takes_its_bounds():
    import dataclasses
    import math

    ranged = [f for f in dataclasses.fields(Config) if "range" in f.metadata]
    assert len(ranged) >= 20
    for f in ranged:
        lo, hi = f.metadata["range"]
        kind = int if str(f.type).startswith("int") else float
        option = "--" + f.name.replace("_", "-")
        for bad in (lo - 1, hi + 1):
            if math.isfinite(bad):
                with pytest.raises(ValueError, match=f"{option} (and --hyper-batches )?must be (in|>=)"):
                    Config(**{f.name: kind(bad)}).validate()
        Config(**{f.name: kind(lo)}).validate()


def test_every_field_explains_itself_in_a_known_group():
    import dataclasses

    from ab_plugin.config import GROUPS

    for f in dataclasses.fields(Config):
        assert f.metadata["group"] in GROUPS, f.name
        assert len(f.metadata["help"]) >= 20, f.name


def test_from_yaml_takes_a_run_folders_config_and_refuses_aliases(tmp_path):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"command": "search", "options": {"compare": ["ce"]}, **Config(epochs=3).to_dict()}))
    assert Config.from_yaml(path) == Config(epochs=3)
    path.write_text("learn: &l [logit_bias]\nmilestones: [0.5]\nengine_options: {x: *l}\n")
    with pytest.raises(ValueError, match=r"uses a YAML alias \(\*l, line 3\): write the value out"):
        Config.from_yaml(path)


def test_recipe_knobs_round_trip_through_yaml_and_stay_off_by_default(tmp_path):
    import yaml

    assert (Config().mixup, Config().cutmix, Config().mixup_off, Config().drw_from) == (0.0, 0.0, None, None)
    cfg = Config(mixup=1, cutmix=0.5, mixup_off=0.9, drw_from=0.8)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert Config.from_yaml(path) == cfg and isinstance(Config.from_yaml(path).mixup, float)
    with pytest.raises(ValueError, match=r"--drw-from must be in \[0, 1\]"):
        Config(drw_from=1.5).validate()
    with pytest.raises(ValueError, match=r"--mixup must be in \[0, inf\]"):
        Config(mixup=-1.0).validate()


@pytest.mark.parametrize("changes, search, baseline", [
    ({}, "search", "none"),
    ({"augment": "learned"}, "none", "none"),  # only the one-stage search learns augmentation
    ({"objective": "worst-group"}, "none", "none"),  # nor group objectives
    ({"engine": "neumann"}, "none", "none"),  # an engine asks for hyper-steps in the loop
    ({"freeze_backbone": True}, "none", "none"),  # its search is the exact search already
    ({"stage2": "crt"}, "crt", "crt"),
    ({"stage2": "none"}, "none", "none"),
])
def test_stage2_auto_is_the_exact_search_for_the_search_where_it_can_serve(changes, search, baseline):
    cfg = Config(**changes)
    assert cfg.for_role(search=True).stage2 == search and cfg.for_role(search=False).stage2 == baseline
    cfg.for_role(search=True).validate()
    with pytest.raises(ValueError, match="unknown --stage2 'exact': choose from auto, "):
        Config(stage2="exact").validate()
