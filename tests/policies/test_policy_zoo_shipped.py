"""Every shipped zoo entry loads by name, validates, and carries its provenance."""

from ab_plugin.policies import list_zoo, load_policy, policy_to_module


def test_shipped_zoo_entries_load_with_provenance(monkeypatch):
    monkeypatch.delenv("AB_PLUGIN_ZOO", raising=False)
    names = list_zoo()
    assert {"digits-lt_100_resnet32", "cifar10-lt_100_resnet32"} <= set(names)
    for name in names:
        pf = load_policy(name)
        dataset, imbalance, backbone = name.rsplit("_", 2)
        assert pf.provenance["dataset"] == dataset and pf.provenance["backbone"] == backbone
        assert float(pf.provenance["imbalance"]) == float(imbalance)
        assert "balanced_error" in pf.provenance["test_metrics"]
        if pf.augmentation is not None:
            assert policy_to_module(pf).num_classes == len(pf.classes)
