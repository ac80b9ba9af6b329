"""The warm start's recipe knobs (``--recipe-knobs``): weight decay, mixup, the DRW point and stage 2 are sampled
only as the base config's search can run them, stored so that they round-trip to a :class:`Config`, start from
the base's own recipe, and reach the refined search *and* its retrain through ``search --warmstart``.

Samples come from a seeded random sampler (every choice gets drawn); the end-to-end test runs the tiny proxies of
``test_warmstart_optuna`` (digits-lt, 40 images in the largest class, 2 epochs).
"""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from click.testing import CliRunner
from conftest import TinyNet
from test_warmstart_optuna import FAST, FAST_ARGS, _one_thread  # noqa: F401  (its one-thread fixture: here too)

from ab_plugin import Config
from ab_plugin.hypergrad import list_engines
from ab_plugin.search import AutoBalance
from ab_plugin.warmstart import load_warmstart_study, warmstart_command
from ab_plugin.warmstart.space import RecipeSpace, SearchSpace, params_to_config, space_from_options

optuna.logging.set_verbosity(optuna.logging.WARNING)

RECIPE = ("weight_decay", "mixup", "drw_from", "stage2")
SPACE = SearchSpace(recipe=RecipeSpace(stage2=("none", "crt", "wb", "search")))
# a 4-epoch proxy starts its epochs at 0, 0.25, 0.5, 0.75: the DRW range (0.5, 0.9) holds the last two
DRW_4 = {None, 0.5, 0.75}


def _sample(base: Config, n: int, *, trial_epochs: int = 4, storage: str | None = None) -> list[dict]:
    """``n`` points of :data:`SPACE` for ``base``, drawn by a seeded random sampler; their stored params (read
    back through a fresh storage object when ``storage`` is a file)."""
    study = optuna.create_study(study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        SPACE.suggest(trial, base, trial_epochs)
        study.tell(trial, 0.5)
    stored = optuna.load_study(study_name="s", storage=storage) if storage else study
    return [t.params for t in stored.trials]


@pytest.mark.parametrize("engine", list_engines())
def test_the_space_proposes_only_configs_the_engines_search_runs(engine, tiny_bundle):
    base = Config(engine=engine, epochs=4, batch_size=16, device="cpu")
    points = _sample(base, 10)
    for p in points:
        cfg = params_to_config(base, p)
        # the trainer's own refusals (mixing with an engine that cannot replay the mix) are the test, not ours
        AutoBalance(cfg).build(tiny_bundle, model=TinyNet(4))
        assert p["drw_from"] in DRW_4 and p["stage2"] in SPACE.recipe.stage2
        assert SPACE.recipe.weight_decay[0] <= p["weight_decay"] <= SPACE.recipe.weight_decay[1]
    if engine == "head":
        assert all(0 <= p["mixup"] <= 1 for p in points) and max(p["mixup"] for p in points) > 0.1
    else:  # not sampled: the base's (no) mixing stays
        assert not any("mixup" in p for p in points)


def test_stored_params_round_trip_to_a_config_of_the_right_types(tmp_path):
    # the base holds none of the space's values, so each recipe field below can only come from the trial
    base = Config(weight_decay=0.0, mixup=3.0, drw_from=0.05, stage2="tau-norm")
    stored = _sample(base, 16, storage=f"sqlite:///{tmp_path / 'rt.db'}")
    for p in stored:
        cfg = params_to_config(base, p)
        assert {k: getattr(cfg, k) for k in RECIPE} == {k: p[k] for k in RECIPE}
        assert type(cfg.weight_decay) is float and type(cfg.mixup) is float and type(cfg.stage2) is str
        assert cfg.drw_from is None or type(cfg.drw_from) is float
        cfg.validate()
    assert {p["drw_from"] for p in stored} == DRW_4  # off (None) survives the storage too
    assert {p["stage2"] for p in stored} == set(SPACE.recipe.stage2)


def test_known_good_points_carry_the_base_recipe():
    base = Config(weight_decay=1e-3, mixup=0.3, drw_from=0.7, stage2="crt")
    points = SPACE.known_good(base, trial_epochs=5)
    assert points[0]["init"] == "la" and points[0]["tau"] == 1.0
    # DRW from 0.7 of 5 epochs switches on at epoch 4, which is the choice 0.8: the proxy runs as the base does
    for p in points:
        assert {k: p[k] for k in RECIPE} == {"weight_decay": 1e-3, "mixup": 0.3, "drw_from": 0.8, "stage2": "crt"}
    # values outside the space are clipped; DRW after the proxy's last epoch start is off there; an engine that
    # cannot mix gets no mixup; a stage 2 not among the choices gives the first choice
    odd = SPACE.known_good(Config(weight_decay=0.0, drw_from=0.95, engine="neumann", stage2="tau-norm"), 5)[0]
    assert {k: odd.get(k, "absent") for k in RECIPE} == {"weight_decay": 1e-3, "mixup": "absent", "drw_from": None,
                                                          "stage2": "none"}
    # without --recipe-knobs: the points and stored settings of studies made before the knobs existed
    plain = SearchSpace()
    assert plain.known_good(base)[0] == {"init": "la", "tau": 1.0, "upper_lr": base.upper_lr,
                                         "val_fraction": base.val_fraction}
    assert not set(RECIPE) & set(plain.to_dict())


def test_the_default_space_starts_from_the_default_recipe_and_resolves_auto():
    space = RecipeSpace()
    # the product's defaults: wd 2e-3 (inside the range, not at its edge) and --stage2 auto, which for the search
    # is the exact stage-2 search: the first trial runs exactly the recipe `ab-plugin search` runs
    point = space.known_good(Config(), 8)
    assert (point["weight_decay"], point["stage2"], point["drw_from"], point["mixup"]) == (2e-3, "search", None, 0.0)
    assert space.weight_decay[0] < Config().weight_decay < space.weight_decay[1]
    assert space.stage2_choices(Config()) == ["search", "none", "crt"]
    # where the search cannot be exact, auto is none, and the choices hold it once
    learned = Config(augment="learned")
    assert space.stage2_choices(learned) == ["none", "crt"] and space.known_good(learned, 8)["stage2"] == "none"
    space.check_base(learned, 8)
    # a base with an explicit stage 2 among the choices starts from it; auto is still the search's own
    assert space.known_good(Config(stage2="crt"), 8)["stage2"] == "crt"
    assert space.stage2_choices(Config(stage2="crt")) == ["search", "none", "crt"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(12):
        trial = study.ask()
        space.suggest(trial, Config(), 8)
        drawn.add(trial.params["stage2"])
        study.tell(trial, 0.5)
    assert drawn == {"search", "none", "crt"}  # concrete values: what a trial stores is what it hands on


def test_space_option_sets_ranges_and_bad_spaces_are_one_line_errors(tmp_path):
    space = space_from_options("la,VS", recipe=True, ranges=["tau=0,2", "weight-decay=1e-5,1e-3", "stage2=None,CRT"])
    assert (space.inits, space.tau, space.recipe.weight_decay, space.recipe.stage2) == (
        ("la", "vs"), (0.0, 2.0), (1e-5, 1e-3), ("none", "crt"))
    assert space_from_options("la").recipe is None
    for kwargs, msg in (({"ranges": ["mixup=0,1"]}, "is a recipe knob: add --recipe-knobs"),
                        ({"ranges": ["tau=1"]}, "takes two numbers"),
                        ({"ranges": ["lr=0,1"]}, "NAME one of tau, gamma"),
                        ({"recipe": True, "ranges": ["stage2=none,tau-norm"]}, "tau-norm chooses τ on the split"),
                        ({"recipe": True, "ranges": ["weight_decay=0,1e-3"]}, "log scale")):
        with pytest.raises(ValueError, match=msg):
            space_from_options("la", **kwargs)
    with pytest.raises(ValueError, match=r"drw_from range \(0.6, 0.9\) holds no epoch start of a 2-epoch proxy"):
        RecipeSpace(drw_from=(0.6, 0.9)).check_base(Config(), 2)

    for args, msg in ((["--space", "stage2=none,search", "--augment", "learned"],
                       "error: stage2 choice 'search' cannot run with this config (--stage2 search learns"),
                      (["--space", "mixup=0,2"], "error: --space mixup=... is a recipe knob")):
        res = CliRunner().invoke(warmstart_command, [*FAST_ARGS, "--out", str(tmp_path / "ws"), "--quiet",
                                                     *(["--recipe-knobs"] if "stage2" in args[1] else []), *args])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(msg), res.output
        assert not (tmp_path / "ws").exists()  # refused before a study or folder was made


def test_recipe_study_from_the_cli_reaches_the_search_and_its_retrain(tmp_path):
    from ab_plugin.cli import main

    ws, run = tmp_path / "ws", tmp_path / "run"
    res = CliRunner().invoke(warmstart_command, [
        *FAST_ARGS, "--out", str(ws), "--quiet", "--format", "json", "--n-trials", "3", "--trial-epochs", "2",
        "--pruner", "none", "--sampler", "random", "--inits", "la", "--recipe-knobs", "--space", "stage2=crt,search"],
        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    best = json.loads(res.output)["best"]["params"]
    trials = load_warmstart_study(ws).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert {t.params["stage2"] for t in trials} <= {"crt", "search"}
    # the first trial is the base's recipe (its --stage2 auto is the exact search, a choice here)
    assert {k: trials[0].params[k] for k in RECIPE} == {"weight_decay": FAST.weight_decay, "mixup": FAST.mixup,
                                                       "drw_from": FAST.drw_from, "stage2": "search"}
    # stage-2 trials are scored after their stage 2, which ran; no epoch of theirs was reported to a pruner
    for t in trials:
        assert t.user_attrs["stage2"]["recipe"] == t.params["stage2"] and sorted(t.intermediate_values) == [2]

    # options the best trial must override: none of them is a value the space holds
    res = CliRunner().invoke(main, ["search", "--warmstart", str(ws), "--epochs", "1", "--compare", "", "--quiet",
                                    "--format", "json", "--out", str(run), "--weight-decay", "0", "--mixup", "3",
                                    "--drw-from", "0.05", "--stage2", "wb"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    chosen = {k: best[k] for k in RECIPE}
    for stage in ("search", "retrain"):
        result = json.loads((run / stage / "result.json").read_text())
        assert {k: result["config"][k] for k in RECIPE} == chosen, stage
    retrain = json.loads((run / "retrain" / "result.json").read_text())
    assert retrain["stage2"]["recipe"] == best["stage2"]  # the retrain ran the chosen stage 2
    # `ab-plugin retrain RUN` starts from the run's config.yaml: the same recipe
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert {k: saved[k] for k in RECIPE} == chosen


def test_search_warmstart_n_with_recipe_knobs_runs_its_study_over_the_recipe(tmp_path):
    from ab_plugin.cli import main

    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["search", *FAST_ARGS, "--warmstart", "2", "--warmstart-recipe-knobs",
                                    "--compare", "", "--no-retrain", "--quiet", "--format", "json", "--out", str(run)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    study = load_warmstart_study(run / "warmstart")
    assert len(study.trials) == 2 and all(set(RECIPE) - {"mixup"} <= set(t.params) for t in study.trials)
    result = json.loads((run / "search" / "result.json").read_text())
    assert {k: result["config"][k] for k in study.best_trial.params} == study.best_trial.params

    # a finished study's space is fixed; without --warmstart the flag means nothing
    for args, msg in ((["--warmstart", str(run / "warmstart"), "--warmstart-recipe-knobs"], "names a finished study"),
                      (["--warmstart-recipe-knobs"], "--warmstart-recipe-knobs goes with --warmstart N")):
        res = CliRunner().invoke(main, ["search", *FAST_ARGS, *args, "--out", str(tmp_path / "other"), "--quiet"])
        assert res.exit_code == 2 and msg in res.output, res.output
