"""CIFAR ResNets in timm's registry, create_backbone, split_model, NormedLinear."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from ab_plugin.models import CifarResNet, NormedLinear, create_backbone, list_backbones, split_model


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_cifar_resnet_sizes_match_the_reference() -> None:
    m = create_backbone("resnet32", 10)
    assert isinstance(m, CifarResNet) and _params(m) == 464_154  # LDAM-DRW / AutoBalance ResNet-32: 0.46 M
    assert _params(create_backbone("resnet20", 10)) == 269_722
    assert _params(create_backbone("resnet110", 10)) == 1_727_962
    assert list_backbones() == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    r20 = create_backbone("resnet20", 10)  # depth 20 = 19 convolutions (option-A shortcuts) + 1 linear
    assert sum(isinstance(x, nn.Conv2d) for x in r20.modules()) == 19
    assert sum(isinstance(x, nn.Linear) for x in r20.modules()) == 1


def test_registered_in_timm_with_its_interface() -> None:
    assert "resnet32_cifar" in timm.list_models("*_cifar")
    m = timm.create_model("resnet32_cifar", num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, 64, 8, 8)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 64) and m(x).shape == (2, 7)
    assert m.num_classes == 7 and m.num_features == 64 and m.get_classifier() is m.fc
    assert m.pretrained_cfg["input_size"] == (3, 32, 32) and m.default_cfg["mean"][0] == pytest.approx(0.4914)
    assert timm.data.resolve_data_config({}, model=m)["input_size"] == (3, 32, 32)
    m.reset_classifier(3)
    assert m(x).shape == (2, 3) and m.num_classes == 3
    m.reset_classifier(0)
    assert m(x).shape == (2, 64)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("resnet20_cifar", pretrained=True)


def test_split_model_reproduces_forward() -> None:
    x = torch.randn(3, 3, 32, 32)
    for m in (create_backbone("resnet20", 5).eval(), create_backbone("resnet20", 5, normed_head=True).eval()):
        features_fn, classifier = split_model(m)
        f = features_fn(x)
        assert f.shape == (3, 64)
        assert torch.allclose(classifier(f), m(x), atol=1e-6)

    class Plain(nn.Module):  # no timm interface: a torchvision-style model with .fc
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body(x))

    p = Plain()
    features_fn, classifier = split_model(p)
    f = features_fn(x)
    assert f.shape == (3, 4) and classifier is p.fc and torch.allclose(classifier(f), p(x))
    assert len(p.fc._forward_pre_hooks) == 0
    f.sum().backward()  # the features keep their graph
    assert p.body[0].weight.grad is not None


def test_unwrap_model_sees_through_ddp_data_parallel_compile_and_ema() -> None:
    from timm.utils import ModelEmaV3

    from ab_plugin.models import unwrap_model

    net = create_backbone("resnet20", 3)
    # a DistributedDataParallel without a process group: the object, as isinstance and unwrapping see it
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(ddp)
    ddp.module = net
    compiled = torch.compile(net)  # lazy: nothing is compiled until it is called
    assert compiled is not net and type(compiled).__name__ == "OptimizedModule"
    wrapped = [nn.DataParallel(net), ddp, compiled, torch.compile(nn.DataParallel(net))]
    for w in [net, *wrapped]:
        assert unwrap_model(w) is net, type(w).__name__
    ema = ModelEmaV3(net)  # holds its own copy
    assert unwrap_model(ema) is ema.module and ema.module is not net
    features_fn, classifier = split_model(compiled)
    assert classifier is net.fc


def test_normed_head_is_a_cosine_classifier() -> None:
    m = create_backbone("resnet32", 10, normed_head=True)
    assert isinstance(m.fc, NormedLinear) and m.fc.weight.shape == (10, 64)
    out = m(torch.randn(4, 3, 32, 32))
    assert out.abs().max() <= 1 + 1e-5
    lin = NormedLinear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 0, 0], [0, 0, -1]]))
    assert torch.allclose(lin(torch.tensor([[5.0, 0, 0]])), torch.tensor([[1.0, 0.0]]))


def test_channels_last_forward_and_backward() -> None:
    m = create_backbone("resnet20", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = m(x)
    m = m.to(memory_format=torch.channels_last)
    out = m(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)
    m.train()
    m(x.to(memory_format=torch.channels_last)).sum().backward()
    assert m.conv1.weight.grad is not None


def test_timm_models_by_name_and_unknown_backbone() -> None:
    m = create_backbone("test_resnet", 4, normed_head=True)
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 4) and isinstance(m.get_classifier(), NormedLinear)
    features_fn, classifier = split_model(m.eval())
    assert torch.allclose(classifier(features_fn(x)), m(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet33': choose one of resnet20..resnet110"):
        create_backbone("resnet33", 10)
    assert create_backbone("resnet44_cifar", 2)(x).shape == (2, 2)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_imagenet_backbones_build_through_timm_without_weights(name, monkeypatch) -> None:
    from ab_plugin import Config
    from ab_plugin.search import build_model

    def no_download(*args, **kwargs):
        raise AssertionError(f"{name}: pretrained weights were requested")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_download)
    m = build_model(Config(backbone=name), 1000, "autobalance")  # the path a search / retrain / baseline takes
    assert m.get_classifier().out_features == 1000 and m.num_features == 2048
    assert m.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert isinstance(build_model(Config(backbone=name), 7, "ldam").get_classifier(), NormedLinear)


def test_built_the_timm_way_features_only_and_drop_path() -> None:
    full = timm.create_model("resnet32_cifar", num_classes=5).eval()
    feats = timm.create_model("resnet32_cifar", features_only=True).eval()
    assert feats.feature_info.channels() == [16, 32, 64] and feats.feature_info.reduction() == [1, 2, 4]
    missing, unexpected = feats.load_state_dict(full.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"fc.weight", "fc.bias"}
    x = torch.randn(2, 3, 32, 32)
    maps = feats(x)
    assert [tuple(f.shape) for f in maps] == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    assert torch.allclose(maps[-1], full.forward_features(x), atol=1e-6)  # the stem is replayed exactly
    (last,) = timm.create_model("resnet20_cifar", features_only=True, out_indices=(2,))(x)
    assert last.shape == (2, 64, 8, 8)

    m = timm.create_model("resnet20_cifar", num_classes=3, drop_path_rate=0.2, drop_rate=0.1)
    rates = [b.drop_path.drop_prob if not isinstance(b.drop_path, nn.Identity) else 0.0
             for stage in (m.layer1, m.layer2, m.layer3) for b in stage]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    assert m.pretrained_cfg["architecture"] == "resnet20_cifar" and m.default_cfg is m.pretrained_cfg
    torch.manual_seed(0)
    a = m.train()(x)
    assert not torch.allclose(a, m(x))  # stochastic depth and dropout in training
    m.eval()
    assert torch.equal(m(x), m(x))
