"""Backbones: every registered network at reduced size (forward/backward, stage shapes,
freezing, weight round trips), torchvision parity, shortcut options and weight loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detres.modeling import build_classifier, list_backbones, load_weights
from detres.modeling.backbones import BACKBONES, Backbone, builder_options
from detres.modeling.backbones.resnet import ZeroPadShortcut
from detres.modeling.complexity import count_params

pytestmark = pytest.mark.usefixtures("one_thread")

SLOW = {"resnet1202"}  # 600 blocks: a few seconds even when tiny
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in list_backbones()]


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """Equal up to ``tol`` times the largest magnitude (deep random nets give big logits)."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * scale, f"max abs error {err:.3g} vs scale {scale:.3g}"


def tiny(name: str, num_classes: int = 5, **overrides: object) -> Backbone:
    """Backbone ``name`` at a small width (8 for ImageNet nets, 4 for CIFAR nets)."""
    width = 8 if builder_options(name)["width_per_group"] == 64 else 4
    model = build_classifier(name, num_classes=num_classes, width_per_group=width, **overrides)
    assert isinstance(model, Backbone)
    return model


def tiny_input(model: Backbone, n: int = 2) -> torch.Tensor:
    size = 64 if model.default_input_size == 224 else 16
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registry_lists_the_issue_networks() -> None:
    names = set(list_backbones())
    expected = {f"resnet{d}" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110, 1202)}
    expected |= {f"plain{d}" for d in (18, 34, 20, 32, 44, 56, 110)}
    expected |= {f"preact_resnet{d}" for d in (18, 34, 50, 101, 152, 110, 164)}
    assert expected | {"vgg16"} <= names
    assert list_backbones() == sorted(names) == BACKBONES.names()


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = tiny(name).train()
    x = tiny_input(model)
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"{name}: no gradient for {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # Without a head the forward returns pooled features of the advertised width.
    trunk = tiny(name, num_classes=0).eval()
    assert trunk.num_features == model.num_features
    with torch.no_grad():
        assert trunk(x).shape == (2, trunk.num_features)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_matches_forward_features(name: str) -> None:
    model = tiny(name).eval()
    x = tiny_input(model)
    specs = model.output_shape()
    assert list(specs) == model.stage_names == list(model.stage_modules())
    with torch.no_grad():
        feats = model.forward_features(x, model.stage_names)
    assert list(feats) == model.stage_names
    for stage, f in feats.items():
        spec = specs[stage]
        assert f.shape[1] == spec.channels, stage
        assert f.shape[2:] == (math.ceil(x.shape[2] / spec.stride),) * 2, stage
    # Only what is asked for, and nothing computed past the last requested stage.
    called: list[str] = []
    last = list(model.stage_modules().values())[-1]
    for m in last.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda *_: called.append("conv"))
    with torch.no_grad():
        early = model.forward_features(x, [model.stage_names[1]])
    assert list(early) == [model.stage_names[1]] and not called
    torch.testing.assert_close(early[model.stage_names[1]], feats[model.stage_names[1]])
    with pytest.raises(KeyError, match="subset of"):
        model.forward_features(x, ["res9"])


@pytest.mark.parametrize("name", NAMES)
def test_freeze_stem_and_first_stage(name: str) -> None:
    torch.manual_seed(0)
    model = tiny(name).train()
    x = tiny_input(model)
    model(x)  # non-trivial BN running statistics
    model.eval()
    with torch.no_grad():
        before = model(x)
    keys_before = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_bn_first = sum(
        isinstance(m, nn.BatchNorm2d)
        for s in list(model.stage_modules().values())[:2]
        for m in s.modules()
    )
    model.freeze(2)
    stages = list(model.stage_modules().values())
    for i, stage in enumerate(stages):
        assert all(p.requires_grad == (i >= 2) for p in stage.parameters()), f"stage {i}"
        if i < 2:
            assert not any(isinstance(m, nn.BatchNorm2d) for m in stage.modules()), f"stage {i}"
    # Exactly the BN layers of stem and the first stage became FrozenBatchNorm2d.
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == n_bn_first
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn - n_bn_first
    if name != "vgg16":
        assert n_bn_first > 0
    with torch.no_grad():
        assert_close_rel(model(x), before)  # FrozenBN == BN in eval mode
    assert {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} == keys_before
    with pytest.raises(ValueError, match="freeze_at"):
        model.freeze(len(stages) + 1)


@pytest.mark.parametrize("name", NAMES)
def test_load_weights_round_trip_and_wrong_model(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tiny(name).train()
    src(tiny_input(src))  # move BN statistics off their initial values
    src.eval()
    x = tiny_input(src)
    torch.manual_seed(1)
    dst = tiny(name).eval()
    plain, ckpt = tmp_path / "plain.pth", tmp_path / "ckpt.pth"
    torch.save(src.state_dict(), plain)
    torch.save({"model": src.state_dict(), "config": {"task": "cls"}, "iteration": 3}, ckpt)
    for path in (plain, ckpt):
        load_weights(dst, path)
        with torch.no_grad():
            torch.testing.assert_close(dst(x), src(x))
    other = "resnet18" if name == "vgg16" else "vgg16"
    wrong = tmp_path / f"{other}.pth"
    torch.save(tiny(other).state_dict(), wrong)
    with pytest.raises(ValueError, match=rf"{other}\.pth.*does not fit.*missing keys"):
        load_weights(dst, wrong)


# ---------------------------------------------------------------------- torchvision parity


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.1)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_resnet_parity_with_torchvision(name: str) -> None:
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)().eval()
    with torch.no_grad():
        _randomize_bn(ref)
    ours = build_classifier(name, stride_in_1x1=False).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close_rel(ours(x), ref(x))
        if name in ("resnet50", "resnet101", "resnet152"):  # the paper's variant differs
            paper = build_classifier(name).eval()
            paper.load_state_dict(ref.state_dict(), strict=True)
            assert not torch.allclose(paper(x), ref(x), atol=1e-3)
    # The same file through load_weights, into the FrozenBN trunk the detector uses.
    frozen = build_classifier(name, stride_in_1x1=False, norm="FrozenBN").eval()
    frozen.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        assert_close_rel(frozen(x), ref(x))


def test_vgg16_parity_with_torchvision() -> None:
    torch.manual_seed(0)
    ref = torchvision.models.vgg16().eval()
    ours = build_classifier("vgg16").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
        conv5_3 = ours.forward_features(x, ["conv5_3"])["conv5_3"]
        torch.testing.assert_close(conv5_3, ref.features[:30](x))  # without pool5
        fc7 = ours.fc_head()(ours.avgpool(ref.features(x)).flatten(1))
        torch.testing.assert_close(fc7, ref.classifier[:6](ref.avgpool(ref.features(x)).flatten(1)))


# --------------------------------------------------------------------------- variants


def test_shortcut_options() -> None:
    a, b, c = (build_classifier("resnet34", shortcut=s, width_per_group=8) for s in "ABC")
    plain = build_classifier("plain34", width_per_group=8)
    assert not any("downsample" in k for k in a.state_dict())  # A: parameter-free
    assert count_params(a) == count_params(plain) < count_params(b) < count_params(c)
    # B: projections exactly where the shape changes (first block of layers 2-4).
    assert sorted({k.split(".downsample")[0] for k in b.state_dict() if "downsample" in k}) == [
        "layer2.0",
        "layer3.0",
        "layer4.0",
    ]
    n_blocks = 3 + 4 + 6 + 3
    assert len({k.split(".downsample")[0] for k in c.state_dict() if "downsample" in k}) == n_blocks
    assert all(not blk.residual for blk in plain.modules() if hasattr(blk, "residual"))
    # CIFAR nets default to option A; the preact nets to B (the authors' code).
    assert build_classifier("resnet56").shortcut == "A"
    assert build_classifier("preact_resnet164").shortcut == "B"


def test_zero_pad_shortcut() -> None:
    x = torch.randn(2, 3, 5, 5)
    y = ZeroPadShortcut(extra=4, stride=2)(x)
    assert y.shape == (2, 7, 3, 3)
    torch.testing.assert_close(y[:, :3], x[:, :, ::2, ::2])
    assert (y[:, 3:] == 0).all()


def test_stride_in_1x1_places_the_stride() -> None:
    paper = build_classifier("resnet50", width_per_group=8)
    tv = build_classifier("resnet50", width_per_group=8, stride_in_1x1=False)
    assert paper.stride_in_1x1 and paper.layer2[0].conv1.stride == (2, 2)
    assert paper.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    assert build_classifier("resnet18").stride_in_1x1 is None  # no bottleneck: no variant


def test_zero_init_residual() -> None:
    m = build_classifier("resnet50", width_per_group=8, zero_init_residual=True)
    assert all((blk.bn3.weight == 0).all() for layer in (m.layer1, m.layer4) for blk in layer)
    assert (m.layer1[0].bn1.weight == 1).all()
    with pytest.raises(TypeError, match="plain18"):
        build_classifier("plain18", zero_init_residual=True)


def test_preact_unit_order() -> None:
    """A non-first unit computes x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""
    torch.manual_seed(0)
    m = build_classifier("preact_resnet110", width_per_group=4).eval()
    with torch.no_grad():
        _randomize_bn(m)
        blk, x = m.layer2[1], torch.randn(2, 8, 6, 6)
        f = torch.relu
        want = x + blk.conv2(f(blk.bn2(blk.conv1(f(blk.bn1(x))))))
        torch.testing.assert_close(blk(x), want)
        first = m.layer2[0]  # shape change: the pre-activation also feeds the projection
        x = torch.randn(2, 4, 6, 6)
        pre = f(first.bn1(x))
        want = first.downsample(pre) + first.conv2(f(first.bn2(first.conv1(pre))))
        torch.testing.assert_close(first(x), want)
    assert "bn_final.weight" in m.state_dict()


def test_preact_cifar_parameter_counts() -> None:
    """Identity Mappings, Table 3/4: ResNet-110 and ResNet-164 have 1.7M parameters."""
    for name in ("preact_resnet110", "preact_resnet164"):
        with torch.device("meta"):
            assert round(count_params(build_classifier(name, num_classes=10)) / 1e6, 1) == 1.7


def test_unknown_option_and_name_errors() -> None:
    with pytest.raises(TypeError, match="vgg16.*shortcut"):
        build_classifier("vgg16", shortcut="A")
    with pytest.raises(KeyError, match="unknown backbone 'resnet51'"):
        build_classifier("resnet51")
    with pytest.raises(ValueError, match="norm 'GN'"):
        build_classifier("resnet18", norm="GN")
