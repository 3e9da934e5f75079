"""Score detections and print a table; ``--out metrics.json`` writes
``{"mAP@.5": x, "mAP@[.5,.95]": y, "per_class": {name: {"AP@.5": .., "AP@[.5,.95]": ..}}}``
(fractions in [0, 1]).

  1. python tools/eval.py --cfg CFG --weights CKPT [key=value ...]   (on the config's test set)
     torchrun --nproc-per-node N tools/eval.py --cfg CFG --weights CKPT
     python tools/eval.py --cfg CFG --onnx model.onnx   (an exported detector, onnxruntime)
  2. python tools/eval.py --coco-gt instances.json --results dets.json
  3. python tools/eval.py --voc-root VOCdevkit/VOC2007 --split test --results PATH
                          [--metric voc07|area]

In mode 3 PATH is a directory of devkit files ``comp4_det_test_<class>.txt`` (lines
``image_id score x1 y1 x2 y2``) or a JSON list of ``{"image_id", "category" (name) or
"category_id" (1-based), "score", "box": [x1, y1, x2, y2]}`` (see detres/evaluation/voc_io.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import torch

from detres.config import load_config, published_figures
from detres.engine import det
from detres.engine.launch import add_debug_flag, run_cli
from detres.evaluation import (
    VOCEvaluator,
    evaluate_coco_results,
    format_table,
    load_voc_annotations,
    load_voc_results,
    write_metrics,
)
from detres.evaluation.coco import COCO_BACKENDS
from detres.evaluation.voc_io import voc_class_names
from detres.utils.device import resolve_device
from detres.utils.dist import cleanup, get_local_rank, init_distributed
from detres.utils.errors import InputError
from detres.utils.logging import setup_logging

#: (results, published figures in percent, published source, title)
Scored = tuple[dict[str, Any], dict[str, float], str, str]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_argument_group("1. a detector")
    g.add_argument("--cfg", help="config name or path")
    g.add_argument("--weights", help="detector checkpoint")
    g.add_argument("--onnx", type=Path, help="an exported detector (tools/export.py) instead "
                   "of --weights; CFG gives the test set and must describe the same network")
    g.add_argument("overrides", nargs="*", help="config overrides key=value")
    g = p.add_argument_group("2. a COCO results file")
    g.add_argument("--coco-gt", type=Path, help="COCO instances JSON (ground truth)")
    g.add_argument("--coco-backend", default="auto", choices=COCO_BACKENDS,
                   help="COCO scorer (default auto: faster-coco-eval when installed, else "
                        "pycocotools, the reference); mode 1 reads evaluation.coco_backend")
    g = p.add_argument_group("3. VOC detections")
    g.add_argument("--voc-root", type=Path, help="VOC year directory, e.g. VOCdevkit/VOC2007")
    g.add_argument("--split", default="test", help="image set under ImageSets/Main")
    g.add_argument("--metric", choices=("voc07", "area"),
                   help="AP: VOC07 11-point or area under the curve (default: by year)")
    g.add_argument("--classes", help="comma-separated class names (default: VOC_ROOT/classes.txt "
                   "if present, else the 20 VOC classes)")
    p.add_argument("--results", type=Path, help="detections to score (modes 2 and 3)")
    p.add_argument("--out", type=Path, help="write the metrics JSON here")
    p.add_argument("--published", action="append", default=[], metavar="KEY=PERCENT",
                   help="a published figure to print beside ours, e.g. mAP@.5=76.4")
    add_debug_flag(p)
    return p


def eval_detector(args: argparse.Namespace) -> Scored:
    """Mode 1: run the config's detector with ``--weights`` on ``data.test[0]`` and score it
    with that set's evaluator; under torchrun each rank runs its shard, rank 0 scores."""
    setup_logging()  # console: the data set summary, warnings as one line each
    weights = [] if args.onnx else [f"model.weights={args.weights}"]
    cfg = load_config(args.cfg, [*args.overrides, *weights])
    if cfg.task != "det":
        raise InputError(f"{args.cfg}: task is {cfg.task!r}, not a detector config")
    if args.onnx:
        out_dir = args.out.parent if args.out else None
        results = det.evaluate_onnx(cfg, args.onnx, out_dir=out_dir)
        test = cfg.data.test[0]
        pub = published_figures(cfg)
        return (results, pub.get("published", {}), pub.get("source", ""),
                f"{Path(args.cfg).stem} ({args.onnx}, onnxruntime) on {test.name or test.path}")
    device = resolve_device(cfg.train.device)
    init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", get_local_rank())
    try:  # COCO results are dumped beside --out
        results = det.evaluate_config(cfg, device, out_dir=args.out.parent if args.out else None)
    finally:
        cleanup()
    test = cfg.data.test[0]
    pub = published_figures(cfg)  # only beside the set they were measured on
    return (results, pub.get("published", {}), pub.get("source", ""),
            f"{Path(args.cfg).stem} ({args.weights}) on {test.name or test.path}")


def eval_coco(args: argparse.Namespace) -> Scored:
    """Mode 2: a COCO results file against instances JSON."""
    results = evaluate_coco_results(args.coco_gt, args.results, backend=args.coco_backend)
    return results, {}, "", f"COCO bbox: {args.results} vs {args.coco_gt}"


def eval_voc(args: argparse.Namespace) -> Scored:
    """Mode 3: VOC devkit result files or a JSON list against a VOC year directory."""
    image_ids, records = load_voc_annotations(args.voc_root, args.split)
    classes = args.classes.split(",") if args.classes else voc_class_names(args.voc_root, records)
    m = re.search(r"VOC(\d{4})", Path(args.voc_root).resolve().name)
    ev = VOCEvaluator(gt=dict(zip(image_ids, records, strict=True)), class_names=classes,
                      year=int(m.group(1)) if m else None,
                      use_07_metric=None if args.metric is None else args.metric == "voc07")
    dets = load_voc_results(args.results, image_ids=image_ids, class_names=ev.class_names,
                            split=args.split)
    results = ev.score_arrays(*dets)
    metric = "VOC07 11-point" if ev.use_07_metric else "area under PR curve"
    return results, {}, "", f"{args.voc_root.name} {args.split} ({metric}): {args.results}"


def parse_published(items: list[str], parser: argparse.ArgumentParser) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            parser.error(f"--published expects KEY=PERCENT, got {item!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    modes = [bool(args.cfg or args.weights or args.onnx), args.coco_gt is not None,
             args.voc_root is not None]
    if sum(modes) != 1:
        parser.error("choose one mode: --cfg/--weights, --coco-gt, or --voc-root")
    if not modes[0] and args.results is None:
        parser.error("--coco-gt and --voc-root need --results")
    if modes[0] and not (args.cfg and (args.weights or args.onnx)):
        parser.error("mode 1 needs both --cfg and --weights (or --cfg and --onnx)")
    if args.weights and args.onnx:
        parser.error("--weights and --onnx are two detectors: give one")
    if args.overrides and not modes[0]:
        parser.error(f"config overrides {args.overrides} only apply with --cfg")
    published = parse_published(args.published, parser)
    return run_cli("eval.py", lambda: run(args, modes, published), debug=args.debug)


def run(args: argparse.Namespace, modes: list[bool], published: dict[str, float]) -> int:
    if modes[0]:
        results, pub, source, title = eval_detector(args)
    elif modes[1]:
        results, pub, source, title = eval_coco(args)
    else:
        results, pub, source, title = eval_voc(args)
    if not results:  # a non-zero rank under torchrun
        return 0
    print(format_table(results, published={**pub, **published}, title=title, source=source))
    if args.out:
        print(f"wrote {write_metrics(results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
