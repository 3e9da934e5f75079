#!/usr/bin/env python
"""A COCO-train2017-sized set, and what loading it costs: start-up, main-process memory and
the memory of each DataLoader worker as training reads the records.

    python tools/dev/coco_scale.py make /tmp/coco_scale          # ~275 MB of JSON, 118k links
    python tools/dev/coco_scale.py measure /tmp/coco_scale [--workers 4] [--iters 600]

``make`` writes ``annotations/instances_train2017.json`` with COCO train2017's counts (118,287
images, 862,278 boxes with polygons, 80 classes) and ``train2017/``, one hard link per image
to a few small JPEGs of the sizes the JSON says.

``measure`` runs the demo recipe's training loader over that set (``--cfg demo.yaml`` with
``data.train`` the COCO spelling of the docs, the tools' allocator set-up) in this process,
loading alone (no model: the model's memory is not what grows), and prints, beside the CPU
line: seconds from launch to the first batch, the main process's RSS then, and each worker's
USS (private memory, ``/proc/PID/smaps_rollup``) at iterations 100, 600 and ``--iters``.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before the heavy imports: "from launch"

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

N_IMAGES, N_BOXES, N_CLASSES = 118_287, 862_278, 80
SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (427, 640), (640, 360)]


def make(root: Path, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    base = root / "base"
    base.mkdir(exist_ok=True)
    for k, (w, h) in enumerate(SIZES):
        arr = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(arr).resize((w, h)).save(base / f"{k}.jpg", quality=80)
    imgs_dir = root / "train2017"
    imgs_dir.mkdir(exist_ok=True)
    images, anns = [], []
    per_image = rng.multinomial(N_BOXES, np.full(N_IMAGES, 1 / N_IMAGES))
    # a long-tailed class distribution, as COCO's (person in ~45% of images)
    freq = 1.0 / np.arange(1, N_CLASSES + 1) ** 0.8
    freq /= freq.sum()
    ann_id = 1
    for i in range(N_IMAGES):
        k = int(rng.integers(len(SIZES)))
        w, h = SIZES[k]
        name = f"{i + 1:012d}.jpg"
        dst = imgs_dir / name
        if not dst.exists():
            os.link(base / f"{k}.jpg", dst)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w,
                       "license": 1, "coco_url": f"http://images.cocodataset.org/{name}",
                       "date_captured": "2013-11-14 16:28:13"})
        n = int(per_image[i])
        cats = rng.choice(N_CLASSES, n, p=freq) + 1
        xy = rng.uniform(0, 0.8, (n, 2)) * [w, h]
        wh = rng.uniform(0.02, 0.2, (n, 2)) * [w, h]
        for c, (x, y), (bw, bh) in zip(cats.tolist(), xy.tolist(), wh.tolist(), strict=True):
            t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            poly = np.stack([x + bw / 2 * (1 + np.cos(t)), y + bh / 2 * (1 + np.sin(t))], 1)
            anns.append({"id": ann_id, "image_id": i + 1, "category_id": int(c),
                         "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                         "area": round(bw * bh * 0.78, 2), "iscrowd": 0,
                         "segmentation": [np.round(poly.ravel(), 2).tolist()]})
            ann_id += 1
    cats = [{"id": c, "name": f"class{c:02d}", "supercategory": "thing"}
            for c in range(1, N_CLASSES + 1)]
    data = {"info": {"description": "COCO-train2017-sized synthetic set"}, "licenses": [],
            "images": images, "annotations": anns, "categories": cats}
    out = root / "annotations" / "instances_train2017.json"
    out.write_text(json.dumps(data))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB): {len(images)} images, "
          f"{len(anns)} boxes, {N_CLASSES} classes; {imgs_dir}")


def private_mb(pid: int) -> float:
    """USS: the process's private pages (Private_Clean + Private_Dirty), MB."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(root: Path, workers: int, iters: int, batch: int) -> None:
    from detres.config import load_config
    from detres.data.det_loader import build_det_train_loader
    from detres.utils.device import cpu_line, tune_cpu_allocator
    from detres.utils.logging import setup_logging

    setup_logging()
    tune_cpu_allocator()  # as the tools set the process up
    cfg = load_config("demo.yaml", [
        f"data.train=[{{format: coco, path: {root}/annotations/instances_train2017.json, "
        f"images: {root}/train2017}}]", f"data.num_workers={workers}",
        f"model.num_classes={N_CLASSES}", "data.root=/tmp/coco_scale_data_root"])
    loader = build_det_train_loader(cfg, batch)
    it = iter(loader)
    next(it)
    t_first = time.perf_counter() - T0
    main_rss = rss_mb()
    pids = [w.pid for w in it._workers]  # noqa: SLF001
    marks = sorted({min(100, iters), min(600, iters), iters})
    uss: dict[int, list[float]] = {}
    for i in range(1, iters + 1):
        if i in marks:
            uss[i] = [private_mb(p) for p in pids]
        if i < iters:
            next(it)
    print(cpu_line())
    print(f"python {sys.version.split()[0]}, {workers} workers, batch {batch}")
    print(f"launch -> first batch: {t_first:.1f} s; main process RSS then: {main_rss:.0f} MB")
    for i in marks:
        print(f"worker USS at iteration {i}: " + ", ".join(f"{u:.0f}" for u in uss[i]) + " MB")
    for a, b in zip(marks, marks[1:], strict=False):
        grow = [y - x for x, y in zip(uss[a], uss[b], strict=True)]
        print(f"growth {a} -> {b}: " + ", ".join(f"{g:+.1f}" for g in grow) + " MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["make", "measure"])
    p.add_argument("root", type=Path)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    if a.what == "make":
        make(a.root)
    else:
        measure(a.root, a.workers, a.iters, a.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
