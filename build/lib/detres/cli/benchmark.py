"""Speed of a detector config: inference latency, training iteration, peak memory, backbone
GFLOP/s against a large convolution, data-loader throughput; and, for the R50-FPN config,
the same figures side by side with torchvision's ``fasterrcnn_resnet50_fpn``.

  python tools/benchmark.py --cfg coco_r50_fpn --vs-torchvision            # the headline A/B
  python tools/benchmark.py --cfg coco_r50_fpn --precision bf16 --vs-torchvision
  python tools/benchmark.py --cfg coco_r101 --image-size 600x1000 --batch-size 2
  python tools/benchmark.py --cfg demo --loader --workers 2                 # loader vs training
  python tools/benchmark.py --ablation --ops                                # each technique
  python tools/benchmark.py --cfg coco_r50_fpn --vs-onnx --skip train efficiency   # ONNX

Weights are random unless ``--weights`` (detres checkpoint) or ``--tv-weights`` (torchvision
file, with ``--vs-torchvision``) is given; random BN statistics are then calibrated on a
synthetic image so that the RPN proposes as a trained one does (the RoI count is printed):
a two-stage detector's time depends on how many RoIs reach the box head. ``--json`` writes
every figure (median, quartiles, min, max of each) for machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from detres.benchmark import suite as B
from detres.benchmark.core import PRECISIONS, calibrate_random_detector, test_size
from detres.config import load_config
from detres.modeling import build_detector, load_pretrained
from detres.utils.device import (
    allocator_state,
    auto_amp,
    cpu_has_native_bf16,
    cpu_info,
    cpu_line,
    resolve_device,
)


def parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"image size must be HxW, e.g. 480x640, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return h, w


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: CPU model, flags, torch's CPU capability, threads,
    native bf16 (as ``train.amp=auto`` sees it), the CPU allocator's setting, torch, date, and
    the GPU if any."""
    info = {**cpu_info(), "threads": torch.get_num_threads(),
            "bf16_native": cpu_has_native_bf16(), "malloc": allocator_state(),
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def line(name: str, s: dict[str, Any], extra: str = "") -> None:
    print(f"  {name:<34} {s['median_s'] * 1e3:9.1f} ms  [p25 {s['p25_s'] * 1e3:.1f}, "
          f"p75 {s['p75_s'] * 1e3:.1f}, n={s['n']}] {extra}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cfg", default="coco_r50_fpn.yaml")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                   help="auto: bf16 where the hardware runs it natively, else fp32 (CPU) / "
                        "fp16 (GPU before compute capability 8.0)")
    p.add_argument("--image-size", type=parse_hw, default=(480, 640), metavar="HxW",
                   help="raw image size (resized by the config's test/train sizes)")
    p.add_argument("--batch-size", type=int, default=2, help="training batch")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--weights", default="", help="detres detector checkpoint")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["inference", "train", "efficiency", "vs-train"],
                   help="figures to leave out (vs-train: the A/B training iterations)")
    p.add_argument("--vs-torchvision", action="store_true")
    p.add_argument("--tv-weights", default=None, help="torchvision COCO weight file")
    p.add_argument("--vs-onnx", action="store_true",
                   help="torchvision vs detres eager vs detres in onnxruntime (fp32, R50-FPN)")
    p.add_argument("--ablation", action="store_true", help="each inference technique on/off")
    p.add_argument("--ops", action="store_true", help="RoIAlign kernel vs torchvision's")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(features)")
    p.add_argument("--loader", action="store_true", help="training loader images/s")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="config key=value overrides")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if a.precision == "auto":
        a.precision = {"none": "fp32"}.get(auto_amp(device)[0], auto_amp(device)[0])
    if a.precision == "fp16" and device.type == "cpu":
        p.error("--precision fp16 needs --device cuda (use bf16 on CPU)")
    cfg = load_config(a.cfg, ["model.weights=" + (a.weights or "''"), "model.backbone.weights=''",
                              *a.overrides])
    cl = not a.no_channels_last
    kw = {"warmup": a.warmup, "repeats": a.repeats}
    res: dict[str, Any] = {"machine": machine(device), "cfg": a.cfg, "precision": a.precision,
                           "channels_last": cl, "image_size": list(a.image_size)}
    print(f"CPU: {cpu_line()}" + (f" | GPU: {res['machine']['gpu']}" if "gpu" in res["machine"]
                                  else ""))
    print(f"{a.cfg} | {a.precision}, channels_last={cl}, "
          f"image {a.image_size[0]}x{a.image_size[1]}")
    model = build_detector(cfg).to(device)
    if a.weights:
        load_pretrained(model, cfg.model)
    else:  # random weights: give the BN layers sane statistics (see the docstring)
        calibrate_random_detector(model, test_size(model, a.image_size))
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if "inference" not in a.skip:
        r = res["inference"] = B.bench_inference(model, a.image_size, device, a.precision, **kw)
        line("inference / image", r, f"peak +{r['peak_mib'] or 0:.0f} MiB, "
             f"{r['rois_per_image']} RoIs")
    if "train" not in a.skip:
        r = res["train"] = B.bench_train(cfg, model, a.image_size, device, a.precision, cl,
                                         batch=a.batch_size, **kw)
        line(f"train iteration (batch {a.batch_size})", r,
             f"{r['images_per_s']:.2f} img/s, peak +{r['peak_mib'] or 0:.0f} MiB")
    if "efficiency" not in a.skip:
        r = res["efficiency"] = B.bench_efficiency(model, cfg, a.image_size, device, a.precision,
                                                   cl, **kw)
        print(f"  backbone+neck {r['gflop']:.1f} GFLOP at {r['input'][0]}x{r['input'][1]} in "
              f"{r['features_s'] * 1e3:.0f} ms = {r['achieved_gflops']:.0f} GFLOP/s; a large "
              f"3x3 conv runs at {r['conv3x3_gflops']:.0f} GFLOP/s ({r['fraction']:.0%})")
        h = r["box_head"]
        print(f"  box head {h['gflop']:.1f} GFLOP on {h['rois']} RoIs in {h['seconds'] * 1e3:.0f}"
              f" ms = {h['achieved_gflops']:.0f} GFLOP/s")
    if a.compile:
        r = res["compiled_features"] = B.bench_compile(model, cfg, a.image_size, device, cl, **kw)
        line("features, torch.compile", r, f"(compiling took {r['compile_s']:.0f} s)")
    if a.loader:
        r = res["loader"] = B.bench_loader(cfg, workers=a.workers, batch=cfg.solver.batch_size,
                                           batches=20)
        line(f"loader batch wait ({a.workers} workers)", r["batch_wait"],
             f"{r['images_per_s']:.1f} images/s")
        if "train" in res:
            print(f"  training consumes {res['train']['images_per_s']:.1f} images/s")
    if a.ablation:
        res["ablation"] = B.bench_ablation(model, a.image_size, device, a.precision, **kw)
        print("  ablation (inference / image):")
        for k, s in res["ablation"].items():
            line("  " + k, s)
    if a.ops:
        res["ops"] = B.bench_ops(device, repeats=a.repeats)
        print(f"  MultiScaleRoIAlign, {res['ops']['rois']} RoIs:")
        for k, s in res["ops"]["multiscale_roi_align"].items():
            line("  " + k, s)
    if a.vs_torchvision:
        r = res["vs_torchvision"] = B.bench_vs_torchvision(
            cfg, a.image_size, device, a.precision, cl, batch=a.batch_size,
            weights=a.tv_weights, train="vs-train" not in a.skip, **kw)
        for key in ("inference", "train"):
            for k, s in r.get(key, {}).items():
                ratio = r[key + "_speedup"].get(k)
                line(f"{key} {k}", s, f"x{ratio:.2f} vs torchvision" if ratio else "")
        for prec, per_image in r["agreement"].items():
            m = per_image[0]
            print(f"  detections ours {prec} vs torchvision fp32: {m['matched']:.1%} of "
                  f"{m['ref']} matched (IoU>=0.99, same label), max box diff "
                  f"{m['max_box_diff_px']:.2g} px, max score diff {m['max_score_diff']:.2g}")
    if a.vs_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            r = res["vs_onnx"] = B.bench_vs_onnx(cfg, a.image_size, channels_last=cl,
                                                 weights=a.tv_weights, workdir=tmp, **kw)
        print(f"  exported in {r['export_s']:.0f} s ({r['onnx_bytes'] / 2**20:.0f} MiB)")
        for k, s in r["inference"].items():
            line(f"inference {k}", s, f"x{r['speedup_vs_torchvision'][k]:.2f} vs torchvision")
        print(f"  onnxruntime vs detres eager: x{r['onnxruntime_vs_detres']:.2f}")
        for k, m in r["agreement"].items():
            print(f"  detections {k} vs torchvision: {m['matched']:.1%} of {m['ref']} matched, "
                  f"max box diff {m['max_box_diff_px']:.2g} px, score {m['max_score_diff']:.2g}")
        top = list(r["onnxruntime_profile"].items())[:6]
        print("  onnxruntime time by operator: " + ", ".join(f"{k} {v:.0f} ms" for k, v in top))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
