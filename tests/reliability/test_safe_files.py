"""Corrupted / truncated checkpoints, safe config parsing, and property tests of the loss."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyNet
from hypothesis import given, settings
from hypothesis import strategies as st

from ab_plugin import AutoBalance, Config
from ab_plugin.io import CheckpointError, load_checkpoint, save_checkpoint
from ab_plugin.losses import parametric_cross_entropy

FAST = dict(dataset="blobs", epochs=1, batch_size=32, device="cpu", channels_last=False, augment="none",
            upper_start=0.0, interval=2, hyper_batches=2)


def test_truncated_and_foreign_checkpoints_give_one_line_errors(tmp_path):
    good = tmp_path / "c.pt"
    save_checkpoint(good, {"x": torch.arange(1000)})
    data = good.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "g.pt").write_bytes(b"not a checkpoint")
    for name in ("t.pt", "g.pt"):
        with pytest.raises(CheckpointError, match=f"checkpoint .*{name} is damaged") as e:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    assert torch.equal(load_checkpoint(good)["x"], torch.arange(1000))


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"obj": Evil()}, path)
    with pytest.raises(CheckpointError, match="no checksum"):
        load_checkpoint(path)
    save_checkpoint(path, {"obj": Evil()})  # a valid checksum does not make code loadable
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_resume_refuses_a_checkpoint_of_another_class_count(tiny_bundle, tmp_path):
    trainer, _ = AutoBalance(Config(**FAST)).build(tiny_bundle, run_dir=tmp_path, model=TinyNet(4))
    trainer.fit()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    state["num_classes"] = 7
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    trainer2, _ = AutoBalance(Config(**FAST)).build(tiny_bundle, run_dir=tmp_path, model=TinyNet(4))
    with pytest.raises(ValueError, match="checkpoint has 7 classes but the data has 4"):
        trainer2.fit(resume=True)


def test_yaml_config_is_parsed_as_data(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        Config.from_yaml(p)


finite = st.floats(-20, 20, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(1, 8), st.data())
def test_loss_properties(c, b, data):
    logits = torch.tensor(data.draw(st.lists(finite, min_size=b * c, max_size=b * c))).view(b, c)
    y = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=b, max_size=b)))
    w = torch.tensor(data.draw(st.lists(st.floats(0.0625, 10, width=32), min_size=c, max_size=c)))
    lb = torch.tensor(data.draw(st.lists(finite, min_size=c, max_size=c)))
    ls = torch.tensor(data.draw(st.lists(st.floats(0.0625, 1, width=32), min_size=c, max_size=c)))
    loss = parametric_cross_entropy(logits, y, w, lb, ls, reduction="none")
    assert torch.isfinite(loss).all() and (loss >= -1e-5).all()
    # adding the same constant to every logit changes nothing (softmax shift invariance, Δ applied first)
    shifted = parametric_cross_entropy(logits, y, w, lb + 3.0, ls, reduction="none")
    assert torch.allclose(loss, shifted, atol=1e-3)
    # soft one-hot targets equal hard labels
    soft = parametric_cross_entropy(logits, torch.nn.functional.one_hot(y, c).float(), w, lb, ls, reduction="none")
    assert torch.allclose(loss, soft, atol=1e-4)
