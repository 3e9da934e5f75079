"""An exported detector run by onnxruntime, behind ``FasterRCNN``'s interface.

:class:`OnnxDetector` reads the file's metadata (a file without it, or of another format,
is refused with the reason), preprocesses images with the one path of
:mod:`detres.preprocess`, runs the graph, and maps detections back to input pixels and
data-set category ids with the function ``FasterRCNN`` uses. ``predict``, ``inference``,
``to_original``, ``class_names``, ``category_ids`` and ``num_classes`` mean what they mean on
the PyTorch detector, so that ``detres.engine.predict`` and ``detres.engine.det`` draw, write
and score an exported file with the same code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detres.export.format import (
    EXPORT_FORMAT,
    IDENTITY_KEYS,
    INPUT_NAMES,
    OUTPUT_NAMES,
    OnnxModelError,
    model_identity,
    require,
)
from detres.modeling.box_ops import split_by_image
from detres.modeling.faster_rcnn import RawImagePredictor
from detres.preprocess import preprocess_images
from detres.utils.errors import FileReadError

_REQUIRED = ("detres.model", "detres.input", "detres.output", "detres.config")


class OnnxDetector(RawImagePredictor):
    """An ONNX file written by ``tools/export.py``, run on the CPU by onnxruntime with
    ``threads`` intra-op threads (default: torch's thread count)."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileReadError(f"{self.path}: no such ONNX file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=list(providers or
                                                               ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own (pybind) types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OnnxModelError(f"{self.path}: onnxruntime cannot load it: {first}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        fmt = meta.get("detres.format")
        if fmt is None:
            raise OnnxModelError(
                f"{self.path}: not a detres detector export (no 'detres.format' metadata; "
                f"metadata keys: {sorted(meta) or 'none'}); write one with tools/export.py")
        if fmt != EXPORT_FORMAT:
            raise OnnxModelError(f"{self.path}: format {fmt!r}; this detres reads "
                                 f"{EXPORT_FORMAT!r} (re-export it)")
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise OnnxModelError(f"{self.path}: metadata {missing} missing")
        try:
            parsed = {k: json.loads(meta[k]) for k in _REQUIRED}
        except json.JSONDecodeError as e:
            raise OnnxModelError(f"{self.path}: metadata is not valid JSON: {e}") from None
        names_in = tuple(i.name for i in self.session.get_inputs())
        names_out = tuple(o.name for o in self.session.get_outputs())
        if names_in != INPUT_NAMES or names_out != OUTPUT_NAMES:
            raise OnnxModelError(f"{self.path}: graph inputs {names_in} / outputs {names_out}, "
                                 f"expected {INPUT_NAMES} / {OUTPUT_NAMES}")
        model, inp, out = parsed["detres.model"], parsed["detres.input"], parsed["detres.output"]
        try:
            self.num_classes = int(model["num_classes"])
            self.class_names = [str(c) for c in model["class_names"]]
            self.category_ids = [int(c) for c in model["category_ids"]]
            resize = inp["resize"]
            self.resize_rule = str(resize["rule"])
            self.min_size_test = int(resize["min_size_test"])
            self.max_size_test = int(resize["max_size_test"])
            self.size_divisibility = int(resize["size_divisibility"])
            self.fixed: dict[str, int] | None = inp["fixed"]
            self.input_normalization: dict[str, Any] = inp["normalization_in_graph"]
            self.drop_empty = bool(out["drop_empty_after_rescale"])
        except (KeyError, TypeError, ValueError) as e:
            raise OnnxModelError(f"{self.path}: metadata field {e} missing or malformed"
                                 ) from None
        if len(self.class_names) != self.num_classes or len(self.category_ids) != self.num_classes:
            raise OnnxModelError(f"{self.path}: metadata lists {len(self.class_names)} class "
                                 f"names and {len(self.category_ids)} ids for "
                                 f"{self.num_classes} classes")
        self.arch, self.backbone = model.get("arch"), model.get("backbone")
        self.config: dict[str, Any] = parsed["detres.config"]
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------------ checks

    def check_config(self, model_cfg: dict[str, Any], where: str = "the config") -> None:
        """The config's network keys (:data:`IDENTITY_KEYS`) must equal the file's; else an
        error naming each key that differs."""
        mine = model_identity(model_cfg)
        bad = [f"model.{k}: file {self.config.get(k)!r}, {where} {mine[k]!r}"
               for k in IDENTITY_KEYS
               if k in self.config and self.config.get(k) is not None
               and not _same(self.config.get(k), mine[k])]
        if bad:
            raise OnnxModelError(f"{self.path} was exported from another detector than "
                                 f"{where} describes: " + "; ".join(bad))

    # ------------------------------------------------------------------------ running

    def eval(self) -> OnnxDetector:  # the interface of an nn.Module in eval mode
        return self

    def run(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The graph on a preprocessed batch -> flat ``(boxes, scores, labels, batch_index)``."""
        out = self.session.run(list(OUTPUT_NAMES), {
            "images": np.ascontiguousarray(images.detach().cpu().float().numpy()),
            "image_sizes": np.ascontiguousarray(
                torch.as_tensor(image_sizes, dtype=torch.int64).cpu().numpy())})
        boxes, scores, labels, index = (torch.from_numpy(o) for o in out)
        return boxes, scores, labels, index

    def inference(self, images: Tensor, image_sizes: Sequence[Any] | Tensor
                  ) -> list[dict[str, Tensor]]:
        """``FasterRCNN.inference``: per image of a loader batch (RGB floats in [0, 1],
        padded), ``boxes`` in resized-image pixels, ``scores``, ``labels`` in 1..K. A
        fixed-shape file gets its batch size and side (images padded to it, the batch run
        in chunks)."""
        sizes = torch.as_tensor([(int(s[0]), int(s[1])) for s in image_sizes], dtype=torch.int64)
        n = images.shape[0]
        if self.fixed is None:
            parts = [(images, sizes)]
        else:
            parts = self._fixed_chunks(images, sizes)
        dets: list[dict[str, Tensor]] = []
        for x, sz in parts:
            boxes, scores, labels, index = self.run(x, sz)
            m = len(sz)
            split = [split_by_image(t, index, m) for t in (boxes, scores, labels)]
            dets += [{"boxes": b, "scores": s, "labels": lb}
                     for b, s, lb in zip(*split, strict=True)]
        return dets[:n]

    def _fixed_chunks(self, images: Tensor, sizes: Tensor) -> list[tuple[Tensor, Tensor]]:
        assert self.fixed is not None
        b, h, w = self.fixed["batch"], self.fixed["height"], self.fixed["width"]
        if images.shape[-2] > h or images.shape[-1] > w:
            raise OnnxModelError(f"{self.path}: a fixed {h}x{w} graph cannot take a "
                                 f"{images.shape[-2]}x{images.shape[-1]} batch")
        padded = images.new_zeros((images.shape[0], 3, h, w))
        padded[:, :, : images.shape[-2], : images.shape[-1]] = images
        parts = []
        for a in range(0, len(padded), b):
            x, sz = padded[a : a + b], sizes[a : a + b]
            if len(x) < b:  # fill the fixed batch with blank images, their detections dropped
                fill = b - len(x)
                x = torch.cat([x, x.new_zeros((fill, 3, h, w))])
                sz = torch.cat([sz, torch.tensor([[h, w]] * fill, dtype=torch.int64)])
            parts.append((x, sz))
        return parts

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """``FasterRCNN.preprocess``: the resize rule, then padding (:mod:`detres.preprocess`)."""
        return preprocess_images([img.cpu() for img in images], short=self.min_size_test,
                                 max_size=self.max_size_test, rule=self.resize_rule,
                                 size_divisibility=self.size_divisibility)

    def describe(self) -> str:
        shape = ("dynamic batch and size" if self.fixed is None else
                 f"fixed {self.fixed['batch']} x 3 x {self.fixed['height']} x "
                 f"{self.fixed['width']}")
        return (f"{self.path.name}: {self.arch} ({self.backbone}), {self.num_classes} classes, "
                f"{shape}, resize {self.resize_rule} {self.min_size_test}/{self.max_size_test}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))  # float32 in the file
    return a == b
