"""The public surface: what README, the examples and the zoo's README import is public, and it resolves."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["ab_plugin", "ab_plugin.data", "ab_plugin.losses", "ab_plugin.policies", "ab_plugin.warmstart",
            "ab_plugin.hypergrad", "ab_plugin.integrations", "ab_plugin.stage2"]
DOCS = [REPO / "README.md", REPO / "policies" / "zoo" / "README.md", *sorted((REPO / "examples").glob("*.py"))]
_FROM = re.compile(r"^\s*from (ab_plugin(?:\.\w+)*) import (\([^)]*\)|[^\n]+)", re.M)


def _imports(text: str) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from ab_plugin... import a, b`` (also parenthesised, with comments)."""
    out = []
    for module, names in _FROM.findall(text):
        names = re.sub(r"#[^\n]*", "", names).strip("()")
        out += [(module, n.split(" as ")[0].strip()) for n in names.split(",") if n.strip()]
    return out


def test_import_parser_reads_both_forms():
    text = "from ab_plugin.data import a, b as c  # note\nfrom ab_plugin import (\n    d,  # x\n    e,\n)\n"
    assert _imports(text) == [("ab_plugin.data", "a"), ("ab_plugin.data", "b"), ("ab_plugin", "d"),
                              ("ab_plugin", "e")]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, missing
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_and_examples_import_only_public_names(doc):
    found = _imports(doc.read_text())
    assert found or doc.suffix == ".md", "no ab_plugin import found: the parser is broken"
    for module_name, name in found:
        module = importlib.import_module(module_name)
        assert hasattr(module, name), f"{doc.name}: {module_name}.{name} does not exist"
        public = getattr(module, "__all__", None)
        assert not name.startswith("_") and (public is None or name in public), (
            f"{doc.name} imports {module_name}.{name}, which is not in its __all__")


def test_readme_attribute_references_resolve():
    text = (REPO / "README.md").read_text()
    refs = set(re.findall(r"`(ab_plugin(?:\.\w+)+)", text))
    assert refs
    for ref in refs:
        module_name, _, attr = ref.rpartition(".")
        try:
            importlib.import_module(ref)  # a module named in prose
            continue
        except ImportError:
            pass
        assert hasattr(importlib.import_module(module_name), attr), ref


def test_helpers_stay_private():
    import ab_plugin.data
    import ab_plugin.losses
    import ab_plugin.policies
    import ab_plugin.warmstart

    helpers = {
        ab_plugin.data: ["channel_stats", "long_tail_index", "scan_imagefolder", "CIFAR10_MEAN", "IMAGENET_MEAN"],
        ab_plugin.losses: ["to_soft_targets", "expand_basis", "la_bias", "NEEDS_NORMED_HEAD"],
        ab_plugin.policies: ["make_provenance", "check_num_classes", "policy_table", "LEARNED_KINDS"],
        ab_plugin.warmstart: ["open_storage", "fail_dead_trials", "STUDY_DB"],
    }
    for module, names in helpers.items():
        assert not set(names) & set(module.__all__), (module.__name__, set(names) & set(module.__all__))
