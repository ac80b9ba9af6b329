"""Policy file format: exact round trips, validation messages, property tests, zoo lookup."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ab_plugin.policies import (
    FORMAT_VERSION,
    OPS,
    BankPolicy,
    ClassPolicy,
    PolicyFile,
    PolicyFileError,
    list_zoo,
    load_policy,
    policy_from_module,
    policy_to_module,
    save_policy,
)
from ab_plugin.policies._file import check_num_classes, make_provenance, parse_policy, policy_from_dict


def _policy_file(c: int = 3, *, module: ClassPolicy | BankPolicy | None = None) -> PolicyFile:
    if module is None:
        module = ClassPolicy(c, ("rotate", "brightness", "flip", "cutout"))
    return PolicyFile(
        version=FORMAT_VERSION,
        classes=[f"class{i}" for i in range(c)],
        class_counts=[1000 // (i + 1) for i in range(c)],
        loss={
            "class_weight": [1.0 + 0.1 * i for i in range(c)],
            "logit_bias": [-0.3 * i for i in range(c)],
            "logit_scale": [1.0 / (i + 1) for i in range(c)],
        },
        augmentation=policy_from_module(module),
        provenance=make_provenance(dataset="unit-test", seed=0),
    )


def _write(tmp_path: Path, text: str, name: str = "p.json") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_module_export_import_round_trip_is_exact(tmp_path: Path) -> None:
    module = ClassPolicy(5, tuple(OPS))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in module.hparameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2.5)
    pf = _policy_file(5, module=module)
    pf.loss["logit_bias"][1] = 0.1 + 0.2  # a float with a long repr
    path = tmp_path / "sub" / "policy.json"
    save_policy(path, pf)
    assert [p.name for p in path.parent.iterdir()] == ["policy.json"]  # no temp file left behind
    back = load_policy(path)
    assert back == pf
    assert back.loss["logit_bias"][1] == 0.30000000000000004
    again = policy_to_module(back)
    assert again is not None and again.per_class() == module.per_class()
    assert policy_from_module(again) == pf.augmentation
    assert "created" in back.provenance and "ab_plugin" in back.provenance


def test_no_augmentation_section(tmp_path: Path) -> None:
    pf = _policy_file(2)
    pf.augmentation = None
    save_policy(tmp_path / "a.json", pf)
    back = load_policy(tmp_path / "a.json")
    assert back.augmentation is None and policy_to_module(back) is None


def test_save_rejects_invalid_and_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    save_policy(path, _policy_file(2))
    before = path.read_bytes()
    bad = _policy_file(2)
    bad.loss["logit_scale"][0] = -1.0
    with pytest.raises(PolicyFileError, match="logit_scale"):
        save_policy(path, bad)
    assert path.read_bytes() == before


def _text(pf: PolicyFile) -> str:
    return json.dumps(pf.to_dict())


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d.update(version=7), r"has version 7; this ab-plugin reads versions 1 and 2: re-export it with"),
        (lambda d: d.pop("version"), r"has no version"),
        (lambda d: d["loss"]["logit_bias"].append(0.0), r"loss.logit_bias has 4 values .* 3 classes"),
        (lambda d: d["class_counts"].pop(), r"class_counts has 2 entries .*class-count mismatch"),
        (lambda d: d["loss"].pop("class_weight"), r"loss is missing key\(s\) \['class_weight'\]"),
        (lambda d: d.pop("provenance"), r"missing key\(s\) \['provenance'\]"),
        (lambda d: d["loss"]["logit_scale"].__setitem__(1, -0.5), r"logit_scale\[1\] = -0.5 .* must be > 0"),
        (lambda d: d["loss"]["class_weight"].__setitem__(0, 0), r"class_weight\[0\] = 0.0 .* must be > 0"),
        (lambda d: d["loss"]["logit_bias"].__setitem__(0, "x"), r"non-numeric"),
        (lambda d: d["loss"]["logit_bias"].__setitem__(0, True), r"non-numeric"),
        (
            lambda d: d["augmentation"]["per_class"]["rotate"]["magnitude"].__setitem__(2, 1.5),
            r"outside \[0, 1\]",
        ),
        (
            lambda d: d["augmentation"]["per_class"]["flip"]["probability"].__setitem__(0, -0.1),
            r"outside \[0, 1\]",
        ),
        (lambda d: d["augmentation"]["ops"].append("posterize"), r"unknown op"),
        (lambda d: d["augmentation"]["per_class"].pop("cutout"), r"per_class has ops"),
        (lambda d: d.update(extra=1), r"unknown key"),
        (lambda d: d.update(classes=["a", "a", "b"]), r"duplicate"),
    ],
)
def test_invalid_documents_are_rejected(tmp_path: Path, mutate: Any, pattern: str) -> None:
    d = _policy_file(3).to_dict()
    mutate(d)
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(PolicyFileError, match=pattern) as info:
        load_policy(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("{not json", r"not valid JSON"),
        ("", r"not valid JSON"),
        ("[1, 2]", r"top level must be a JSON object"),
    ],
)
def test_malformed_json(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(PolicyFileError, match=pattern):
        load_policy(_write(tmp_path, text))


def test_truncated_file(tmp_path: Path) -> None:
    text = _text(_policy_file(3))
    with pytest.raises(PolicyFileError, match=r"not valid JSON .*truncated"):
        load_policy(_write(tmp_path, text[: len(text) // 2]))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_values(tmp_path: Path, literal: str) -> None:
    text = _text(_policy_file(3)).replace('"logit_bias": [', f'"logit_bias": [{literal}, ', 1)
    text = text.replace(", -0.3, -0.6]", ", -0.3]", 1)  # keep the length at 3
    with pytest.raises(PolicyFileError, match=r"non-finite"):
        load_policy(_write(tmp_path, text))


def test_check_num_classes_names_both_counts() -> None:
    pf = _policy_file(3)
    check_num_classes(pf, 3)
    with pytest.raises(PolicyFileError, match=r"policy has 3 classes but the dataset has 10"):
        check_num_classes(pf, 10)


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="does not exist"):
        load_policy(tmp_path / "nope.json")
    with pytest.raises(PolicyFileError, match=r"no policy file or zoo entry named 'nope'.*none yet"):
        load_policy("nope", zoo_dir=tmp_path)


# ------------------------------------------------------------------------------ kinds and versions (issue 24.5)
def _bank_module(c: int = 3) -> BankPolicy:
    module = BankPolicy(c, strengths=(0, 3, 5, 9), ops=("rotate", "brightness", "cutout"), max_d=20.0,
                        crop_flip=False)
    with torch.no_grad():
        module.mixture_logit.copy_(torch.randn(module.mixture_logit.shape, generator=torch.Generator().manual_seed(0)))
    return module


def test_bank_module_file_module_round_trip(tmp_path: Path) -> None:
    module = _bank_module(4)
    pf = _policy_file(4, module=module)
    save_policy(tmp_path / "bank.json", pf)
    assert json.loads((tmp_path / "bank.json").read_text())["augmentation"]["kind"] == "bank"
    back = load_policy(tmp_path / "bank.json")
    assert back == pf
    again = policy_to_module(back)
    assert isinstance(again, BankPolicy) and not again.hparameters()
    torch.testing.assert_close(again.mixture, module.mixture.detach(), atol=1e-6, rtol=0.0)
    assert (again.strengths, again.ops, again.max_d, again.crop_flip) == ((0, 3, 5, 9), module.ops, 20.0, False)
    assert {k: v for k, v in policy_from_module(again).items() if k != "per_class"} == {
        k: v for k, v in pf.augmentation.items() if k != "per_class"}


def _version_1(c: int = 2) -> dict[str, Any]:
    """A policy document as ab-plugin wrote it before augmentation kinds."""
    return {
        "version": 1,
        "classes": [f"c{i}" for i in range(c)],
        "class_counts": [100, 10][:c],
        "loss": {"class_weight": [1.0] * c, "logit_bias": [0.5, -0.5][:c], "logit_scale": [1.0, 0.8][:c]},
        "augmentation": {"ops": ["rotate", "flip"], "crop_flip": True,
                         "per_class": {"rotate": {"probability": [0.25, 0.75][:c], "magnitude": [0.5, 0.125][:c]},
                                       "flip": {"probability": [0.5, 0.0][:c]}}},
        "provenance": {"dataset": "old"},
    }


def test_version_1_file_loads_as_kind_ops_and_saves_as_version_2(tmp_path: Path) -> None:
    old = _version_1()
    pf = load_policy(_write(tmp_path, json.dumps(old)))
    assert pf.version == FORMAT_VERSION == 2
    assert pf.augmentation == {"kind": "ops", **old["augmentation"]}
    assert (pf.classes, pf.class_counts, pf.loss) == (old["classes"], old["class_counts"], old["loss"])
    assert isinstance(policy_to_module(pf), ClassPolicy)
    save_policy(tmp_path / "new.json", pf)
    written = json.loads((tmp_path / "new.json").read_text())
    assert written["version"] == 2 and written["augmentation"]["kind"] == "ops"
    assert load_policy(tmp_path / "new.json") == pf
    old["augmentation"]["kind"] = "ops"  # a version-1 file has no kinds
    with pytest.raises(PolicyFileError, match=r"augmentation has unknown key\(s\) \['kind'\]"):
        load_policy(_write(tmp_path, json.dumps(old)))


@pytest.mark.parametrize("version", [3, None])
def test_other_versions_fail_with_one_line_saying_to_re_export(tmp_path: Path, version: int | None) -> None:
    d = _policy_file(2).to_dict()
    if version is None:
        del d["version"]
    else:
        d["version"] = version
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(PolicyFileError, match="re-export") as info:
        load_policy(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "versions 1 and 2" in msg


def _set_row(i: int, row: list[float]) -> Any:
    return lambda a: a["per_class"]["mixture"].__setitem__(i, row)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (_set_row(0, [0.5, 0.2, 0.2, 0.0]), r"mixture\[0\] must be non-negative weights summing to 1"),
        (_set_row(1, [1.2, -0.2, 0.0, 0.0]), r"mixture\[1\] must be non-negative weights summing to 1"),
        (_set_row(2, [0.5, 0.5, 0.0]), r"mixture\[2\] has 3 values but the file lists 4 strengths"),
        (lambda a: a["per_class"]["mixture"].pop(), r"mixture must hold 3 rows \(one per class\)"),
        (lambda a: a.update(strengths=[1, 3, 5, 9]), r"strengths must be increasing whole numbers starting at 0"),
        (lambda a: a.update(strengths=[0, 5, 3, 9]), r"strengths must be increasing whole numbers starting at 0"),
        (lambda a: a.update(strengths=[0, 3, 3, 9]), r"strengths must be increasing whole numbers starting at 0"),
        (lambda a: a.update(strengths=[0, 3.0, 5, 9]), r"strengths must be increasing whole numbers starting at 0"),
        (lambda a: a["ops"].append("flip"), r"ops of a bank must be ops with a magnitude \(flip has none\)"),
        (lambda a: a.update(max_d=0), r"max_d must be a number > 0"),
        (lambda a: a.update(kind="curriculum"), r"kind is 'curriculum' but must be one of \['ops', 'bank'\]"),
        (lambda a: a.pop("kind"), r"augmentation.kind is None but must be one of"),
        (lambda a: a.pop("max_d"), r"augmentation is missing key\(s\) \['max_d'\]"),
    ],
)
def test_invalid_bank_sections_are_rejected(tmp_path: Path, mutate: Any, pattern: str) -> None:
    d = _policy_file(3, module=_bank_module(3)).to_dict()
    mutate(d["augmentation"])
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(PolicyFileError, match=pattern) as info:
        load_policy(path)
    assert "\n" not in str(info.value)


def test_a_run_stage_finished_before_kinds_still_writes_a_policy() -> None:
    from ab_plugin.search import RunResult

    old = _version_1()
    stage = RunResult.from_dict({"kind": "search", "method": "autobalance", "classes": old["classes"],
                                 "class_counts": old["class_counts"], "alpha": old["loss"],
                                 "augmentation": old["augmentation"], "config": {}})
    assert stage.augmentation == {"kind": "ops", **old["augmentation"]}
    assert policy_from_dict(stage.to_policy().to_dict()).augmentation == stage.augmentation


# ------------------------------------------------------------------------------ zoo
def test_empty_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert list_zoo(tmp_path) == []
    assert list_zoo(tmp_path / "missing") == []
    monkeypatch.setenv("AB_PLUGIN_ZOO", str(tmp_path))
    assert list_zoo() == []


def test_zoo_lookup_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pf = _policy_file(3)
    save_policy(tmp_path / "cifar10-lt_100_resnet32.json", pf)
    (tmp_path / "README.md").write_text("not an entry")
    assert list_zoo(tmp_path) == ["cifar10-lt_100_resnet32"]
    assert load_policy("cifar10-lt_100_resnet32", zoo_dir=tmp_path) == pf
    monkeypatch.setenv("AB_PLUGIN_ZOO", str(tmp_path))
    assert list_zoo() == ["cifar10-lt_100_resnet32"]
    assert load_policy("cifar10-lt_100_resnet32") == pf
    with pytest.raises(PolicyFileError, match="cifar10-lt_100_resnet32"):
        load_policy("cifar100-lt_100_resnet32")


def test_packaged_zoo_entries_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AB_PLUGIN_ZOO", raising=False)
    for name in list_zoo():
        pf = load_policy(name)
        assert pf.provenance, f"zoo entry {name} has no provenance"


# ------------------------------------------------------------------------------ property tests
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
positive = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False)
fraction = st.floats(min_value=0.0, max_value=1.0)
json_leaf = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | finite | st.text(max_size=8)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)


@st.composite
def ops_sections(draw: st.DrawFn, c: int) -> dict[str, Any]:
    ops = draw(st.lists(st.sampled_from(sorted(OPS)), unique=True, max_size=len(OPS)))
    per_class = {}
    for op in ops:
        entry = {"probability": draw(st.lists(fraction, min_size=c, max_size=c))}
        if OPS[op].has_magnitude:
            entry["magnitude"] = draw(st.lists(fraction, min_size=c, max_size=c))
        per_class[op] = entry
    return {"kind": "ops", "ops": ops, "per_class": per_class, "crop_flip": draw(st.booleans())}


@st.composite
def bank_sections(draw: st.DrawFn, c: int) -> dict[str, Any]:
    strengths = [0, *sorted(draw(st.sets(st.integers(1, 30), min_size=1, max_size=6)))]
    rows = []
    for _ in range(c):
        w = draw(st.lists(st.floats(0.0, 1.0), min_size=len(strengths), max_size=len(strengths)))
        total = sum(w)
        rows.append([v / total for v in w] if total > 0 else [1.0] + [0.0] * (len(strengths) - 1))
    return {"kind": "bank", "ops": draw(st.lists(st.sampled_from(_MAGNITUDE_OPS), unique=True, min_size=1)),
            "strengths": strengths, "max_d": draw(st.floats(0.5, 100.0)), "per_class": {"mixture": rows},
            "crop_flip": draw(st.booleans())}


_MAGNITUDE_OPS = sorted(op for op in OPS if OPS[op].has_magnitude)


@st.composite
def valid_policy_dicts(draw: st.DrawFn) -> dict[str, Any]:
    c = draw(st.integers(1, 6))
    classes = draw(st.lists(st.text(min_size=1, max_size=8), min_size=c, max_size=c, unique=True))
    aug = draw(st.none() | ops_sections(c) | bank_sections(c))
    return {
        "version": FORMAT_VERSION,
        "classes": classes,
        "class_counts": draw(st.lists(st.integers(0, 10**9), min_size=c, max_size=c)),
        "loss": {
            "class_weight": draw(st.lists(positive, min_size=c, max_size=c)),
            "logit_bias": draw(st.lists(finite, min_size=c, max_size=c)),
            "logit_scale": draw(st.lists(positive, min_size=c, max_size=c)),
        },
        "augmentation": aug,
        "provenance": draw(st.dictionaries(st.text(max_size=6), json_value, max_size=3)),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_policy_dicts())
def test_valid_dicts_round_trip(d: dict[str, Any]) -> None:
    pf = policy_from_dict(copy.deepcopy(d))
    assert pf.to_dict() == d
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "p.json")
        save_policy(path, pf)
        back = load_policy(path)
    assert back == pf
    for k in ("class_weight", "logit_bias", "logit_scale"):  # bit-exact floats, not just ==
        assert [v.hex() for v in back.loss[k]] == [float(v).hex() for v in d["loss"][k]]


def _only_policy_errors(text: str | bytes) -> None:
    try:
        parse_policy(text)
    except PolicyFileError as e:
        assert "\n" not in str(e)


@settings(max_examples=150, deadline=None)
@given(json_value)
def test_garbage_json_raises_only_policy_file_error(value: Any) -> None:
    _only_policy_errors(json.dumps(value))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_garbage_bytes_raise_only_policy_file_error(data: str | bytes) -> None:
    _only_policy_errors(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_policy_dicts(), st.data())
def test_mutated_valid_dicts_raise_only_policy_file_error(d: dict[str, Any], data: st.DataObject) -> None:
    # replace one random node of a valid document with random JSON
    path: list[Any] = []
    node: Any = d
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    new = data.draw(json_value)
    if not path:
        d = new
    else:
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = new
    _only_policy_errors(json.dumps(d))
    try:
        policy_from_dict(d)
    except PolicyFileError:
        pass


def test_deeply_nested_json_is_a_policy_file_error() -> None:
    with pytest.raises(PolicyFileError):
        parse_policy("[" * 100_000 + "]" * 100_000)
