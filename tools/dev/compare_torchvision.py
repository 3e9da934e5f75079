#!/usr/bin/env python
"""detres beside torchvision's detection training reference on one real set (not run by the
tests): the same split, from scratch, the same depth (ResNet-18 + FPN), image scale, anchors,
batch, learning rate and RoI/proposal budgets, the same wall time for training, both scored
once at the end by detres's scorer for the set's format.

    python tools/dev/compare_torchvision.py --reference /path/to/vision/references/detection \\
        --set voc:../shared/data/raccoon --val-fraction 0.2 --out output/compare_raccoon

``--reference`` is a copy of pytorch/vision's ``references/detection`` (train.py, engine.py,
utils.py, presets.py, transforms.py, coco_utils.py, group_by_aspect_ratio.py). Its train.py
runs as users run it (``--dataset coco --data-path``), on the set written out in the COCO
layout it reads (``train2017/``, ``val2017/``, ``annotations/instances_*2017.json``, images
linked), with four adjustments made from outside, none to its training loop:

- ``--model detres_r18_fpn``: a builder registered in ``torchvision.models.detection`` making
  torchvision's ``FasterRCNN`` on ``resnet_fpn_backbone("resnet18")`` with trained BatchNorm
  (what torchvision itself uses without pretrained weights) and the recipe's sizes;
- its per-epoch ``evaluate`` is skipped (both detectors are scored once, by one scorer);
- the epoch count is set so that its training takes detres's training time, from a
  one-epoch calibration run (its MultiStepLR drops at 80% and 94% of the epochs, as the
  recipe's steps do); its learning rate follows its own rule, 0.02 per 16 images (train.py's
  docstring: 0.02 for 8 GPUs x 2 images), so 0.01 at the recipe's batch of 8 (at detres's
  0.02 it diverged to a NaN loss in its first epoch on raccoon, at 0.01 in its second, after
  its 19-iteration warm-up; ``--tv-lr 0.005`` trained);
- shims for names its older files use that this torchvision renamed (``ConvertImageDtype``,
  ``ToTensor``, ``torch._six``), and a stand-in ``coco_eval`` module if none is present.

torchvision's ResNet-18 cannot be narrowed (its BasicBlock refuses ``width_per_group != 64``)
and its FPN and box head have fixed widths (256, 1024), so the equal-time rows compare each
toolkit's ResNet-18 FPN as its users get it; ``--equal-arch-iters N`` adds a throughput row
for detres at torchvision's widths (width 64, FPN 256, box head 1024), N iterations, beside
the calibration epoch of torchvision. ``--detres-out`` reuses a finished detres run of the
same set and recipe instead of training it again.

detres trains with ``configs/small_real.yaml`` in fp32 (``train.amp=none``: what a CPU
without native bf16 gets; torchvision's ``--amp`` is CUDA only). Prints the CPU line and a
table (mAP@.5, mAP@[.5,.95], training images/s, training and scoring time), and writes
OUT/compare.json and OUT/compare.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TV_MODEL = "detres_r18_fpn"


# ------------------------------------------------------------------ the torchvision side


def _shim_reference(reference: Path) -> None:
    """Make the reference's files importable on this torchvision (names only)."""
    import torch

    if "torch._six" not in sys.modules and not hasattr(torch, "_six"):
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        sys.modules["torch._six"] = six
    if not (reference / "coco_eval.py").is_file():
        stub = types.ModuleType("coco_eval")

        class CocoEvaluator:  # the per-epoch evaluation is skipped; see the docstring
            def __init__(self, *a, **k):
                raise RuntimeError("coco_eval.py is not in the reference copy")

        stub.CocoEvaluator = CocoEvaluator
        sys.modules["coco_eval"] = stub
    import transforms as T  # the reference's

    if not hasattr(T, "ConvertImageDtype"):
        T.ConvertImageDtype = lambda dtype: T.ToDtype(dtype, scale=True)
    if not hasattr(T, "ToTensor"):
        T.ToTensor = lambda: T.Compose([T.PILToTensor(), T.ConvertImageDtype(torch.float)])


def build_tv_model(spec: dict, num_classes: int):
    """torchvision's FasterRCNN with the recipe's ResNet-18-FPN sizes, from scratch."""
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                   norm_layer=nn.BatchNorm2d, trainable_layers=5)
    anchors = AnchorGenerator(tuple(tuple(s) for s in spec["anchor_sizes"]),
                              (tuple(spec["aspect_ratios"]),) * len(spec["anchor_sizes"]))
    return FasterRCNN(
        backbone, num_classes=num_classes, min_size=tuple(spec["min_size_train"]),
        max_size=spec["max_size_train"], rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=spec["pre_nms_train"],
        rpn_post_nms_top_n_train=spec["post_nms_train"],
        rpn_pre_nms_top_n_test=spec["pre_nms_test"], rpn_post_nms_top_n_test=spec["post_nms_test"],
        rpn_batch_size_per_image=spec["rpn_batch"], box_batch_size_per_image=spec["roi_batch"],
        box_detections_per_img=spec["detections"], box_score_thresh=spec["score_thresh"])


def tv_worker(argv: list[str]) -> None:
    """Run the reference's train.main with the adjustments of the module docstring."""
    reference, spec_file, rest = Path(argv[0]), Path(argv[1]), argv[2:]
    spec = json.loads(spec_file.read_text())
    _shim_reference(reference)
    import torchvision.models.detection as tvd
    import train  # the reference's train.py

    tvd.__dict__[TV_MODEL] = lambda pretrained=False, num_classes=91, **_: build_tv_model(
        spec, num_classes)
    times: list[float] = []
    one_epoch = train.train_one_epoch

    def timed_epoch(*a, **k):
        t0 = time.perf_counter()
        out = one_epoch(*a, **k)
        times.append(time.perf_counter() - t0)
        return out

    train.train_one_epoch = timed_epoch
    train.evaluate = lambda *a, **k: None
    args = train.get_args_parser().parse_args(rest)
    train.main(args)
    Path(args.output_dir, "epoch_times.json").write_text(json.dumps(times))


# ------------------------------------------------------------------ data in COCO layout


def write_coco_layout(src, out: Path, split: str) -> dict[int, object]:
    """``src`` as ``out/{split}2017`` (links) and ``out/annotations/instances_{split}2017.json``;
    returns COCO image id -> detres image id."""
    img_dir = out / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns, back = [], [], {}
    for i, r in enumerate(src.records, start=1):
        name = f"{i:06d}{Path(r['file']).suffix.lower()}"
        link = img_dir / name
        if not link.exists():
            link.symlink_to(Path(r["file"]).resolve())
        images.append({"id": i, "file_name": name, "height": r["height"], "width": r["width"]})
        back[i] = r["image_id"]
        cats = src.to_category_ids(r["classes"]).tolist()
        for box, cat, crowd in zip(r["boxes"].tolist(), cats, r["iscrowd"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(cat),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(crowd),
                         "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    cats = [{"id": int(c), "name": n} for c, n in zip(src.category_ids, src.class_names,
                                                      strict=True)]
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return back


def score_tv(model_dir: Path, spec: dict, val_src, num_classes: int) -> dict:
    """The reference's final weights on the test images, at the recipe's test size, scored by
    detres's evaluator for the set."""
    import argparse as ap

    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    from detres.engine.det import build_det_evaluator

    torch.serialization.add_safe_globals([ap.Namespace])
    ckpt = torch.load(model_dir / "checkpoint.pth", map_location="cpu", weights_only=True)
    model = build_tv_model(spec, num_classes)
    model.load_state_dict(ckpt["model"])
    model.eval()
    model.transform.min_size = (spec["min_size_test"],)
    model.transform.max_size = spec["max_size_test"]
    evaluator = build_det_evaluator(val_src)
    evaluator.reset()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for r in val_src.records:
            img = pil_to_tensor(Image.open(r["file"]).convert("RGB")).float() / 255
            d = model([img])[0]
            evaluator.process([{"image_id": r["image_id"], "boxes": d["boxes"],
                                "scores": d["scores"], "labels": d["labels"]}])
    elapsed = time.perf_counter() - t0
    metrics = evaluator.evaluate()
    metrics["inference_s_per_image"] = elapsed / len(val_src.records)
    return metrics


# ------------------------------------------------------------------ the comparison


def detres_iter_s(run_dir: Path) -> float:
    """Mean seconds per iteration of a detres run, the first logged window (loader start,
    warm-up) left out when there are others."""
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
            if ln.strip()]
    per_iter = [r["time_per_iter"] for r in rows if "time_per_iter" in r]
    if not per_iter:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'}: no time_per_iter rows")
    steady = per_iter[1:] or per_iter
    return sum(steady) / len(steady)


def run_detres(cfg_name: str, out: Path, overrides: list[str], log: Path) -> float:
    cmd = [sys.executable, str(REPO / "tools" / "train_det.py"), "--cfg", cfg_name,
           "--out-dir", str(out), *overrides]
    t0 = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    return time.perf_counter() - t0


def spec_of(cfg) -> dict:
    m = cfg.model
    return {"anchor_sizes": m.anchors.sizes, "aspect_ratios": m.anchors.aspect_ratios,
            "min_size_train": m.input.min_size_train, "max_size_train": m.input.max_size_train,
            "min_size_test": m.input.min_size_test, "max_size_test": m.input.max_size_test,
            "pre_nms_train": m.rpn.pre_nms_topk_train, "post_nms_train": m.rpn.post_nms_topk_train,
            "pre_nms_test": m.rpn.pre_nms_topk_test, "post_nms_test": m.rpn.post_nms_topk_test,
            "rpn_batch": m.rpn.batch_size_per_image, "roi_batch": m.roi_heads.batch_size_per_image,
            "detections": m.roi_heads.detections_per_image,
            "score_thresh": m.roi_heads.score_thresh_test}


def run_tv(reference: Path, spec_file: Path, data: Path, out: Path, *, epochs: int, batch: int,
           lr: float, workers: int, log: Path) -> float:
    steps = sorted({max(1, round(0.8 * epochs)), max(1, round(0.94 * epochs))})
    cmd = [sys.executable, __file__, "--_tv-worker", str(reference), str(spec_file),
           "--dataset", "coco", "--data-path", str(data), "--model", TV_MODEL, "--device", "cpu",
           "-b", str(batch), "--lr", str(lr), "--epochs", str(epochs), "-j", str(workers),
           "--lr-steps", *map(str, steps), "--output-dir", str(out), "--print-freq", "10"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(reference.resolve()), os.environ.get("PYTHONPATH", "")])}  # its flat imports
    t0 = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    return time.perf_counter() - t0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_tv-worker":
        tv_worker(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True,
                   help="a copy of pytorch/vision's references/detection")
    p.add_argument("--set", required=True, help="FORMAT:PATH of the set, e.g. voc:data/raccoon")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="held-out fraction of a folder without image sets (default 0.2)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--cfg", default="small_real.yaml")
    p.add_argument("--out", type=Path, default=Path("output/compare_torchvision"))
    p.add_argument("--detres-out", type=Path, default=None,
                   help="a finished detres run of this set and recipe to reuse")
    p.add_argument("--tv-lr", type=float, default=None,
                   help="torchvision's learning rate (default: 0.02 / 16 x batch, its rule)")
    p.add_argument("--equal-arch-iters", type=int, default=0,
                   help="also time detres at torchvision's widths for N iterations")
    p.add_argument("overrides", nargs="*", help="detres config overrides (both sides follow)")
    args = p.parse_args()
    from detres.config import load_config
    from detres.data.det_loader import build_det_sources
    from detres.utils.device import cpu_line

    fmt, path = args.set.split(":", 1)
    path = str(Path(path).resolve())
    frac = f", val_fraction: {args.val_fraction}" if args.val_fraction else ""
    data = [f"data.train=[{{format: {fmt}, path: {path}, split: {args.train_split}{frac}}}]",
            f"data.test=[{{format: {fmt}, path: {path}, split: {args.test_split}{frac}}}]"]
    overrides = [*data, "train.amp=none", *args.overrides]
    cfg = load_config(args.cfg, overrides)
    train_src = build_det_sources(cfg, train=True)[0]
    for t in cfg.data.test:
        t.classes = list(train_src.class_names)
    val_src = build_det_sources(cfg, train=False)[0]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    coco_dir = out / "coco_layout"
    write_coco_layout(train_src, coco_dir, "train")
    write_coco_layout(val_src, coco_dir, "val")
    spec = spec_of(cfg)
    spec_file = out / "tv_spec.json"
    spec_file.write_text(json.dumps(spec))
    cpu = cpu_line()
    print(f"CPU: {cpu}\n{train_src.summary()}\n{val_src.summary()}", flush=True)

    # detres, the recipe as a user runs it
    if args.detres_out:
        det_out, det_wall = args.detres_out.resolve(), float("nan")
        ran = load_config(str(det_out / "config.yaml"))
        if spec_of(ran) != spec or ran.solver.batch_size != cfg.solver.batch_size:
            raise SystemExit(f"{det_out}: its config.yaml differs from --cfg {args.cfg} "
                             "with these overrides in sizes or batch")
        max_iter = ran.solver.max_iter
    else:
        det_out, max_iter = out / "detres", cfg.solver.max_iter
        det_wall = run_detres(args.cfg, det_out, overrides, out / "detres.log")
    det_metrics = json.loads((det_out / "metrics.json").read_text())
    it_s = detres_iter_s(det_out)
    det_train_s = it_s * max_iter
    det_ips = cfg.solver.batch_size / it_s
    print(f"detres: {det_train_s:.0f} s training, {det_ips:.2f} images/s", flush=True)

    # torchvision: calibrate the epoch time, then train for detres's training time
    num_classes = 91  # train.py's "coco" dataset (the unused classes only widen the last layer)
    batch, workers = cfg.solver.batch_size, cfg.data.num_workers
    lr = args.tv_lr if args.tv_lr is not None else 0.02 / 16 * batch
    cal = out / "tv_calibration"
    run_tv(args.reference, spec_file, coco_dir, cal, epochs=1, batch=batch, lr=lr,
           workers=workers, log=out / "tv_calibration.log")
    epoch_s = json.loads((cal / "epoch_times.json").read_text())[-1]
    tv_n = len(json.loads((coco_dir / "annotations" / "instances_train2017.json").read_text())
               ["images"])
    tv_cal_ips = (tv_n // batch) * batch / epoch_s
    epochs = max(2, math.floor(det_train_s / epoch_s + 0.5))
    print(f"torchvision: {epoch_s:.1f} s per epoch -> {epochs} epochs", flush=True)
    tv_out = out / "torchvision"
    tv_wall = run_tv(args.reference, spec_file, coco_dir, tv_out, epochs=epochs, batch=batch,
                     lr=lr, workers=workers, log=out / "torchvision.log")
    times = json.loads((tv_out / "epoch_times.json").read_text())
    tv_train_s = sum(times)
    import torch

    tv_ips = (tv_n // batch) * batch * len(times) / tv_train_s
    tv_metrics = score_tv(tv_out, spec, val_src, num_classes)
    table = {
        "cpu": cpu, "set": args.set, "train_images": len(train_src.records),
        "test_images": len(val_src.records), "threads": torch.get_num_threads(),
        "detres": {"mAP@.5": det_metrics["mAP@.5"], "mAP@[.5,.95]": det_metrics["mAP@[.5,.95]"],
                   "train_s": det_train_s, "wall_s": det_wall, "images_per_s": det_ips,
                   "iterations": max_iter, "lr": cfg.solver.base_lr,
                   "inference_s_per_image": det_metrics.get("inference_s_per_image")},
        "torchvision": {"mAP@.5": tv_metrics["mAP@.5"], "mAP@[.5,.95]": tv_metrics["mAP@[.5,.95]"],
                        "train_s": tv_train_s, "wall_s": tv_wall, "images_per_s": tv_ips,
                        "epochs": len(times), "lr": lr,
                        "inference_s_per_image": tv_metrics["inference_s_per_image"]},
    }
    wide = ["model.backbone.width_per_group=64", "model.fpn.out_channels=256",
            "model.roi_heads.fc_dim=1024"]
    if args.equal_arch_iters:
        n = args.equal_arch_iters
        eq_out = out / "detres_equal_arch"
        run_detres(args.cfg, eq_out, [*overrides, *wide, f"solver.max_iter={n}",
                                      f"solver.steps=[{n + 1}]", "train.log_period=5",
                                      "train.checkpoint_period=0"], out / "detres_equal_arch.log")
        table["equal_arch"] = {"widths": wide, "iterations": n,
                               "detres_images_per_s": batch / detres_iter_s(eq_out),
                               "torchvision_images_per_s": tv_cal_ips}
    (out / "compare.json").write_text(json.dumps(table, indent=1))
    lines = [f"CPU: {cpu}", "",
             "| | mAP@.5 | mAP@[.5,.95] | training | images/s (train) | s/image (test) |",
             "|---|---|---|---|---|---|"]
    for k in ("detres", "torchvision"):
        v = table[k]
        lines.append(f"| {k} | {100 * v['mAP@.5']:.1f} | {100 * v['mAP@[.5,.95]']:.1f} | "
                     f"{v['train_s'] / 60:.1f} min | {v['images_per_s']:.2f} | "
                     f"{v['inference_s_per_image']:.3f} |")
    if "equal_arch" in table:
        e = table["equal_arch"]
        lines += ["", f"At torchvision's widths (ResNet-18 width 64, FPN 256, box head 1024): "
                  f"detres {e['detres_images_per_s']:.2f} images/s ({e['iterations']} "
                  f"iterations), torchvision {e['torchvision_images_per_s']:.2f} images/s "
                  "(its calibration epoch)"]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
