"""A detector as an ONNX graph: what it takes, how it is made, what it carries.

**The graph.** :class:`DetectorGraph` is ``FasterRCNN.detect`` after ``normalize``: the
detector's whole inference on a preprocessed batch, as one graph with

* inputs ``images`` float32 ``(N, 3, H, W)``, RGB in [0, 1], each image resized by the
  detector's rule and the batch zero-padded at the bottom/right (what
  :mod:`detres.preprocess` makes: ``resize_for_model`` then ``pad_batch``), and
  ``image_sizes`` int64 ``(N, 2)``, the ``(h, w)`` of each resized image;
* outputs ``boxes`` float32 ``(D, 4)`` (x1, y1, x2, y2 in resized-image pixels), ``scores``
  ``(D,)``, ``labels`` int64 ``(D,)`` in 1..K and ``batch_index`` int64 ``(D,)``: all images'
  detections in one flat set, grouped by image and by decreasing score within each, so that
  any number of images (none with detections included) has outputs of the right shape.

Normalization (channel order, pixel range, mean, std) runs inside the graph; the resize
does not, because the rules are defined on the image file's pixels (PIL's filter for
Detectron2's) and a graph's ``Resize`` would differ from the PyTorch path. With
``dynamic=True`` the batch size, height and width are all free (height and width multiples
of ``size_divisibility``); otherwise they are fixed to ``batch`` images of ``S x S``, ``S``
the largest padded side the resize rule can give.

**Making it.** ``torch.export`` traces the detector with its reference kernels
(``reference_ops``: torchvision's RoIAlign / RoIPool become ONNX ``RoiAlign`` /
``MaxRoiPool``), every size symbolic; the ONNX exporter translates the program. NMS is the
``detres::grouped_nms`` op, translated here to ONNX ``NonMaxSuppression`` with one class per
group (image x level in the RPN, image x class in the box head): no coordinate offsets, so no
float32 rounding of offset boxes. Opsets 18 to 21: the exporter's torchvision ops need 18,
and onnxruntime implements no ``RoiAlign`` of opset 22. The file's metadata
(:func:`onnx_metadata`) carries what a user needs to run it; after writing, the file is run
in onnxruntime on the export inputs and compared with PyTorch, from the raw tensors before
any selection to the final detections (:func:`check_export`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detres.export.format import (
    EXPORT_FORMAT,
    IDENTITY_KEYS,
    INPUT_NAMES,
    MATCH_IOU,
    OPSETS,
    OUTPUT_NAMES,
    PROBE_NAMES,
    RAW_RTOL,
    SCORE_TOL,
    UNMATCHED,
    ExportError,
    compare_detections,
    relative_difference,
    require,
)
from detres.export.runtime import OnnxDetector
from detres.modeling import FasterRCNN
from detres.modeling.fastpath import reference_ops
from detres.preprocess import padded_hw


class DetectorGraph(nn.Module):
    """The exported computation: ``(images, image_sizes) -> (boxes, scores, labels,
    batch_index)`` (see the module docstring)."""

    def __init__(self, model: FasterRCNN, *, probes: bool = False) -> None:
        super().__init__()
        self.model = model
        self.probes = probes  # also the raw tensors the check compares (PROBE_NAMES)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        return m.detect(m.normalize(images, image_sizes), image_sizes, probes=self.probes)


def fixed_side(model: FasterRCNN) -> int:
    """The side of a fixed-shape graph's input: the longest side any image can be resized
    to, padded to ``size_divisibility``."""
    if model.max_size_test <= 0 or model.min_size_test <= 0:
        raise ExportError("a fixed-shape export needs model.input.min_size_test and "
                          "max_size_test > 0 (images of any size are not resized); use "
                          "--dynamic")
    side = max(model.max_size_test, model.min_size_test)
    return padded_hw([(side, side)], model.size_divisibility)[0]


def example_inputs(model: FasterRCNN, batch: int, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """A smooth random batch of ``batch`` images padded to ``hw``, the later ones smaller (so
    that padding is exercised), and their sizes."""
    g = torch.Generator().manual_seed(0)
    h, w = hw
    coarse = torch.rand(batch, 3, max(h // 16, 2), max(w // 16, 2), generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                             align_corners=False)
    sizes = []
    for i in range(batch):
        sh, sw = (h, w) if i == 0 else (max(h - 32 * i, h // 2), max(w - 48 * i, w // 2))
        images[i, :, sh:, :] = 0
        images[i, :, :, sw:] = 0
        sizes.append((sh, sw))
    return images.contiguous(), torch.tensor(sizes, dtype=torch.int64)


def onnx_metadata(model: FasterRCNN, *, fixed: dict[str, int] | None) -> dict[str, str]:
    """The file's metadata (``metadata_props``; strings, JSON where structured):
    ``detres.format``, ``detres.model`` (architecture, classes: names and data-set category
    ids), ``detres.input`` (the input contract, the normalization inside the graph, the size
    rule, fixed shapes if any), ``detres.output`` and ``detres.config`` (the network's config
    keys, :data:`IDENTITY_KEYS`)."""
    spec = model.input_spec()
    ident = {
        "arch": model.arch or None, "backbone.name": model.backbone_name or None,
        "num_classes": model.num_classes, "input.min_size_test": model.min_size_test,
        "input.max_size_test": model.max_size_test, "input.resize_rule": model.resize_rule,
        "input.size_divisibility": model.size_divisibility, "input.format": spec["format"],
        "input.pixel_range": spec["pixel_range"], "input.pixel_mean": spec["pixel_mean"],
        "input.pixel_std": spec["pixel_std"]}
    assert set(ident) == set(IDENTITY_KEYS)
    model_meta = {"arch": ident.get("arch"), "backbone": ident.get("backbone.name"),
                  "num_classes": model.num_classes, "class_names": list(model.class_names),
                  "category_ids": [int(c) for c in model.category_ids]}
    input_meta = {
        "images": "float32 (N, 3, H, W), RGB in [0, 1]: each image resized by the rule below, "
                  "the batch zero-padded at the bottom/right to a multiple of "
                  "size_divisibility (detres.preprocess: resize_for_model, pad_batch)",
        "image_sizes": "int64 (N, 2): (h, w) of each resized image",
        "normalization_in_graph": spec,
        "resize": {"rule": model.resize_rule, "min_size_test": model.min_size_test,
                   "max_size_test": model.max_size_test,
                   "size_divisibility": model.size_divisibility},
        "fixed": fixed,
    }
    output_meta = {
        "boxes": "float32 (D, 4): x1, y1, x2, y2 in resized-image pixels (scale by "
                 "original / resized size per axis for input pixels)",
        "scores": "float32 (D,)", "labels": "int64 (D,): 1..K, index into class_names + 1",
        "batch_index": "int64 (D,): the image of each detection; grouped by image, by "
                       "decreasing score within each",
        "drop_empty_after_rescale": model.drop_empty,
    }
    return {"detres.format": EXPORT_FORMAT, "detres.model": json.dumps(model_meta),
            "detres.input": json.dumps(input_meta), "detres.output": json.dumps(output_meta),
            "detres.config": json.dumps(ident)}


def _cause(e: BaseException) -> str:
    """The innermost cause of an exporter error, in one line."""
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    return f"{type(root).__name__}: {lines[0] if lines else ''}"[:400]


def _grouped_nms_onnx() -> Any:
    """ONNX for ``detres::grouped_nms``: ``NonMaxSuppression`` over one batch whose classes are
    the groups (scores ``-inf`` outside a box's group, below the score threshold), then the
    kept boxes sorted by decreasing score."""
    require("onnxscript")
    from onnxscript import opset18 as op

    def grouped_nms(boxes, scores, idxs, iou_threshold: float):  # noqa: ANN001, ANN202
        zero = op.Constant(value_ints=[0])
        count = op.Add(op.ReduceMax(op.Concat(idxs, zero, axis=0), keepdims=0),
                       op.Constant(value_int=1))
        groups = op.Range(op.Constant(value_int=0), count, op.Constant(value_int=1))
        member = op.Equal(op.Unsqueeze(groups, [1]), op.Unsqueeze(idxs, [0]))  # (G, M)
        per_group = op.Where(member, op.Unsqueeze(scores, [0]),
                             op.Constant(value_float=-math.inf))
        selected = op.NonMaxSuppression(
            op.Unsqueeze(boxes, [0]), op.Unsqueeze(per_group, [0]),
            op.Constant(value_ints=[2**62]), op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[-3.4028234663852886e38]))  # (S, 3): batch, group, box
        kept = op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])
        _, order = op.TopK(op.Gather(scores, kept), op.Shape(kept), axis=0, largest=1,
                           sorted=1)
        return op.Gather(kept, order)

    return grouped_nms


def _roi_pool_onnx() -> Any:
    """ONNX ``MaxRoiPool`` for ``torchvision::roi_pool`` (whose schema, ``(input, rois,
    spatial_scale, pooled_height, pooled_width) -> (output, argmax)``, onnxscript's own
    translation does not match); the argmax, used only by the backward, is not computed."""
    require("onnxscript")
    from onnxscript import opset18 as op

    def roi_pool(input, rois, spatial_scale: float, pooled_height: int,  # noqa: ANN001, ANN202
                 pooled_width: int):
        out = op.MaxRoiPool(input, rois, pooled_shape=[pooled_height, pooled_width],
                            spatial_scale=spatial_scale)
        return out, op.Cast(out, to=7)  # INT64 placeholder for the unused argmax

    return roi_pool


def _translations() -> dict[Any, Any]:
    """Ops without a (correct) ONNX translation in the exporter -> ours."""
    return {torch.ops.detres.grouped_nms.default: _grouped_nms_onnx(),
            torch.ops.torchvision.roi_pool.default: _roi_pool_onnx()}


def export_program(model: FasterRCNN, *, dynamic: bool, batch: int, probes: bool = False
                   ) -> tuple[torch.export.ExportedProgram, tuple[Tensor, Tensor]]:
    """``torch.export`` of :class:`DetectorGraph` and the inputs it was traced with."""
    from torch.export import Dim

    div = max(model.size_divisibility, 1)
    if dynamic:
        # two images of different sizes: torch.export would take a batch of 1 for a constant
        side = padded_hw([(model.min_size_test or 224,) * 2], div)[0]
        inputs = example_inputs(model, max(batch, 2), (side, side + div))
        n = Dim("batch", min=1, max=1024)
        h, w = Dim("height", min=1, max=8192 // div), Dim("width", min=1, max=8192 // div)
        shapes: Any = {"images": {0: n, 2: h * div if div > 1 else h,
                                  3: w * div if div > 1 else w},
                       "image_sizes": {0: n}}
    else:
        side = fixed_side(model)
        inputs = example_inputs(model, batch, (side, side))
        shapes = None
    graph = DetectorGraph(model, probes=probes).eval()
    with torch.no_grad(), reference_ops():
        try:
            program = torch.export.export(graph, inputs, dynamic_shapes=shapes, strict=False)
        except Exception as e:
            raise ExportError(f"torch.export cannot trace the detector: {_cause(e)}") from e
    return program, inputs


def export_onnx(model: FasterRCNN, path: str | os.PathLike[str], *, opset: int = 18,
                dynamic: bool = True, batch: int = 1, check: bool = True) -> dict[str, Any]:
    """Write ``model`` (a float32 CPU copy in eval mode) as an ONNX file at ``path``
    (atomically) and, with ``check``, run it in onnxruntime on the export inputs and compare
    with PyTorch (:func:`check_export`: the graph is exported with probe outputs, checked, and
    written without them; a mismatch is an :class:`ExportError` and no file is left).
    Returns a report: the path, opset, shapes, metadata and the comparison."""
    if opset not in OPSETS:
        raise ExportError(f"--opset {opset} is not supported: detres exports opsets "
                          f"{OPSETS[0]}-{OPSETS[-1]} (the exporter's torchvision ops need 18; "
                          "onnxruntime implements no RoiAlign of opset 22 or later)")
    if batch < 1:
        raise ExportError(f"--batch must be >= 1, got {batch}")
    if model.roi_heads.box_refinement:
        raise ExportError("model.roi_heads.box_refinement does not export (a second box-head "
                          "pass and box voting on data-dependent counts); export with "
                          "model.roi_heads.box_refinement=false")
    require("onnx")
    translation = _translations()
    # a copy on the CPU, float32, contiguous: the caller's model is left as it is
    model = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    program, inputs = export_program(model, dynamic=dynamic, batch=batch, probes=check)
    names = list(OUTPUT_NAMES) + (list(PROBE_NAMES) if check else [])
    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=names, custom_translation_table=translation,
            optimize=True, verbose=False)
    except Exception as e:
        raise ExportError(f"the ONNX exporter cannot translate the detector: {_cause(e)}") from e
    fixed = None if dynamic else {"batch": batch, "height": int(inputs[0].shape[-2]),
                                  "width": int(inputs[0].shape[-1])}
    meta = onnx_metadata(model, fixed=fixed)
    for k, v in meta.items():
        onnx_program.model.metadata_props[k] = v
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    report: dict[str, Any] = {"path": str(path), "opset": opset, "dynamic": dynamic,
                              "fixed": fixed, "metadata": meta}
    try:
        if check:  # run the graph with its probes, then write it without them
            onnx_program.save(str(tmp))
            report["check"] = check_export(tmp, model, inputs)
            probed = report["check"].pop("outputs")
            _drop_probes(onnx_program)
            onnx_program.save(str(tmp))
            final = OnnxDetector(tmp).run(*inputs)
            if not all(torch.equal(a, b) for a, b in zip(final, probed, strict=True)):
                raise ExportError("removing the check's probe outputs changed the graph's "
                                  "detections; nothing written")
            if not report["check"]["ok"]:
                raise ExportError(f"the exported graph disagrees with PyTorch on the export "
                                  f"inputs: {describe_check(report['check'])}; nothing written")
        else:
            onnx_program.save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    report["bytes"] = path.stat().st_size
    return report


def _drop_probes(onnx_program: Any) -> None:
    """Remove the :data:`PROBE_NAMES` outputs and what only they computed."""
    passes = require("onnx_ir.passes.common")
    graph = onnx_program.model.graph
    keep = [v for v in graph.outputs if v.name in OUTPUT_NAMES]
    graph.outputs.clear()
    graph.outputs.extend(keep)
    passes.RemoveUnusedNodesPass()(onnx_program.model)


@torch.no_grad()
def check_export(path: str | os.PathLike[str], model: FasterRCNN,
                 inputs: tuple[Tensor, Tensor]) -> dict[str, Any]:
    """onnxruntime vs PyTorch on ``inputs``, on a graph exported with its probes, in three
    steps from raw to final, so that fp32 drift between kernels is told from a wrong
    translation (:data:`~detres.export.format.RAW_RTOL` and the rest):

    1. ``rpn``: objectness logits and box deltas of every anchor (backbone, neck, RPN head);
    2. ``box_head``: class logits and box deltas of the RoIs onnxruntime proposed, PyTorch
       run on the same RoIs (RoI pooling, box head, predictor), so that a proposal moved
       across the RPN's NMS or top-k changes nothing here;
    3. ``detections``: the final sets paired by IoU and score
       (:func:`~detres.export.format.compare_detections`): decoding, thresholds, NMS.

    Returns the report, with ``ok`` and the graph's four outputs under ``outputs``."""
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    run = session.run(names, {"images": inputs[0].numpy(), "image_sizes": inputs[1].numpy()})
    got = {k: torch.from_numpy(v) for k, v in zip(names, run, strict=True)}
    model.eval()
    # like with like: the graph is float32, so is the PyTorch side, whatever autocast the
    # caller runs under (train.amp=auto picks bf16 on a CPU with native bf16)
    with torch.autocast(model.device.type, enabled=False):
        x = model.normalize(*inputs)
        ref = model.detect(x, inputs[1], probes=True)
        feats = model.features(x)
        head = model.roi_heads.predict_logits(feats, got["rois"], inputs[1])
    raw = {"rpn": {"objectness_logits": relative_difference(ref[4], got["rpn_logits"]),
                   "pred_deltas": relative_difference(ref[5], got["rpn_deltas"])},
           "box_head": {"rois": int(len(got["rois"])),
                        "pred_class_logits": relative_difference(head[0], got["box_logits"]),
                        "pred_deltas": relative_difference(head[1], got["box_deltas"])}}
    dets = compare_detections(ref[:4], tuple(got[k] for k in OUTPUT_NAMES))
    worst = max(raw["rpn"]["objectness_logits"], raw["rpn"]["pred_deltas"],
                raw["box_head"]["pred_class_logits"], raw["box_head"]["pred_deltas"])
    return {"compared": (f"raw tensors (relative to their norm, <= {RAW_RTOL:g}) and detections "
                         f"(IoU >= {MATCH_IOU:g}, score within {SCORE_TOL:g}, <= "
                         f"{UNMATCHED:.0%} unpaired)"),
            **raw, "detections": dets, "ok": worst <= RAW_RTOL and dets["ok"],
            "outputs": tuple(got[k] for k in OUTPUT_NAMES)}


def describe_check(check: dict[str, Any]) -> str:
    """One line: each comparison and its figure."""
    r, b, d = check["rpn"], check["box_head"], check["detections"]
    return (f"RPN logits {r['objectness_logits']:.1e}, deltas {r['pred_deltas']:.1e}; box head "
            f"on {b['rois']} RoIs: logits {b['pred_class_logits']:.1e}, deltas "
            f"{b['pred_deltas']:.1e} (relative, limit {RAW_RTOL:g}); detections: "
            f"{d['paired']} paired of {d['ref']} PyTorch / {d['got']} onnxruntime (IoU >= "
            f"{MATCH_IOU:g}, score within {SCORE_TOL:g}), largest differences "
            f"{d['max_box_diff']:.2g} px, score {d['max_score_diff']:.2g}")
