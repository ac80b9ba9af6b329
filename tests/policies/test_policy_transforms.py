"""Using exported policies: PerClassTransform, PerClassTransformV2 in torchvision v2, display, S3 script."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from rich.console import Console
from torchvision import tv_tensors
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from ab_plugin.policies import (
    FORMAT_VERSION,
    OPS,
    BankPolicy,
    ClassPolicy,
    PerClassTransform,
    PerClassTransformV2,
    PolicyFile,
    PolicyFileError,
    policy_from_module,
    save_policy,
)
from ab_plugin.policies._display import plot_policy_heatmap, policy_table


def _module(p: list[float], m: list[float], ops: tuple[str, ...] = ("brightness", "rotate"), crop_flip: bool = False):
    module = ClassPolicy(len(p), ops, crop_flip=crop_flip, learnable=False)
    module.load_per_class(
        {op: ({"probability": p, "magnitude": m} if OPS[op].has_magnitude else {"probability": p}) for op in ops}
    )
    return module


def _file(module: ClassPolicy | BankPolicy) -> PolicyFile:
    c = module.num_classes
    return PolicyFile(
        version=FORMAT_VERSION,
        classes=[f"c{i}" for i in range(c)],
        class_counts=[100 // (i + 1) for i in range(c)],
        loss={"class_weight": [1.0] * c, "logit_bias": [0.0] * c, "logit_scale": [1.0] * c},
        augmentation=policy_from_module(module),
        provenance={"dataset": "unit-test"},
    )


# class 0: never augmented; class 1: always, strongly
PF = _file(_module([0.0, 1.0], [0.5, 0.9]))


def test_per_class_transform_uint8_and_float() -> None:
    t = PerClassTransform(PF)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 1] * 4)
    out = t(x, y)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out[y == 0], x[y == 0])
    assert all(not torch.equal(out[i], x[i]) for i in range(8) if y[i] == 1)
    xf = x.float() / 255
    outf = t(xf, y)
    assert outf.dtype == torch.float32 and torch.equal(outf[y == 0], xf[y == 0])
    single = t(x[1], 1)
    assert single.shape == (3, 16, 16) and single.dtype == torch.uint8
    assert torch.is_grad_enabled()


def test_per_class_transform_from_path(tmp_path: Path) -> None:
    save_policy(tmp_path / "p.json", PF)
    t = PerClassTransform(str(tmp_path / "p.json"))
    assert t.num_classes == 2
    no_aug = _file(_module([0.5], [0.5]))
    no_aug.augmentation = None
    with pytest.raises(PolicyFileError, match="no augmentation"):
        PerClassTransform(no_aug)


def test_v2_compose_on_pil_image_and_label() -> None:
    pipeline = v2.Compose([v2.ToImage(), PerClassTransformV2(PF), v2.ToDtype(torch.float32, scale=True)])
    g = torch.Generator().manual_seed(1)
    arr = torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8, generator=g).numpy()
    pil = PIL.Image.fromarray(arr)
    ref = torch.from_numpy(arr).permute(2, 0, 1).float() / 255

    img0, label0 = pipeline((pil, 0))
    assert label0 == 0 and isinstance(img0, tv_tensors.Image)
    assert img0.dtype == torch.float32 and img0.shape == (3, 20, 24)
    torch.testing.assert_close(img0.as_subclass(torch.Tensor), ref)  # class 0: p = 0

    img1, label1 = pipeline((pil, 1))
    assert label1 == 1 and not torch.allclose(img1.as_subclass(torch.Tensor), ref, atol=0.02)

    # plain tensor image with a tensor label, and a dict sample
    out, lab = PerClassTransformV2(PF)(torch.from_numpy(arr).permute(2, 0, 1), torch.tensor(0))
    assert lab.item() == 0 and torch.equal(out, torch.from_numpy(arr).permute(2, 0, 1))
    sample = PerClassTransformV2(PF)({"image": pil, "label": 1})
    assert isinstance(sample["image"], PIL.Image.Image) and sample["label"] == 1

    with pytest.raises(ValueError, match="needs the class label"):
        PerClassTransformV2(PF)(pil)
    with pytest.raises(ValueError, match="outside"):
        pipeline((pil, 5))


def test_v2_pipeline_with_image_folder(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    for cls in ("c0", "c1"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            arr = torch.randint(0, 256, (12, 12, 3), dtype=torch.uint8, generator=g).numpy()
            PIL.Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    dataset = ImageFolder(str(tmp_path), transform=None)
    pipeline = v2.Compose([v2.ToImage(), PerClassTransformV2(PF), v2.ToDtype(torch.float32, scale=True)])
    for i in range(len(dataset)):
        pil, label = dataset[i]
        image, out_label = pipeline(dataset[i])
        assert out_label == label and image.shape == (3, 12, 12) and image.dtype == torch.float32
        plain = v2.functional.to_dtype(v2.functional.to_image(pil), torch.float32, scale=True)
        assert torch.equal(image, plain) == (label == 0)


def test_policy_table_and_heatmap(tmp_path: Path) -> None:
    pf = _file(_module([0.1, 0.9, 0.5], [0.2, 0.8, 0.4], ops=("rotate", "flip", "cutout")))
    console = Console(record=True, width=200)
    console.print(policy_table(pf))
    text = console.export_text()
    for s in ("c0", "c2", "rotate p/m", "flip p", "cutout p/m", "0.90/0.80", "Δ"):
        assert s in text, s

    out = tmp_path / "plots" / "heat.png"
    plot_policy_heatmap(pf, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["heat.png"]
    pf.augmentation = None
    plot_policy_heatmap(pf, out)
    assert out.stat().st_size > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_class_transform_on_cuda() -> None:
    t = PerClassTransform(PF)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, device="cuda")
    y = torch.tensor([0, 1, 0, 1], device="cuda")
    out = t(x, y)
    assert out.device.type == "cuda" and torch.equal(out[0], x[0])


# issue 26.21: the built-in crop + flip is said and can be switched off; the wrapper shows its labels ---------
def test_crop_flip_is_explicit_and_can_be_left_to_the_pipeline() -> None:
    live = _module([0.0, 0.0], [0.0, 0.0], crop_flip=True)  # no per-class op ever fires: only crop + flip
    pf = _file(live)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 1] * 16)
    torch.manual_seed(0)
    own = PerClassTransform(pf)
    assert own.crop_flip and PerClassTransformV2(pf).crop_flip
    assert not torch.equal(own(x, y), x)  # the policy file's crop_flip: true crops and flips by itself
    off = PerClassTransform(pf, crop_flip=False)
    v2off = PerClassTransformV2(pf, crop_flip=False)
    assert not off.crop_flip and not v2off.crop_flip
    assert torch.equal(off(x, y), x)
    image, label = v2off((tv_tensors.Image(x[1]), 1))
    assert label == 1 and torch.equal(image, x[1])
    assert not PerClassTransform(live, crop_flip=False).crop_flip and live.crop_flip  # the caller's module is kept
    assert PerClassTransform(_file(_module([0.0, 0.0], [0.0, 0.0])), crop_flip=True).crop_flip
    assert "crop" in PerClassTransformV2.__doc__ and "v2.RandomCrop" in PerClassTransformV2.__doc__


def test_sample_transform_dataset_exposes_the_wrapped_labels(tmp_path: Path) -> None:
    from ab_plugin.integrations import SampleTransformDataset

    for name in ("b", "a"):
        for i in range(2 if name == "a" else 3):
            (tmp_path / name).mkdir(exist_ok=True)
            PIL.Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / name / f"{i}.png")
    folder = ImageFolder(str(tmp_path))
    wrapped = SampleTransformDataset(folder, transforms=PerClassTransformV2(PF))
    assert wrapped.targets == folder.targets == [0, 0, 1, 1, 1]
    assert wrapped.classes == ["a", "b"] and wrapped.class_to_idx == {"a": 0, "b": 1}
    with pytest.raises(AttributeError):
        _ = SampleTransformDataset(list(zip(range(3), range(3), strict=True))).targets


# issue 24.5: an exported bank runs through both transforms, and `ab-plugin show` draws it ----------------------
def _bank(mixture: list[list[float]], crop_flip: bool = False, strengths: tuple[int, ...] = (0, 2, 4, 6, 8, 10)
          ) -> BankPolicy:
    module = BankPolicy(len(mixture), strengths=strengths, learnable=False, crop_flip=crop_flip)
    module.load_mixture(mixture)
    return module


# class 0: all its mass on strength 0 (no op); class 1: on the top strength (10 ops at magnitude 1/3)
BANK = _file(_bank([[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1.0]]))


def test_bank_file_through_per_class_transform(tmp_path: Path) -> None:
    save_policy(tmp_path / "bank.json", BANK)
    t = PerClassTransform(tmp_path / "bank.json")
    assert isinstance(t.policy, BankPolicy) and not t.crop_flip and "strengths=[0, 2, 4, 6, 8, 10]" in repr(t)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1] * 4)
    for xin in (x, x.float() / 255, x.double() / 255):
        out = t(xin, y)
        assert out.dtype == xin.dtype and out.shape == xin.shape
        assert torch.equal(out[y == 0], xin[y == 0])
        assert all(not torch.equal(out[i], xin[i]) for i in range(8) if y[i] == 1)
    assert torch.equal(t(x[0], 0), x[0]) and t(x[1], 1).shape == (3, 16, 16)


def test_bank_file_through_per_class_transform_v2() -> None:
    t = PerClassTransformV2(BANK)
    assert not t.crop_flip and "strengths=" in repr(t)
    torch.manual_seed(0)
    arr = torch.randint(0, 256, (12, 14, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).numpy()
    pil, chw = PIL.Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)
    for label, same in ((0, True), (1, False)):
        img, lab = t((pil, label))
        assert lab == label and isinstance(img, PIL.Image.Image) and img.size == pil.size
        assert np.array_equal(np.asarray(img), arr) == same
        img, _ = t((tv_tensors.Image(chw), label))
        assert isinstance(img, tv_tensors.Image) and img.dtype == torch.uint8 and torch.equal(img, chw) == same
        img, _ = t((chw.float() / 255, torch.tensor(label)))
        assert img.dtype == torch.float32 and img.shape == (3, 12, 14) and torch.equal(img, chw.float() / 255) == same


def test_bank_crop_flip_can_be_switched_either_way() -> None:
    live = _bank([[1.0, 0, 0, 0, 0, 0]] * 2, crop_flip=True)  # strength 0 only: nothing but the crop + flip
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1] * 16)
    torch.manual_seed(0)
    assert PerClassTransform(_file(live)).crop_flip and not torch.equal(PerClassTransform(_file(live))(x, y), x)
    off = PerClassTransform(live, crop_flip=False)
    assert not off.crop_flip and live.crop_flip  # the caller's module is kept
    assert torch.equal(off(x, y), x)
    assert PerClassTransformV2(_file(_bank([[1.0, 0, 0, 0, 0, 0]])), crop_flip=True).crop_flip


def test_bank_table_heatmap_and_show(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ab_plugin.cli import main

    pf = _file(_bank([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]], strengths=(0, 5, 10)))
    console = Console(record=True, width=200)
    console.print(policy_table(pf))
    text = console.export_text()
    for s in ("s=0", "s=5", "s=10", "E[s]", "0.50", "0.25", "3.75", "10.00", "magnitude k/30"):
        assert s in text, s
    assert "p/m" not in text
    save_policy(tmp_path / "bank.json", pf)
    res = CliRunner().invoke(main, ["show", str(tmp_path / "bank.json")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for s in ("s=0", "s=5", "s=10", "E[s]", "3.75", "heat map:"):
        assert s in res.output, s
    assert (tmp_path / "bank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(main, ["show", str(tmp_path / "bank.json"), "--heatmap", str(tmp_path / "h.png"),
                                    "--format", "json"], catch_exceptions=False)
    assert json.loads(res.stdout)["augmentation"]["strengths"] == [0, 5, 10]
    assert (tmp_path / "h.png").stat().st_size > 0
