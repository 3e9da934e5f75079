"""Time the evaluators on full-size synthetic cases, generated in memory.

  VOC07 test:  4,952 images, 20 classes, ~3 objects per image (~2.4 not difficult),
               100 detections per image; both AP metrics at all 10 IoU thresholds.
  COCO val2017: 5,000 images, 80 categories, ~7.3 objects per image (1% crowd),
               100 detections per image; loadRes + evaluate + accumulate + summarize,
               pycocotools (the reference) and faster-coco-eval (the default) side by side.

    python tools/bench_eval.py [--skip-coco] [--skip-voc] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detres.evaluation import VOCEvaluator
from detres.evaluation.coco import (
    check_coco_results,
    faster_ground_truth,
    predictions_to_coco_results,
    quiet_pycocotools,
    run_cocoeval,
)
from detres.utils.device import cpu_line

# The 80 category ids of COCO (1..90 with gaps), so ids are non-contiguous as in the real set.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds: on a shared machine the CPU time is the steadier figure."""
    return time.perf_counter(), time.process_time()


def fmt(a: tuple[float, float], b: tuple[float, float]) -> str:
    return f"{b[0] - a[0]:6.2f} s wall ({b[1] - a[1]:6.2f} s CPU)"


def make_case(rng: np.random.Generator, n_img: int, k: int, objs: float, size: tuple[int, int],
              dets_per_image: int = 100) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Ground truth (per image: boxes, labels 0..k-1) and detections: 4 jittered copies per
    object (mostly the right class, scores rising with overlap), the rest clutter."""
    w, h = size
    n_gt = rng.poisson(objs - 1, n_img) + 1
    n_gt = np.minimum(n_gt, dets_per_image // 4)
    img = np.repeat(np.arange(n_img), n_gt)
    side = np.exp(rng.uniform(np.log(8), np.log(min(w, h) * 0.9), (len(img), 2)))
    xy = rng.uniform(0, 1, (len(img), 2)) * ([w, h] - side)
    gt = np.concatenate([xy, xy + side], 1).round(1)
    cls = rng.integers(0, k, len(img))
    # Detections near objects.
    j_img, j_gt = np.repeat(img, 4), np.repeat(gt, 4, axis=0)
    noise = rng.normal(0, 1, j_gt.shape) * np.tile(np.repeat(side, 4, axis=0), (1, 2)) * \
        rng.uniform(0.02, 0.3, (len(j_gt), 1))
    j_box = j_gt + noise
    wrong = rng.integers(0, k, len(j_box))
    j_cls = np.where(rng.random(len(j_box)) < 0.85, np.repeat(cls, 4), wrong)
    j_score = np.clip(1 - np.abs(noise).mean(1) / np.repeat(side, 4, axis=0).mean(1) * 3, 0, 1) \
        * rng.uniform(0.5, 1, len(j_box))
    # Clutter up to dets_per_image per image.
    n_rand = dets_per_image - 4 * n_gt
    r_img = np.repeat(np.arange(n_img), n_rand)
    r_side = np.exp(rng.uniform(np.log(8), np.log(min(w, h) * 0.9), (len(r_img), 2)))
    r_xy = rng.uniform(0, 1, (len(r_img), 2)) * ([w, h] - r_side)
    r_box = np.concatenate([r_xy, r_xy + r_side], 1)
    d_img = np.concatenate([j_img, r_img])
    d_box = np.concatenate([j_box, r_box])
    d_box[:, 2:] = np.maximum(d_box[:, 2:], d_box[:, :2] + 1)
    d_cls = np.concatenate([j_cls, rng.integers(0, k, len(r_img))])
    d_score = np.concatenate([j_score, rng.uniform(0, 0.6, len(r_img))])
    order = np.argsort(d_img, kind="stable")
    d_img, d_box, d_cls, d_score = d_img[order], d_box[order], d_cls[order], d_score[order]
    cut = np.cumsum(np.bincount(d_img, minlength=n_img))[:-1]
    preds = [{"image_id": i, "boxes": b, "scores": s, "labels": c} for i, (b, s, c) in
             enumerate(zip(np.split(d_box, cut), np.split(d_score, cut), np.split(d_cls, cut),
                           strict=True))]
    gcut = np.cumsum(n_gt)[:-1]
    gts = [np.concatenate([b, c[:, None]], 1) for b, c in
           zip(np.split(gt, gcut), np.split(cls, gcut), strict=True)]
    return gts, preds


def bench_voc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gts, preds = make_case(rng, 4952, 20, 3.0, (500, 375))
    gt = {f"{i:06d}": {"boxes": g[:, :4] + 1, "labels": g[:, 4].astype(int) + 1,
                       "difficult": rng.random(len(g)) < 0.2} for i, g in enumerate(gts)}
    for p in preds:
        p["image_id"], p["labels"], p["boxes"] = f"{p['image_id']:06d}", p["labels"] + 1, \
            p["boxes"] + 1
    n_det = sum(len(p["scores"]) for p in preds)
    print(f"VOC07-test-sized: {len(gt)} images, {sum(len(g) for g in gts)} objects, "
          f"{n_det} detections")
    for use07 in (True, False):
        ev = VOCEvaluator(gt=gt, use_07_metric=use07)
        t0 = clock()
        ev.process(preds)
        t1 = clock()
        r = ev.evaluate()
        t2 = clock()
        print(f"  {r['metric']:>5}: process {fmt(t0, t1)}, evaluate (10 IoU thresholds) "
              f"{fmt(t1, t2)}   mAP@.5 {r['mAP@.5']:.3f}  mAP@[.5,.95] {r['mAP@[.5,.95]']:.3f}")


def coco_case(seed: int) -> tuple[COCO, list[dict[str, Any]]]:
    """A val2017-sized case: 5,000 images, ~36.5k objects (1% crowd), 500k detections."""
    rng = np.random.default_rng(seed)
    gts, preds = make_case(rng, 5000, 80, 7.3, (640, 480))
    images = [{"id": i + 1, "width": 640, "height": 480} for i in range(len(gts))]
    anns = [{"id": 0, "image_id": i + 1, "category_id": COCO_IDS[int(c)],
             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
             "iscrowd": int(rng.random() < 0.01)}
            for i, g in enumerate(gts) for x1, y1, x2, y2, c in g.tolist()]
    for n, a in enumerate(anns):
        a["id"] = n + 1
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": anns,
                       "categories": [{"id": c, "name": f"c{c}"} for c in COCO_IDS]}
    with quiet_pycocotools():
        coco_gt.createIndex()
    for p in preds:
        p["image_id"] += 1
        p["labels"] = np.asarray(COCO_IDS)[p["labels"]]
    results = predictions_to_coco_results(preds)
    check_coco_results(results, coco_gt)
    return coco_gt, results


def bench_coco(seed: int, backends: list[str]) -> None:
    """Each backend on the same case, one after the other, twice (A B A B)."""
    coco_gt, results = coco_case(seed)
    print(f"COCO-val2017-sized: {len(coco_gt.imgs)} images, {len(coco_gt.anns)} objects, "
          f"{len(results)} detections")
    totals: dict[str, list[float]] = {b: [] for b in backends}
    stats: dict[str, list[float]] = {}
    for rnd in range(2):
        for backend in backends:
            t0 = clock()
            gt = coco_gt if backend == "pycocotools" else faster_ground_truth(coco_gt)
            t1 = clock()
            ev = run_cocoeval(coco_gt, results, backend=backend, faster_gt=gt
                              if backend == "faster_coco_eval" else None)
            t2 = clock()
            totals[backend].append(t2[0] - t0[0])
            stats[backend] = [float(v) for v in list(ev.stats)[:12]]
            print(f"  round {rnd + 1} {backend:<17} ground truth {fmt(t0, t1)}; loadRes + "
                  f"evaluate + accumulate + summarize {fmt(t1, t2)}")
    for backend in backends:
        s = stats[backend]
        print(f"  {backend:<17} best total {min(totals[backend]):6.2f} s   AP {s[0]:.6f}  "
              f"AP50 {s[1]:.6f}  AR100 {s[8]:.6f}")
    if len(backends) == 2:
        ratio = min(totals[backends[0]]) / min(totals[backends[1]])
        same = max(abs(a - b) for a, b in zip(*stats.values(), strict=True))
        print(f"  {backends[1]} is {ratio:.1f}x faster than {backends[0]}; the 12 numbers "
              f"differ by at most {same:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--skip-voc", action="store_true")
    p.add_argument("--skip-coco", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coco-backends", nargs="+", default=["pycocotools", "faster_coco_eval"],
                   choices=["pycocotools", "faster_coco_eval"])
    args = p.parse_args()
    print(f"CPU: {cpu_line()}")
    if not args.skip_voc:
        bench_voc(args.seed)
    if not args.skip_coco:
        bench_coco(args.seed, args.coco_backends)


if __name__ == "__main__":
    main()
