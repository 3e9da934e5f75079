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
#: parity of an export: boxes within ``BOX_TOL`` pixels plus ``BOX_RTOL`` of the coordinate
#: (fp32 convolutions accumulate in another order in onnxruntime and differ by ~1e-6 relative
#: after a ResNet; 1.2e-3 px on a 250 px coordinate was seen on an Intel Xeon, where an AMD
#: EPYC stayed within 1e-3 px), scores within ``SCORE_TOL``
BOX_TOL, BOX_RTOL, SCORE_TOL = 1e-3, 1e-5, 1e-4


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
                       box_tol: float = BOX_TOL, box_rtol: float = BOX_RTOL,
                       score_tol: float = SCORE_TOL) -> dict[str, Any]:
    """Two flat detection sets ``(boxes, scores, labels, batch_index)``: each reference
    detection is paired with the detection of the same image and label that overlaps it
    most. ``ok`` when the counts are equal and every pair is within ``box_tol`` pixels plus
    ``box_rtol`` times the coordinate, and within ``score_tol``."""
    rb, rs, rl, ri = (torch.as_tensor(t).cpu() for t in ref[:4])
    gb, gs, gl, gi = (torch.as_tensor(t).cpu() for t in got[:4])
    out: dict[str, Any] = {"ref": len(rb), "got": len(gb), "max_box_diff": 0.0,
                           "max_score_diff": 0.0, "matched": 1.0}
    if len(rb) and len(gb):
        ov = box_iou(rb.float(), gb.float())
        ov[(rl[:, None] != gl[None, :]) | (ri[:, None] != gi[None, :])] = -1
        best, j = ov.max(dim=1)
        diff = (rb.float() - gb[j].float()).abs()
        box = diff.amax(dim=1)
        within = (diff <= box_tol + box_rtol * rb.float().abs()).all(dim=1)
        score = (rs.float() - gs[j].float()).abs()
        good = (best > 0) & within & (score <= score_tol)
        out.update(matched=float(good.float().mean()), max_box_diff=float(box.max()),
                   max_score_diff=float(score.max()))
    elif len(rb) != len(gb):
        out["matched"] = 0.0
    out["ok"] = out["ref"] == out["got"] and out["matched"] == 1.0
    return out


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
