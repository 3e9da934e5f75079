"""What an exported detector file is: its format tag, input and output names, the config
keys that identify the network, the parity tolerances, and the export's errors."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from detres.utils.errors import InputError

#: the ``detres.format`` metadata value this version writes and reads
EXPORT_FORMAT = "detres-detector-onnx/1"
#: ONNX opsets the export supports
OPSETS = (18, 19, 20, 21)
INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "batch_index")
#: config keys (under ``model.``) that describe the exported network; ``tools/eval.py --onnx
#: --cfg`` checks them against the config
IDENTITY_KEYS = ("arch", "backbone.name", "num_classes", "input.min_size_test",
                 "input.max_size_test", "input.resize_rule", "input.size_divisibility",
                 "input.format", "input.pixel_range", "input.pixel_mean", "input.pixel_std")
#: extra outputs of the graph the export checks (``FasterRCNN.detect(probes=True)``), removed
#: from the file written
PROBE_NAMES = ("rpn_logits", "rpn_deltas", "rois", "box_logits", "box_deltas")
#: parity of an export. fp32 kernels differ between onnxruntime and PyTorch and between CPUs
#: (another convolution algorithm, another order of summation: ~1e-6 relative after a ResNet),
#: and near a threshold such a difference moves a box across an NMS or top-k decision, so an
#: exact match of the final detections is not a property of a correct translation. The check:
#: the raw tensors before any selection within ``RAW_RTOL`` (norm of the difference over the
#: norm); the detections paired one to one by image, label, IoU >= ``MATCH_IOU`` and score
#: within ``SCORE_TOL``, with at most ``UNMATCHED`` of either side (and at least one) unpaired.
RAW_RTOL, MATCH_IOU, SCORE_TOL, UNMATCHED = 1e-3, 0.99, 1e-3, 0.05


class ExportError(InputError):
    """The detector cannot be exported as asked (opset, a missing package, an op)."""


class OnnxModelError(InputError):
    """An ONNX file that is not a detres detector, or not the one the config describes."""


def require(name: str) -> ModuleType:
    """Import an optional export dependency, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ExportError(f"ONNX export and running needs the package {name!r}: "
                          "pip install -e '.[export]' (onnx, onnxscript, onnxruntime)") from None


def compare_detections(ref: tuple[Tensor, ...], got: tuple[Tensor, ...], *,
                       min_iou: float = MATCH_IOU, score_tol: float = SCORE_TOL,
                       unmatched: float = UNMATCHED) -> dict[str, Any]:
    """Two flat detection sets ``(boxes, scores, labels, batch_index)``, paired greedily one to
    one in decreasing reference score: a pair has the same image and label, IoU >= ``min_iou``
    and scores within ``score_tol``. ``ok`` when at most ``unmatched`` of each side (and at
    least one detection) stays unpaired. Also reports the largest box and score differences
    among the pairs."""
    rb, rs, rl, ri = (torch.as_tensor(t).cpu() for t in ref[:4])
    gb, gs, gl, gi = (torch.as_tensor(t).cpu() for t in got[:4])
    n_ref, n_got = len(rb), len(gb)
    out: dict[str, Any] = {"ref": n_ref, "got": n_got, "paired": 0, "max_box_diff": 0.0,
                           "max_score_diff": 0.0}
    if n_ref and n_got:
        ok = box_iou(rb.float(), gb.float()) >= min_iou
        ok &= (rl[:, None] == gl[None, :]) & (ri[:, None] == gi[None, :])
        ok &= (rs.float()[:, None] - gs.float()[None, :]).abs() <= score_tol
        free = torch.ones(n_got, dtype=torch.bool)
        pairs = []
        for i in torch.argsort(rs.float(), descending=True).tolist():
            cand = torch.nonzero(ok[i] & free).flatten()
            if len(cand):
                j = int(cand[torch.argmin((gs[cand].float() - rs[i].float()).abs())])
                free[j] = False
                pairs.append((i, j))
        if pairs:
            i, j = (torch.tensor(v) for v in zip(*pairs, strict=True))
            out.update(paired=len(pairs),
                       max_box_diff=float((rb[i].float() - gb[j].float()).abs().max()),
                       max_score_diff=float((rs[i].float() - gs[j].float()).abs().max()))
    allowed = max(1, int(unmatched * max(n_ref, n_got)))
    out["ok"] = max(n_ref, n_got) - out["paired"] <= allowed
    return out


def relative_difference(ref: Tensor, got: Tensor) -> float:
    """``||got - ref|| / ||ref||`` (fp64), inf when the shapes differ."""
    ref, got = torch.as_tensor(ref).double().cpu(), torch.as_tensor(got).double().cpu()
    if ref.shape != got.shape:
        return float("inf")
    return float((got - ref).norm() / ref.norm().clamp_min(1e-12))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def model_identity(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The :data:`IDENTITY_KEYS` of a config's ``model`` section (as a dict)."""
    flat = _flat(model_cfg)
    return {k: flat.get(k) for k in IDENTITY_KEYS}
