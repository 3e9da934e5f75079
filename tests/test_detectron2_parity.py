"""detres against Detectron2's own outputs (goldens written by tools/dev/d2_goldens.py from a
Detectron2 source tree; no Detectron2 here): its R101-C4 and R50-FPN model-zoo detectors
(reduced width, calibrated random weights, the model zoo's ``.pkl`` format) converted with
``--from detectron2`` give Detectron2's detections; MSRA-format ImageNet ResNets (Caffe2
names) converted with ``--from msra`` give Detectron2's res2..res5 features; Detectron2's
``ResizeShortestEdge`` is the ``detectron2`` resize rule; unsafe pickles are refused."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from detres.config import load_config
from detres.data.det_transforms import image_tensor
from detres.data.image_io import load_image
from detres.export import OnnxDetector, export_onnx
from detres.modeling import build_classifier, build_detector, load_weights
from detres.modeling.weights import WeightsError, weights_from_dict
from detres.modeling.weights.torchvision import coco_layout
from detres.modeling.weights.zoo import (
    MSRA_INPUT,
    detectron2_checkpoint,
    msra_checkpoint,
    read_zoo_file,
)
from detres.preprocess import resize_image, resized_hw
from detres.utils.io import UnsafePickleError

GOLD = Path(__file__).resolve().parent / "goldens" / "detectron2"
GOLDEN = json.loads((GOLD / "golden.json").read_text())
SMALL = [f"model.backbone.width_per_group={GOLDEN['width']}", "model.input.min_size_test=160",
         "model.input.max_size_test=256", "model.fpn.out_channels=16", "model.roi_heads.fc_dim=32"]
CONFIGS = {"r101_c4": "coco_r101_c4_3x", "r50_fpn": "coco_r50_fpn_3x"}
MSRA = [f"model.input.format={MSRA_INPUT['format']}", "model.input.pixel_range=255.0",
        f"model.input.pixel_mean={MSRA_INPUT['pixel_mean']}",
        f"model.input.pixel_std={MSRA_INPUT['pixel_std']}"]

if TYPE_CHECKING:
    from conftest import D2Goldens

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_detectron2_detector_gives_detectron2_detections(name: str, tmp_path: Path,
                                                         d2: D2Goldens,
                                                         tool: Callable[[str], ModuleType]
                                                         ) -> None:
    out = tmp_path / f"{name}.pth"
    cfg_name = CONFIGS[name]
    argv = ["--from", "detectron2", "--src", str(GOLD / f"{name}.pkl"), "--out", str(out),
            "--cfg", cfg_name]
    assert tool("convert_weights").main(argv) == 2  # full width: one clear line, exit code 2
    assert tool("convert_weights").main([*argv, *SMALL]) == 0  # the file's widths
    cfg = load_config(cfg_name, SMALL)
    model = build_detector(cfg)
    load_weights(model, out, policy="strict")  # the converted checkpoint, as eval.py loads it
    assert model.category_ids == coco_layout()[0] and model.input_format == "BGR"
    image = image_tensor(load_image(GOLD / "det_image.png"))  # RGB uint8 (3, H, W)
    assert tuple(image.shape[-2:]) == tuple(GOLDEN["det_image_hw"])  # no resize needed
    model.eval()
    with torch.no_grad():
        det = model.predict([image])[0]
    g = GOLDEN[name]
    ids = torch.tensor(coco_layout()[0])
    ref = (torch.tensor(g["boxes"]), torch.tensor(g["scores"]), ids[torch.tensor(g["classes"])])
    assert len(ref[0]) > 20  # spread, calibrated weights: a real test
    found = d2.matched(ref, det)
    assert found >= 0.99, f"{name}: {found:.1%} of Detectron2's detections found"
    assert abs(len(det["boxes"]) - len(ref[0])) <= max(1, len(ref[0]) // 100)


def test_detectron2_training_checkpoint_converts_like_the_pkl(tmp_path: Path) -> None:
    """A Detectron2 training checkpoint (``DetectionCheckpointer.save``: ``{"model": tensors,
    "optimizer": ..., "scheduler": ..., "iteration": n}``) is read with ``weights_only=True``
    and converts to the same detres tensors as the model-zoo ``.pkl``."""
    pkl = read_zoo_file(GOLD / "r50_fpn.pkl")
    pth = tmp_path / "model_0089999.pth"
    torch.save({"model": {k: v.clone() for k, v in pkl.items()},
                "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                              "param_groups": [{"lr": 0.02, "params": [0]}]},
                "scheduler": {"base_lrs": [0.02], "last_epoch": 89999},
                "iteration": 89999}, pth)
    cfg = load_config("coco_r50_fpn_3x", SMALL)
    a = detectron2_checkpoint(GOLD / "r50_fpn.pkl", cfg)["model"]
    b = detectron2_checkpoint(pth, cfg)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("depth", ["50", "101"])
def test_msra_resnet_features_and_logits(depth: str) -> None:
    cfg = load_config(f"imagenet_resnet{depth}.yaml",
                      [f"model.backbone.width_per_group={GOLDEN['width']}", *MSRA])
    ckpt = msra_checkpoint(GOLD / f"msra_R-{depth}.pkl", cfg)
    assert ckpt["meta"]["input"] == MSRA_INPUT and "fc.weight" in ckpt["model"]
    net = build_classifier(f"resnet{depth}", num_classes=1000,
                           width_per_group=GOLDEN["width"]).eval()
    load_weights(net, weights_from_dict(ckpt, source="msra"), policy="strict",
                 expect_input=MSRA_INPUT)
    bgr = load_image(GOLD / "feature_image.png")[..., ::-1].astype(np.float32)  # as D2 reads it
    mean = torch.tensor(MSRA_INPUT["pixel_mean"]).view(3, 1, 1)
    x = (torch.from_numpy(bgr.transpose(2, 0, 1).copy()) - mean)[None]
    ref = np.load(GOLD / "msra_features.npz")
    with torch.no_grad():
        feats = net.forward_features(x, ["res2", "res3", "res4", "res5"])
        logits = net(x)[0]
    for k, f in feats.items():
        r = torch.from_numpy(ref[f"R-{depth}/{k}"])
        rel = float((f[0] - r).abs().max() / r.abs().max())
        assert rel <= 1e-4, (k, rel)
    # fc1000 on Detectron2's pooled res5: the classifier's logits
    raw = read_zoo_file(GOLD / f"msra_R-{depth}.pkl")
    pooled = torch.from_numpy(ref[f"R-{depth}/res5"]).mean(dim=(1, 2))
    expect = raw["fc1000_w"] @ pooled + raw["fc1000_b"]
    torch.testing.assert_close(logits, expect, rtol=1e-4, atol=1e-4)


def test_msra_checkpoint_evaluates_with_pretrain_cls(tmp_path: Path,
                                                     tool: Callable[[str], ModuleType],
                                                     imagefolder_writer: Callable[..., Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--from msra``, then ``pretrain_cls.py --eval-only`` on an ImageNet-layout val set;
    a config with another input convention is refused, naming both."""
    out = tmp_path / "r50.pth"
    cfg = load_config("imagenet_resnet50_msra.yaml",
                      [f"model.backbone.width_per_group={GOLDEN['width']}"])
    torch.save(msra_checkpoint(GOLD / "msra_R-50.pkl", cfg), out)
    val = imagefolder_writer(tmp_path / "val", ["n01440764", "n01443537"], per_class=2, size=40)
    data = [f"data.test=[{{format: imagefolder, path: {val}}}]",
            f"data.train=[{{format: imagefolder, path: {val}}}]", "data.num_workers=0",
            "data.cls_aug.test_resize=40", "data.cls_aug.crop_size=32",
            f"model.backbone.width_per_group={GOLDEN['width']}", f"model.weights={out}"]
    rc = tool("pretrain_cls").main(["--cfg", "imagenet_resnet50_msra.yaml", "--eval-only",
                                    "--out-dir", str(tmp_path / "o"), *data])
    assert rc == 0 and "top-1 error" in capsys.readouterr().out
    rc = tool("pretrain_cls").main(["--cfg", "imagenet_resnet50.yaml", "--eval-only",
                                    "--out-dir", str(tmp_path / "o2"), *data])
    err = capsys.readouterr().err
    assert rc == 2 and "BGR in [0, 255]" in err and "RGB in [0, 1]" in err


def test_detectron2_resize_rule() -> None:
    big = image_tensor(load_image(GOLD / "resize_input.png"))
    r = GOLDEN["resize"]
    hw = resized_hw(*big.shape[-2:], short=r["short"], max_size=r["max_size"],
                    rule="detectron2")
    assert list(hw) == r["out_hw"]
    ours = resize_image(big, hw, "detectron2")
    want = image_tensor(load_image(GOLD / "resize_output.png")).float() / 255
    assert torch.equal(ours, want)  # PIL's bilinear on uint8, exactly Detectron2's


def test_zoo_pickles_are_read_safely(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))

    evil = tmp_path / "model_final_evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": Evil()}, "__author__": "x"}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        read_zoo_file(evil)
    assert not marker.exists()  # refused before any of it ran
    # a file from another detector: the unmapped keys are listed
    bad = tmp_path / "other.pkl"
    raw = pickle.loads((GOLD / "r50_fpn.pkl").read_bytes())
    raw["model"]["roi_heads.mask_head.mask_fcn1.weight"] = np.zeros((2, 2), np.float32)
    bad.write_bytes(pickle.dumps(raw, protocol=4))
    with pytest.raises(WeightsError, match="mask_head.mask_fcn1"):
        detectron2_checkpoint(bad, load_config("coco_r50_fpn_3x", SMALL))
    # a Detectron2 file into a torchvision-normalized config: refused, naming both
    with pytest.raises(WeightsError, match=r"BGR in \[0, 255\].*RGB in \[0, 1\]"):
        detectron2_checkpoint(GOLD / "r50_fpn.pkl", load_config("coco_r50_fpn", []))


def test_exported_detectron2_model_gives_detectron2_detections(tmp_path: Path,
                                                               d2: D2Goldens) -> None:
    """Detectron2's R50-FPN (the goldens' model-zoo file, converted) exported: onnxruntime
    finds Detectron2's own detections (its rules: logits ranking, ROIAlignV2, strict
    filters, empty boxes dropped)."""
    pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("onnxscript", reason="needs the [export] extra")
    cfg = load_config(CONFIGS["r50_fpn"], SMALL)
    model = build_detector(cfg)
    load_weights(model, weights_from_dict(detectron2_checkpoint(GOLD / "r50_fpn.pkl", cfg),
                                          source="r50_fpn.pkl"), policy="strict")
    path = tmp_path / "d2.onnx"
    assert export_onnx(model.eval(), path, dynamic=True)["check"]["ok"]
    det = OnnxDetector(path).predict([image_tensor(load_image(GOLD / "det_image.png"))])[0]
    assert d2.matched(d2.reference(GOLDEN["r50_fpn"]), det) >= 0.99
