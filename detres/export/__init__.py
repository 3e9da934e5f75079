"""Detectors as ONNX files that give the same detections in onnxruntime (``tools/export.py``).

* :mod:`~detres.export.onnx`: :class:`DetectorGraph` (a detector's inference as one graph of
  a preprocessed batch), :func:`export_onnx` (torch.export, ONNX translation, metadata, a
  check in onnxruntime);
* :mod:`~detres.export.runtime`: :class:`OnnxDetector`, an exported file run by onnxruntime
  behind the same ``predict`` / ``inference`` interface as ``FasterRCNN``, so that
  ``tools/predict.py --onnx`` and ``tools/eval.py --onnx`` draw, write and score exactly as
  the PyTorch path does.

``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional extra ``[export]``; they are
imported when used, and their absence is an error that says how to install them.
"""

from __future__ import annotations

from detres.export.format import (
    EXPORT_FORMAT,
    OPSETS,
    ExportError,
    OnnxModelError,
    compare_detections,
)
from detres.export.onnx import DetectorGraph, describe_check, export_onnx, onnx_metadata
from detres.export.runtime import OnnxDetector

__all__ = ["EXPORT_FORMAT", "OPSETS", "DetectorGraph", "ExportError", "OnnxDetector",
           "OnnxModelError", "compare_detections", "describe_check", "export_onnx", "onnx_metadata"]
