#!/usr/bin/env python
"""The export check on a full-width R50-FPN (torchvision's architecture, coco_r50_fpn.yaml)
with random weights calibrated as the benchmark calibrates them: what the check compares and
by how much PyTorch and onnxruntime differ on this CPU. Prints the CPU line first.

    python tools/dev/export_check_r50fpn.py [--dynamic] [--out /tmp/r50fpn.onnx] [KEY=VALUE ...]

Random weights give low class scores; ``model.roi_heads.score_thresh_test=0.001`` (the
default here) keeps a full set of 100 detections per image, with many near-ties: the hard
case for a comparison of final detections.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from detres.benchmark.core import calibrate_random_detector
from detres.config import load_config
from detres.export import ExportError, export_onnx
from detres.modeling import build_detector
from detres.utils.device import cpu_info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dynamic", action="store_true")
    p.add_argument("--cfg", default="coco_r50_fpn.yaml")
    p.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()) / "r50_fpn.onnx")
    p.add_argument("overrides", nargs="*", default=["model.roi_heads.score_thresh_test=0.001"])
    a = p.parse_args()
    print(json.dumps(cpu_info()))
    cfg = load_config(a.cfg, ["model.weights=''", "model.backbone.weights=''", *a.overrides])
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    side = cfg.model.input.min_size_test
    calibrate_random_detector(model, (side, side))
    t0 = time.perf_counter()
    try:
        report = export_onnx(model, a.out, dynamic=a.dynamic)
        print(f"written: {a.out} ({report['bytes'] / 2**20:.0f} MiB)")
        check = report["check"]
    except ExportError as e:
        print(f"refused: {e}")
        return 1
    print(f"export + check: {time.perf_counter() - t0:.0f} s")
    print(json.dumps(check, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
