"""The embedded detection demo set: textured shapes on cluttered backgrounds, generated
deterministically (numpy + cv2, fixed seed) under ``<root>/demo_det/`` on first use.

Six classes (circle, square, triangle, star, ring, cross) with random colours, textures,
aspect ratios and rotations; 0-6 objects per image of about 240-320 px, small / medium / large
in the COCO sense (box area < 32², < 96², larger), stacked with at most 30% of any object
hidden by the ones drawn over it, about 3% of images empty; backgrounds are colour gradients
with blurred blobs and lines under the objects, and pixel noise over everything. Every box is
the tight box of the object's visible pixels (object edges are not anti-aliased), so it is
exact.

Written in two layouts describing the same boxes and images:

- COCO: ``annotations/instances_{train,val}.json`` (category ids 1, 3, 5, ... so readers must
  map them to contiguous labels) with images in ``images/``;
- VOC: ``VOCdevkit/VOCdemo/{Annotations,JPEGImages,ImageSets/Main/{train,val,trainval}.txt}``
  plus ``classes.txt``; objects with less than 80% of their area visible are marked
  ``difficult`` there (the COCO copy has no such flag).

The set is written to a temporary directory and renamed into place, with ``manifest.json``
(version, seed, counts) written last; a missing or different manifest means regeneration;
concurrent callers (torchrun ranks) wait for one writer
(:func:`detres.utils.io.build_directory_once`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import cv2
import numpy as np

from detres.data.catalog import GENERATORS
from detres.utils.io import build_directory_once

DEMO_VERSION = 2  # bump whenever the generated files change
DEMO_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
DEMO_CATEGORY_IDS: tuple[int, ...] = (1, 3, 5, 7, 9, 11)
DEFAULT_COUNTS = {"train": 500, "val": 100}
DEFAULT_SEED = 0
MAX_HIDDEN = 0.30  # at most this fraction of an object may be covered by later objects
DIFFICULT_BELOW = 0.80  # VOC copy: visible fraction under this -> difficult
_SPLIT_KEY = {"train": 0, "val": 1, "trainval": 2, "test": 3}
_ID_STRIDE = 1_000_000  # COCO image id = split key * stride + index + 1


def _unit_polygon(kind: str) -> list[np.ndarray]:
    """Outline(s) in [-1, 1]²; for the ring, (outer, hole)."""
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    ellipse = np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "circle":
        return [ellipse]
    if kind == "ring":
        return [ellipse, 0.5 * ellipse]
    if kind == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)]
    if kind == "triangle":
        return [np.array([[0, -1], [1, 1], [-1, 1]], float)]
    if kind == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if kind == "cross":
        q = 0.34
        return [np.array([[-q, -1], [q, -1], [q, -q], [1, -q], [1, q], [q, q], [q, 1], [-q, 1],
                          [-q, q], [-1, q], [-1, -q], [-q, -q]], float)]
    raise ValueError(f"unknown demo shape {kind!r}")


def _shape_mask(kind: str, hw: tuple[int, int], center: tuple[float, float],
                size: tuple[float, float], angle: float) -> np.ndarray:
    """Boolean mask of one shape (no anti-aliasing, so the mask is exactly what is drawn)."""
    mask = np.zeros(hw, np.uint8)
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    rot = np.array([[c, -s], [s, c]])
    for k, poly in enumerate(_unit_polygon(kind)):
        pts = (poly * (np.asarray(size) / 2)) @ rot.T + np.asarray(center)
        cv2.fillPoly(mask, [np.round(pts * 8).astype(np.int32)], 0 if k else 1, cv2.LINE_8, 3)
    return mask.astype(bool)


def _layout(seed: int, split: str, index: int) -> dict[str, Any]:
    """Image size and objects (label, full mask), bottom to top; geometry only."""
    rng = np.random.default_rng([seed, _SPLIT_KEY[split], index, 0])
    h, w = (int(v) for v in rng.integers(240, 321, size=2))
    n = 0 if rng.random() < 0.03 else int(rng.integers(1, 7))
    top = np.full((h, w), -1, np.int16)  # index of the object seen at each pixel
    objects: list[dict[str, Any]] = []
    for _ in range(n):
        label = int(rng.integers(1, len(DEMO_CLASSES) + 1))
        kind = DEMO_CLASSES[label - 1]
        for _try in range(25):
            u = rng.random()
            if u < 0.2:
                side = rng.uniform(18, 28)
            elif u < 0.75:
                side = rng.uniform(36, 88)
            else:
                side = rng.uniform(104, min(150, 0.62 * min(h, w)))
            ar = rng.uniform(0.75, 1.33)
            sw, sh = side * np.sqrt(ar), side / np.sqrt(ar)
            angle = float(rng.uniform(-30, 30)) if kind not in ("circle", "ring") else 0.0
            r = 0.5 * np.hypot(sw, sh) + 2
            if 2 * r >= min(h, w):
                continue
            center = (float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r)))
            m = _shape_mask(kind, (h, w), center, (sw, sh), angle)
            if not m.any():
                continue
            ok = all(np.count_nonzero((top == j) & ~m) >= (1 - MAX_HIDDEN) * o["area"]
                     for j, o in enumerate(objects))
            if ok:
                top[m] = len(objects)
                ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
                objects.append({"label": label, "mask": m, "area": int(m.sum()),
                                "bounds": (int(xs[0]), int(ys[0]), int(xs[-1]) + 1,
                                           int(ys[-1]) + 1)})
                break
    for j, o in enumerate(objects):
        vis = top == j
        ys, xs = np.nonzero(vis.any(1))[0], np.nonzero(vis.any(0))[0]
        # tight box of the visible pixels: (x1, y1, x2, y2) with x2, y2 exclusive
        o["box"] = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]
        o["visible"] = float(np.count_nonzero(vis)) / o["area"]
    return {"height": h, "width": w, "objects": objects}


def _hsv(rng: np.random.Generator, s: tuple[int, int], v: tuple[int, int]) -> np.ndarray:
    px = np.array([[[rng.integers(0, 180), rng.integers(*s), rng.integers(*v)]]], np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _paint(seed: int, split: str, index: int, layout: dict[str, Any]) -> np.ndarray:
    """The BGR uint8 image for a layout: cluttered background, then the objects. (The
    background is computed channel-planar: numpy is slow on a trailing axis of 3.)"""
    rng = np.random.default_rng([seed, _SPLIT_KEY[split], index, 1])
    h, w = layout["height"], layout["width"]
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    a = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(a) + yy * np.sin(a)  # (h, w) linear ramp
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c0, c1 = _hsv(rng, (0, 70), (60, 200)), _hsv(rng, (0, 70), (60, 200))
    img = c0[:, None, None] + (c1 - c0)[:, None, None] * t[None]  # (3, h, w)
    # soft blobs: composited at 1/4 resolution (they are blurred anyway), blended in once
    q = 4
    hq, wq = -(-h // q), -(-w // q)
    col = np.zeros((3, hq, wq), np.float32)  # premultiplied colour
    alpha = np.zeros((hq, wq), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        blob = np.zeros((hq, wq), np.float32)
        cv2.ellipse(blob, (int(rng.integers(0, w)) // q, int(rng.integers(0, h)) // q),
                    (int(rng.integers(10, 60)) // q, int(rng.integers(10, 60)) // q),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        ai = 0.45 * cv2.GaussianBlur(blob, (0, 0), float(rng.uniform(6, 14)) / q)
        col = col * (1 - ai) + ai * _hsv(rng, (30, 160), (40, 230))[:, None, None]
        alpha = alpha + ai * (1 - alpha)
    up = [cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in (*col, alpha)]
    planes = [np.clip(img[c] * (1 - up[3]) + up[c] + 0.5, 0, 255).astype(np.uint8)
              for c in range(3)]
    out = cv2.merge(planes)  # (h, w, 3) uint8 BGR
    for _ in range(int(rng.integers(3, 9))):  # thin lines
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(out, p1, p2, [int(v) for v in _hsv(rng, (0, 160), (30, 230))],
                 int(rng.integers(1, 3)), cv2.LINE_AA)
    kernel = np.ones((3, 3), np.uint8)
    for o in layout["objects"]:
        colour = _hsv(rng, (140, 256), (150, 256))
        style, period = int(rng.integers(0, 4)), int(rng.integers(4, 9))
        d = rng.uniform(0, np.pi)
        x1, y1, x2, y2 = o["bounds"]  # the full mask's box (a window, for speed)
        m = o["mask"][y1:y2, x1:x2]
        px, py = xx[:, x1:x2], yy[y1:y2, :]
        if style == 1:  # stripes
            f = (px * np.cos(d) + py * np.sin(d)) // period % 2 == 0
        elif style == 2:  # checker
            f = (px // period + py // period) % 2 == 0
        elif style == 3:  # speckle
            f = rng.random(m.shape) < 0.3
        else:
            f = np.zeros(m.shape, bool)
        mpad = np.pad(m, 1).astype(np.uint8)  # so the image border counts as an edge too
        edge = m & ~cv2.erode(mpad, kernel)[1:-1, 1:-1].astype(bool)
        win = out[y1:y2, x1:x2]
        win[m & ~f] = np.round(colour).astype(np.uint8)
        win[m & f] = np.round(0.7 * colour).astype(np.uint8)
        win[edge] = np.round(0.55 * colour).astype(np.uint8)
    noisy = out.astype(np.int16)
    noisy += rng.integers(-8, 9, noisy.shape, dtype=np.int16)  # sensor-like noise
    return np.clip(noisy, 0, 255).astype(np.uint8)


def demo_annotations(split: str, n: int, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Per image: ``height, width, objects [{label, box (x1, y1, x2, y2), visible}]`` without
    drawing or writing anything (the geometry of what :func:`generate_demo_det` writes)."""
    out = []
    for i in range(n):
        lay = _layout(seed, split, i)
        for o in lay["objects"]:
            del o["mask"], o["bounds"]
        out.append(lay)
    return out


def _voc_xml(fname: str, h: int, w: int, objects: list[dict[str, Any]]) -> str:
    parts = [f"<annotation><folder>VOCdemo</folder><filename>{escape(fname)}</filename>"
             f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
             "<segmented>0</segmented>"]
    for o in objects:
        x1, y1, x2, y2 = o["box"]  # 0-based, x2/y2 exclusive -> VOC 1-based inclusive
        parts.append(f"<object><name>{DEMO_CLASSES[o['label'] - 1]}</name><pose>Unspecified"
                     f"</pose><truncated>0</truncated><difficult>"
                     f"{int(o['visible'] < DIFFICULT_BELOW)}</difficult><bndbox>"
                     f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax>"
                     f"<ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>\n"


def _write(out: Path, counts: dict[str, int], seed: int) -> None:
    img_dir, ann_dir = out / "images", out / "annotations"
    voc = out / "VOCdevkit" / "VOCdemo"
    for d in (img_dir, ann_dir, voc / "Annotations", voc / "JPEGImages",
              voc / "ImageSets" / "Main"):
        d.mkdir(parents=True, exist_ok=True)
    (voc / "classes.txt").write_text("\n".join(DEMO_CLASSES) + "\n")
    categories = [{"id": c, "name": n, "supercategory": "shape"}
                  for c, n in zip(DEMO_CATEGORY_IDS, DEMO_CLASSES, strict=True)]
    all_ids: list[str] = []
    for split, n in counts.items():
        images, anns, ids = [], [], []
        for i in range(n):
            lay = _layout(seed, split, i)
            stem = f"{split}_{i:05d}"
            ids.append(stem)
            ok, buf = cv2.imencode(".jpg", _paint(seed, split, i, lay),
                                   [cv2.IMWRITE_JPEG_QUALITY, 92])
            assert ok, "cv2 could not encode a demo image"
            buf.tofile(str(img_dir / f"{stem}.jpg"))
            try:
                os.link(img_dir / f"{stem}.jpg", voc / "JPEGImages" / f"{stem}.jpg")
            except OSError:
                shutil.copyfile(img_dir / f"{stem}.jpg", voc / "JPEGImages" / f"{stem}.jpg")
            image_id = _SPLIT_KEY[split] * _ID_STRIDE + i + 1
            images.append({"id": image_id, "file_name": f"{stem}.jpg",
                           "height": lay["height"], "width": lay["width"]})
            for o in lay["objects"]:
                x1, y1, x2, y2 = o["box"]
                anns.append({"id": len(anns) + 1 + _SPLIT_KEY[split] * _ID_STRIDE,
                             "image_id": image_id,
                             "category_id": DEMO_CATEGORY_IDS[o["label"] - 1],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                             "iscrowd": 0})
            (voc / "Annotations" / f"{stem}.xml").write_text(
                _voc_xml(f"{stem}.jpg", lay["height"], lay["width"], lay["objects"]))
        coco = {"info": {"description": "detres demo detection set", "version": DEMO_VERSION},
                "images": images, "annotations": anns, "categories": categories}
        (ann_dir / f"instances_{split}.json").write_text(json.dumps(coco))
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        all_ids += ids
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(all_ids) + "\n")


def _manifest(counts: dict[str, int], seed: int) -> dict[str, Any]:
    return {"version": DEMO_VERSION, "seed": seed, "counts": dict(counts),
            "classes": list(DEMO_CLASSES), "category_ids": list(DEMO_CATEGORY_IDS)}


def _is_current(target: Path, want: dict[str, Any]) -> bool:
    try:
        return json.loads((target / "manifest.json").read_text()) == want
    except (OSError, ValueError):
        return False


def generate_demo_det(root: str | Path, *, num_train: int = DEFAULT_COUNTS["train"],
                      num_val: int = DEFAULT_COUNTS["val"], seed: int = DEFAULT_SEED) -> Path:
    """Write the demo set to ``<root>/demo_det`` unless a current one is there; returns it."""
    counts = {"train": int(num_train), "val": int(num_val)}
    if max(counts.values()) >= _ID_STRIDE:
        raise ValueError(f"demo set counts must be below {_ID_STRIDE}, got {counts}")
    want = _manifest(counts, seed)

    def write(tmp: Path) -> None:
        _write(tmp, counts, seed)
        (tmp / "manifest.json").write_text(json.dumps(want, indent=1))  # last: marks it whole

    return build_directory_once(Path(root) / "demo_det", is_current=lambda d: _is_current(d, want),
                                write=write)


@GENERATORS.register("demo_det")
def ensure_demo_det(root: Path) -> None:
    """Catalog generator: the default demo set under the data root."""
    generate_demo_det(root, num_train=DEFAULT_COUNTS["train"], num_val=DEFAULT_COUNTS["val"],
                      seed=DEFAULT_SEED)
