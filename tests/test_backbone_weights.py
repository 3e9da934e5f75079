"""Weight loading (torchvision files, detres checkpoints, heads, errors) and build_backbone."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from detres.config import BackboneCfg, ModelCfg
from detres.modeling import build_backbone, build_classifier, load_pretrained, load_weights
from detres.modeling.weights import read_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture()
def r18_file(tmp_path: Path) -> Path:
    """A torchvision-named weight file of a 1000-class ResNet-18 at width 8."""
    torch.manual_seed(0)
    return _save(build_classifier("resnet18", width_per_group=8).state_dict(), tmp_path / "r18.pth")


def test_torchvision_file_loads_into_v15_resnet50(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet50().eval()
    path = _save(ref.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    ours = build_classifier("resnet50", stride_in_1x1=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the v1.5 model: no variant warning
        load_weights(ours, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # eval-mode BN is folded into the convs: float32 rounding differs
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
    # The paper's variant takes the same shapes, but the file is torchvision's v1.5: warn.
    with pytest.warns(UserWarning, match="stride_in_1x1=False"):
        load_weights(build_classifier("resnet50"), path)


def test_head_is_dropped_when_classes_differ(r18_file: Path) -> None:
    src = torch.load(r18_file, weights_only=True)
    trunk = build_classifier("resnet18", num_classes=0, width_per_group=8)
    load_weights(trunk, r18_file)
    assert trunk.fc is None
    torch.testing.assert_close(trunk.conv1.weight, src["conv1.weight"])
    ten = build_classifier("resnet18", num_classes=10, width_per_group=8)
    fc_before = ten.fc.weight.clone()
    load_weights(ten, r18_file)
    torch.testing.assert_close(ten.fc.weight, fc_before)  # keeps its own init
    torch.testing.assert_close(ten.layer4[1].conv2.weight, src["layer4.1.conv2.weight"])


def test_vgg_head_dropped_but_fc6_fc7_kept(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = build_classifier("vgg16", width_per_group=8)
    path = _save(src.state_dict(), tmp_path / "vgg.pth")
    trunk = build_classifier("vgg16", num_classes=0, width_per_group=8)
    load_weights(trunk, path)
    torch.testing.assert_close(trunk.classifier[3].weight, src.classifier[3].weight)
    assert "classifier.6.weight" not in trunk.state_dict()


def test_detres_checkpoint_with_ddp_prefix_and_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = build_classifier("resnet50", width_per_group=8, num_classes=7)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    cfg = {"model": {"backbone": {"name": "resnet50", "stride_in_1x1": None}}}
    path = _save({"model": state, "config": cfg, "optimizer": {}}, tmp_path / "ckpt.pth")
    w = read_weights(path)
    sd, config = w.state, w.config
    assert config == cfg and all(not k.startswith("module.") for k in sd)
    dst = build_classifier("resnet50", width_per_group=8, num_classes=7)
    load_weights(dst, path)
    torch.testing.assert_close(dst.fc.weight, src.fc.weight)
    # Trained as the paper's variant (the registry default): a v1.5 model must not take it.
    v15 = build_classifier("resnet50", width_per_group=8, stride_in_1x1=False)
    with pytest.raises(ValueError, match="trained with stride_in_1x1=True"):
        load_weights(v15, path)


def test_wrong_model_errors_name_file_and_keys(r18_file: Path) -> None:
    with pytest.raises(ValueError, match=r"r18\.pth.*ResNet.*missing keys \['layer1\.2"):
        load_weights(build_classifier("resnet34", width_per_group=8), r18_file)
    with pytest.raises(ValueError, match=r"shape mismatches \[conv1.weight: file \(8, 3, 7, 7\)"):
        load_weights(build_classifier("resnet18", width_per_group=16), r18_file)
    # Non-strict: whatever fits is loaded, with a warning naming the file and what is missing.
    r34 = build_classifier("resnet34", width_per_group=8)
    with pytest.warns(UserWarning, match=r"r18\.pth' loaded partially into ResNet.*80 missing"):
        load_weights(r34, r18_file, policy="partial")
    saved = torch.load(r18_file, weights_only=True)
    torch.testing.assert_close(r34.conv1.weight, saved["conv1.weight"])


def test_bad_files(tmp_path: Path) -> None:
    model = build_classifier("resnet18", width_per_group=8)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(model, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("not a pickle")
    with pytest.raises(ValueError, match="junk.pth.*cannot be read"):
        load_weights(model, tmp_path / "junk.pth")
    bad = _save({"epoch": 3, "note": "x"}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth.*neither a state dict"):
        load_weights(model, bad)


def test_build_backbone_from_config(r18_file: Path) -> None:
    cfg = BackboneCfg(name="resnet18", width_per_group=8, weights=str(r18_file), freeze_at=2)
    bb = build_backbone(cfg)
    load_pretrained(bb, ModelCfg(backbone=cfg))  # the explicit step: builders read no files
    assert bb.fc is None and bb.output_shape()["res5"].channels == 64
    saved = torch.load(r18_file, weights_only=True)
    torch.testing.assert_close(bb.conv1.weight, saved["conv1.weight"])
    assert isinstance(bb.bn1, FrozenBatchNorm2d) and not bb.layer1[0].conv1.weight.requires_grad
    assert (
        isinstance(bb.layer2[0].bn1, torch.nn.BatchNorm2d)
        and bb.layer2[0].conv1.weight.requires_grad
    )
    frozen = build_backbone(BackboneCfg(name="resnet50", width_per_group=8, norm="FrozenBN"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    # None keeps each entry's default: CIFAR nets stay at 16 channels, VGG takes no shortcut.
    assert build_backbone(BackboneCfg(name="resnet20")).output_shape()["res4"].channels == 64
    tv = build_backbone(BackboneCfg(name="resnet50", stride_in_1x1=False, width_per_group=8))
    assert tv.layer2[0].conv2.stride == (2, 2)
    vgg = build_backbone(BackboneCfg(name="vgg16", width_per_group=8), num_classes=3)
    assert vgg(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(TypeError, match="vgg16.*shortcut"):
        build_backbone(BackboneCfg(name="vgg16", shortcut="A"))
