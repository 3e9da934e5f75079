"""ONNX export (detres.export): each detector family's graph in onnxruntime gives PyTorch's
detections (the export inputs, another image size, a batch of two, a fixed-shape graph, a
graph with no detections), a Detectron2 model-zoo detector exported gives Detectron2's own
detections, and bad input is one clear error. Skipped without the ``[export]`` extra."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs the [export] extra: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="needs the [export] extra: pip install -e '.[export]'")
onnx = pytest.importorskip("onnx", reason="needs the [export] extra: pip install -e '.[export]'")


from detres.benchmark.core import calibrate_random_detector  # noqa: E402
from detres.config import load_config  # noqa: E402
from detres.export import (  # noqa: E402
    ExportError,
    OnnxDetector,
    OnnxModelError,
    compare_detections,
    export_onnx,
)
from detres.export import onnx as export_module  # noqa: E402
from detres.modeling import FasterRCNN  # noqa: E402

FAMILIES = {
    "c4_roipool": ("c4", ["model.roi_heads.pooler=ROIPool"]),  # the paper's detector
    "vgg": ("vgg", []),
    "fpn": ("fpn", []),
}


def detector(build: Callable[..., FasterRCNN], name: str) -> FasterRCNN:
    family, extra = FAMILIES[name]
    model = build(family, *extra).eval()
    calibrate_random_detector(model, (96, 128))  # spread proposals and scores: a real test
    return model


def images(seed: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 120, 90, generator=g),  # another size than the export's
            (torch.rand(3, 60, 200, generator=g) * 255).to(torch.uint8)]


def flat(dets: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    index = torch.cat([torch.full((len(d["boxes"]),), i) for i, d in enumerate(dets)])
    return (torch.cat([d["boxes"] for d in dets]), torch.cat([d["scores"] for d in dets]),
            torch.cat([d["labels"] for d in dets]), index)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_detector: Callable[..., FasterRCNN]
             ) -> dict[str, tuple[FasterRCNN, Path, dict]]:
    out = {}
    tmp = tmp_path_factory.mktemp("onnx")
    for name in FAMILIES:
        model = detector(tiny_detector, name)
        path = tmp / f"{name}.onnx"
        out[name] = (model, path, export_onnx(model, path, dynamic=True))
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_gives_pytorch_detections(name: str, exported: dict) -> None:
    model, path, report = exported[name]
    check = report["check"]
    assert check["ok"] and check["detections"]["ref"] >= 5, check
    assert "raw tensors" in check["compared"] and "IoU >= 0.99" in check["compared"]
    assert check["box_head"]["rois"] > 0
    for part in ("rpn", "box_head"):  # fp32 drift only: far below the limit
        assert all(v <= 1e-4 for k, v in check[part].items() if k != "rois"), check
    onnx.checker.check_model(str(path))
    runtime = OnnxDetector(path)
    batch = images()
    ref, got = model.predict(batch), runtime.predict(batch)  # the batch of two
    cmp = compare_detections(flat(ref), flat(got))
    assert cmp["ok"] and cmp["ref"] >= 5, cmp
    assert cmp["paired"] == cmp["ref"] == cmp["got"], cmp  # on this CPU, all of them
    for one in batch:  # one image at a time: another batch size, other padded sizes
        cmp = compare_detections(flat(model.predict([one])), flat(runtime.predict([one])))
        assert cmp["ok"], cmp
    # raw tensors at torchvision's test tolerance
    x, sizes = model.preprocess(batch)
    r, g = model.detect(model.normalize(x, sizes), sizes), runtime.run(x, torch.tensor(sizes))
    torch.testing.assert_close(g[0], r[0], rtol=1e-3, atol=1e-5 * 100)  # px: 1e-3 abs
    torch.testing.assert_close(g[1], r[1], rtol=1e-3, atol=1e-5)
    assert torch.equal(g[2], r[2]) and torch.equal(g[3], r[3])


def test_metadata_says_how_to_run_the_file(exported: dict) -> None:
    model, path, _ = exported["fpn"]
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["detres.format"] == "detres-detector-onnx/1"
    m = json.loads(meta["detres.model"])
    assert m["class_names"] == model.class_names and m["category_ids"] == model.category_ids
    assert m["arch"] == "faster_rcnn_fpn" and m["backbone"] == "resnet50"
    inp = json.loads(meta["detres.input"])
    assert inp["resize"] == {"rule": "torchvision", "min_size_test": 96, "max_size_test": 128,
                             "size_divisibility": 32}
    assert inp["normalization_in_graph"] == model.input_spec() and inp["fixed"] is None


def test_fixed_shape_graph_without_detections(tmp_path: Path,
                                              tiny_detector: Callable[..., FasterRCNN]) -> None:
    """A fixed 2-image graph (S x S) whose detector finds nothing: outputs of shape (0, ...),
    three images run as two padded chunks."""
    model = detector(tiny_detector, "fpn")
    with torch.no_grad():  # background wins everywhere
        model.roi_heads.box_predictor.cls_score.weight.zero_()
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([12.0, 0, 0, 0]))
    path = tmp_path / "fixed.onnx"
    report = export_onnx(model, path, dynamic=False, batch=2)
    assert report["fixed"] == {"batch": 2, "height": 128, "width": 128}
    assert report["check"]["ok"] and report["check"]["detections"]["ref"] == 0
    runtime = OnnxDetector(path)
    x = torch.rand(2, 3, 128, 128)
    boxes, scores, labels, index = runtime.run(x, torch.tensor([[128, 128], [96, 100]]))
    assert boxes.shape == (0, 4) and scores.shape == labels.shape == index.shape == (0,)
    assert labels.dtype == index.dtype == torch.int64
    dets = runtime.predict([*images(), torch.rand(3, 50, 70)])
    assert len(dets) == 3 and all(d["boxes"].shape == (0, 4) for d in dets)
    with pytest.raises(OnnxModelError, match="fixed 128x128 graph cannot take a 160x128"):
        runtime.inference(torch.rand(1, 3, 160, 128), [(160, 128)])


def test_bad_input_is_one_clear_error(tmp_path: Path, exported: dict,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model, path, _ = exported["vgg"]
    with pytest.raises(ExportError, match="--opset 17 is not supported: detres exports opsets "
                                          "18-21"):
        export_onnx(model, tmp_path / "x.onnx", opset=17)
    # an ONNX file that is not a detres export
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(other))
    with pytest.raises(OnnxModelError, match="not a detres detector export .*'detres.format'"):
        OnnxDetector(other)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(OnnxModelError, match="junk.onnx: onnxruntime cannot load it"):
        OnnxDetector(tmp_path / "junk.onnx")
    # the config of another detector than the file's
    runtime = OnnxDetector(path)
    cfg = load_config(None, ["task=det", "model.arch=faster_rcnn_vgg", "model.num_classes=3",
                             "model.backbone.name=vgg16", "model.input.min_size_test=600"])
    with pytest.raises(OnnxModelError, match=r"model.input.min_size_test: file 96, the config "
                                             r"600.*model.input.max_size_test"):
        runtime.check_config(dataclasses.asdict(cfg.model))
    # an op the exporter cannot translate: the cause, named
    monkeypatch.setattr(export_module, "_translations", dict)
    with pytest.raises(ExportError, match="cannot translate the detector: .*grouped_nms"):
        export_onnx(model, tmp_path / "y.onnx")
    assert not (tmp_path / "y.onnx").exists()


def _wrong_nms() -> Callable[..., object]:
    """``detres::grouped_nms`` translated with the wrong IoU threshold (a tenth)."""
    good = export_module._grouped_nms_onnx()

    def grouped_nms(boxes, scores, idxs, iou_threshold: float):  # noqa: ANN001, ANN202
        return good(boxes, scores, idxs, iou_threshold * 0.1)

    return grouped_nms


def _wrong_roi_pool() -> Callable[..., object]:
    """``torchvision::roi_pool`` translated at twice the spatial scale."""
    from onnxscript import opset18 as op

    def roi_pool(input, rois, spatial_scale: float, pooled_height: int,  # noqa: ANN001, ANN202
                 pooled_width: int):
        out = op.MaxRoiPool(input, rois, pooled_shape=[pooled_height, pooled_width],
                            spatial_scale=spatial_scale * 2)
        return out, op.Cast(out, to=7)

    return roi_pool


@pytest.mark.parametrize("wrong, caught_by", [(_wrong_nms, "detections"),
                                              (_wrong_roi_pool, "box_head")])
def test_a_wrong_translation_fails_the_check(wrong: Callable[[], object], caught_by: str,
                                             tmp_path: Path, exported: dict,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The check tells a wrong translation from fp32 drift: a wrong NMS fails the detections,
    a wrong RoI pooling the box head's raw outputs; nothing is written either way."""
    model = exported["c4_roipool"][0]
    real = export_module._translations
    op = (torch.ops.detres.grouped_nms.default if wrong is _wrong_nms
          else torch.ops.torchvision.roi_pool.default)
    monkeypatch.setattr(export_module, "_translations", lambda: {**real(), op: wrong()})
    seen = {}
    check = export_module.check_export

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.update(check(*args, **kwargs))
        return seen

    monkeypatch.setattr(export_module, "check_export", spy)
    with pytest.raises(ExportError, match="disagrees with PyTorch.*RPN logits"):
        export_onnx(model, tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists() and not list(tmp_path.iterdir())
    assert seen["rpn"]["objectness_logits"] <= 1e-4  # the trunk and RPN were translated well
    if caught_by == "detections":
        assert not seen["detections"]["ok"], seen
    else:
        assert seen["box_head"]["pred_class_logits"] > 1e-2, seen
