#!/usr/bin/env python
"""Run a trained detector on images and videos: draw the detections and write them as JSON.

    python tools/predict.py --cfg output/demo/config.yaml --weights output/demo/model_final.pth \\
        --input photo.jpg|images_dir|'photos/**/*.jpg'|clip.mp4 [more ...] --out predictions/ \\
        [--score-thresh 0.5|best]
    python tools/predict.py --onnx demo.onnx --input ... --out ...   (an exported detector)

Folders are searched recursively (the output keeps their sub-folders); globs are expanded.
Images run in batches of ``--batch-size``. Writes ``OUT/<image name>`` (boxes with class
names and scores drawn; JPEG and PNG inputs keep their format, others become PNG), for a
video ``OUT/<name>.mp4`` (annotated) and ``OUT/<name>.jsonl`` (one line per frame: ``frame``,
``time_s`` and the detections), and ``OUT/predictions.json``: a list with, per image,
``file``, ``height``, ``width``, ``boxes`` (x1, y1, x2, y2 in input pixels), ``scores``,
``labels`` (the data set's category ids) and ``class_names``. Class names and ids come from
the checkpoint; the config must describe the same detector (its saved ``config.yaml`` does).
With ``--onnx`` (a file from tools/export.py) onnxruntime runs the detector and the file's
metadata gives the classes and the resize rule; drawing and JSON are the same.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
from tqdm import tqdm

from detres.config import load_config
from detres.data.image_check import usable_files
from detres.engine.launch import add_debug_flag, run_cli
from detres.engine.predict import (
    Detector,
    build_predictor,
    detection_record,
    draw_detections,
    is_video,
    list_inputs,
    predict_files,
    predict_video,
    video_info,
)
from detres.export import OnnxDetector
from detres.utils.device import resolve_device
from detres.utils.errors import InputError
from detres.utils.logging import setup_logging
from detres.utils.visualizer import write_image


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cfg", help="config name or path (e.g. a run's config.yaml)")
    p.add_argument("--weights", help="detector checkpoint (model_final.pth)")
    p.add_argument("--onnx", type=Path,
                   help="an exported detector (tools/export.py) instead of --cfg/--weights")
    p.add_argument("--input", required=True, nargs="+",
                   help="image or video files, folders (searched recursively) or globs "
                        "('photos/**/*.jpg', quoted)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--score-thresh", default="0.5",
                   help="draw and write detections at or above this score (default 0.5; the "
                        "model itself returns those above model.roi_heads.score_thresh_test, "
                        "0.05), or 'best': the best-F1 threshold of the run's evaluation "
                        "report (report/report.json beside --weights)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--bad-images", choices=["error", "skip"], default="error",
                   help="image files that cannot be used (checked before any is run): one "
                        "error naming all (default), or left out")
    add_debug_flag(p)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p


def score_threshold(value: str, weights: str | None) -> float:
    """``--score-thresh``: a number, or ``best`` read from the run's evaluation report."""
    if value != "best":
        try:
            return float(value)
        except ValueError:
            raise InputError(f"--score-thresh {value!r}: a number or 'best'") from None
    if not weights:
        raise InputError("--score-thresh best reads the run's report/report.json beside "
                         "--weights; give --weights, or a number")
    path = Path(weights).parent / "report" / "report.json"
    if not path.is_file():
        raise InputError(f"--score-thresh best: no evaluation report at {path} (train_det.py "
                         "writes it at the end of a run, eval.py --out beside its output)")
    thresh = float(json.loads(path.read_text())["f1"]["best_score_thresh"])
    print(f"score threshold {thresh:.2f}: the best F1 of {path}")
    return thresh


def run(args: argparse.Namespace) -> int:
    setup_logging()
    args.score_thresh = score_threshold(args.score_thresh, args.weights)
    inputs = list_inputs(args.input)
    names = [n for _, n in inputs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"several inputs would be written as {dup}; rename or run separately")
    videos = [(f, n) for f, n in inputs if is_video(f)]
    usable = set(usable_files([f for f, _ in inputs if not is_video(f)],
                              policy=args.bad_images))
    images = [(f, n) for f, n in inputs if str(f) in usable]
    if args.onnx is not None:
        model: Detector = OnnxDetector(args.onnx)
        amp = "none"  # onnxruntime runs the graph in float32
        print(model.describe())
    else:
        cfg = load_config(args.cfg, args.overrides)
        if cfg.task != "det":
            raise InputError(f"{args.cfg}: task is {cfg.task!r}, not a detector config")
        model, amp = build_predictor(cfg, args.weights, resolve_device(cfg.train.device)), \
            cfg.evaluation.amp
    args.out.mkdir(parents=True, exist_ok=True)
    for f, name in videos:
        annotate_video(model, f, args.out / name, args, amp)
    if not images:
        return 0
    records = []
    stream = predict_files(model, [f for f, _ in images], batch_size=args.batch_size,
                           score_thresh=args.score_thresh, amp=amp)
    bar = tqdm(zip(stream, [n for _, n in images], strict=True), total=len(images),
               desc="predict", unit="img", dynamic_ncols=True, disable=len(images) < 2)
    for (f, image, det), name in bar:
        write_image(args.out / name, draw_detections(image, det, model))
        records.append(detection_record(f, image, det, model))
        if len(images) <= 20:
            bar.write(f"{f}: {len(det['boxes'])} detection(s) -> {args.out / name}")
    out_json = args.out / "predictions.json"
    out_json.write_text(json.dumps(records, indent=1))
    print(f"wrote {out_json} ({len(records)} image(s), score >= {args.score_thresh})")
    return 0


def annotate_video(model: Detector, src: Path, dst: Path, args: argparse.Namespace,
                   amp: str) -> None:
    """``dst``: the video with its detections drawn (MP4), and ``dst.jsonl``: one JSON line
    per frame (frame index, time, boxes, scores, labels, class names); frames/s in the
    progress bar."""
    fps, count, (w, h) = video_info(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise InputError(f"cannot write the video {dst} (OpenCV's MP4 writer)")
    lines = dst.with_suffix(".jsonl")
    n = 0
    try:
        with open(lines, "w") as out, tqdm(total=count or None, desc=src.name, unit="frame",
                                           dynamic_ncols=True) as bar:
            for i, t, frame, det in predict_video(model, src, batch_size=args.batch_size,
                                                  score_thresh=args.score_thresh, amp=amp):
                drawn = draw_detections(frame, det, model).permute(1, 2, 0).numpy()
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                rec = detection_record(src, frame, det, model)
                out.write(json.dumps({"frame": i, "time_s": round(t, 4), **rec}) + "\n")
                n += 1
                bar.update()
    finally:
        writer.release()
    print(f"wrote {dst} and {lines} ({n} frames at {fps:g} fps, score >= {args.score_thresh})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if (args.onnx is not None) == bool(args.cfg or args.weights):  # both or neither
        parser.error("give --cfg and --weights (a checkpoint), or --onnx (an exported file)")
    if args.onnx is None and not (args.cfg and args.weights):
        parser.error("--cfg and --weights go together")
    if args.onnx is not None and args.overrides:
        parser.error(f"config overrides {args.overrides} do not apply to --onnx")
    return run_cli("predict.py", lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
