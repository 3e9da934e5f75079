#!/usr/bin/env python
"""Export a trained detector as an ONNX file that gives the same detections in onnxruntime.

    python tools/export.py --cfg output/demo/config.yaml --weights output/demo/model_final.pth \\
        --out demo.onnx [--dynamic] [--batch N] [--opset 18] [key=value ...]

The graph takes a preprocessed batch, ``images`` float32 (N, 3, H, W) RGB in [0, 1] (each
image resized by the detector's rule, zero-padded at the bottom/right) and ``image_sizes``
int64 (N, 2), and returns ``boxes`` (D, 4) in resized-image pixels, ``scores``, ``labels``
(1..K) and ``batch_index``, all images' detections in one flat set. Normalization runs inside
the graph, the resize outside (detres.preprocess; tools/predict.py --onnx and tools/eval.py
--onnx do it for you). With ``--dynamic`` batch size, height and width are free; without,
they are fixed to ``--batch`` images of S x S (S: the longest padded side the resize rule
gives). Class names, category ids, normalization and the size rule are in the file's
metadata. After writing, the file is run in onnxruntime on the export inputs and compared
with PyTorch (``--no-check`` skips that). Needs ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from detres.config import load_config
from detres.engine.launch import add_debug_flag, run_cli
from detres.export import OPSETS, describe_check, export_onnx
from detres.modeling import build_detector, load_weights, resolve_weights
from detres.utils.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cfg", required=True, help="config name or path (e.g. a run's config.yaml)")
    p.add_argument("--weights", required=True, help="detector checkpoint (model_final.pth)")
    p.add_argument("--out", required=True, type=Path, help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=OPSETS[0],
                   help=f"ONNX opset, {OPSETS[0]}-{OPSETS[-1]} (default {OPSETS[0]})")
    p.add_argument("--dynamic", action="store_true",
                   help="free batch size, height and width (default: fixed shapes)")
    p.add_argument("--batch", type=int, default=1,
                   help="images per run of a fixed-shape graph (default 1)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the file in onnxruntime against PyTorch")
    add_debug_flag(p)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.cfg, args.overrides)
    if cfg.task != "det":
        raise InputError(f"{args.cfg}: task is {cfg.task!r}, not a detector config")
    e = cfg.evaluation
    if e.tta.enabled or e.multiscale.enabled:
        key = "evaluation.tta.enabled" if e.tta.enabled else "evaluation.multiscale.enabled"
        raise InputError(f"{key}: test-time augmentation and multi-scale testing run several "
                         "passes of the PyTorch detector and do not export; export with "
                         f"{key}=false")
    model = build_detector(cfg)
    # a name or URL is fetched; a checkpoint of another model is an error
    load_weights(model, resolve_weights(args.weights, cfg.model), policy="strict")
    t0 = time.perf_counter()
    report = export_onnx(model, args.out, opset=args.opset, dynamic=args.dynamic,
                         batch=args.batch, check=not args.no_check)
    shape = ("dynamic batch, height and width" if report["fixed"] is None else
             "fixed {batch} x 3 x {height} x {width}".format(**report["fixed"]))
    print(f"wrote {args.out} ({report['bytes'] / 2**20:.1f} MiB, opset {args.opset}, {shape}, "
          f"{time.perf_counter() - t0:.0f} s)")
    meta = json.loads(report["metadata"]["detres.model"])
    print(f"  {meta['arch']} ({meta['backbone']}), {meta['num_classes']} classes: "
          f"{', '.join(meta['class_names'][:8])}{' ...' if meta['num_classes'] > 8 else ''}")
    c = report.get("check")
    if c:
        print(f"  checked, onnxruntime vs PyTorch on the export inputs: {c['compared']}")
        print(f"  {describe_check(c)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    return run_cli("export.py", lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
