"""YOLO txt detection sets as Ultralytics and Roboflow export them.

``path`` is the set's folder (or its ``data.yaml``); ``data.yaml`` gives the class ``names``
(a list, or a ``{index: name}`` mapping) and, per split, the image folder (``train:``,
``val:``, ``test:``; relative to ``path:`` if the file has one, else to the file's folder;
Roboflow's ``../train/images`` is also looked up inside the folder). Without an entry the
split's images are looked for in ``images/<split>``, ``<split>/images`` (``valid`` for
``val``) or ``<split>``. Each image's labels are the same-named ``.txt`` under the matching
``labels`` folder (the last ``images`` path component replaced, Ultralytics' rule); one line
per object, ``class cx cy w h`` normalized to [0, 1], or ``class x1 y1 x2 y2 ...`` (a
polygon, as segment exports write it, taken by its bounding box). An image without a label
file has no objects.

Boxes become absolute ``(x1, y1, x2, y2)`` pixels of the image (its size read from the file
header); a box past the border is clipped, one left empty is dropped (one warning per split;
``strict_boxes``: errors). Category ids are YOLO's class indices (0..K-1), so detections and
results files use them. Scoring is COCO's (an in-memory ground truth, ``area`` = box area).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from detres.data.catalog import DATASET_FORMATS
from detres.data.coco import coco_from_records
from detres.data.det_source import DetSource, Record
from detres.utils.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class YoloFormatError(InputError):
    """A YOLO label file, data.yaml or folder that does not follow the format."""


def read_data_yaml(path: Path) -> tuple[Path, dict[str, Any]]:
    """(the yaml file, its contents) for a set folder or a yaml path."""
    f = path if path.is_file() else next(
        (path / n for n in ("data.yaml", "data.yml", "dataset.yaml") if (path / n).is_file()),
        None)
    if f is None:
        raise FileNotFoundError(f"YOLO set {path}: no data.yaml (it gives the class names)")
    try:
        data = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:
        raise YoloFormatError(f"{f}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise YoloFormatError(f"{f}: expected a mapping with 'names'")
    return f, data


def read_names(data: dict[str, Any], where: Path) -> list[str]:
    names = data["names"]
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise YoloFormatError(f"{where}: 'names' keys must be 0..K-1, got {keys}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise YoloFormatError(f"{where}: 'names' must be a list of class names, got {names!r}")
    if "nc" in data and data["nc"] != len(names):
        raise YoloFormatError(f"{where}: nc is {data['nc']} but 'names' lists {len(names)}")
    return [str(n) for n in names]


def image_dir(yaml_file: Path, data: dict[str, Any], split: str) -> Path:
    """The split's image folder (see the module docstring)."""
    base = yaml_file.parent
    root = Path(data["path"]) if data.get("path") else base
    root = root if root.is_absolute() else base / root
    tried: list[Path] = []
    entry = data.get(split) or (data.get("valid") if split == "val" else None)
    if isinstance(entry, str):
        e = Path(entry)
        tried += [e] if e.is_absolute() else [root / e, base / e,
                                              base / Path(*[p for p in e.parts if p != ".."])]
    alt = ["valid"] if split == "val" else []
    for s in [split, *alt]:
        tried += [root / "images" / s, root / s / "images", root / s]
    for d in tried:
        if d.is_dir():
            return d.resolve()
    raise FileNotFoundError(f"YOLO set {yaml_file}: no image folder for split {split!r}; "
                            f"tried {', '.join(str(t) for t in dict.fromkeys(tried))}")


def labels_dir(images: Path) -> Path:
    parts = list(images.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images  # labels beside the images


def parse_label_file(f: Path, num_classes: int, w: int, h: int, *, strict_boxes: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(boxes (M, 4) absolute xyxy, class indices, boxes clipped, boxes dropped)."""
    boxes, labels = [], []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        vals = line.split()
        try:
            cls, nums = int(vals[0]), [float(v) for v in vals[1:]]
        except ValueError:
            raise YoloFormatError(f"{f}:{n}: expected 'class cx cy w h' (numbers), got "
                                  f"{line.strip()!r}") from None
        if len(nums) < 4 or (len(nums) > 4 and len(nums) % 2):
            raise YoloFormatError(f"{f}:{n}: expected 'class cx cy w h' or a polygon "
                                  f"'class x1 y1 x2 y2 ...', got {len(nums)} numbers")
        if not 0 <= cls < num_classes:
            raise YoloFormatError(f"{f}:{n}: class {cls} is not in 0..{num_classes - 1} "
                                  "(data.yaml 'names')")
        if not np.isfinite(nums).all():
            raise YoloFormatError(f"{f}:{n}: non-finite values {nums}")
        if len(nums) == 4:
            cx, cy, bw, bh = nums
            if bw < 0 or bh < 0:
                raise YoloFormatError(f"{f}:{n}: negative width or height in {nums}")
            box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        else:
            xs, ys = nums[0::2], nums[1::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        if strict_boxes and (min(box) < -1e-3 or max(box[0], box[2]) > 1 + 1e-3
                             or max(box[1], box[3]) > 1 + 1e-3):
            raise YoloFormatError(f"{f}:{n}: box {box} outside the image "
                                  "(data.strict_boxes=true)")
        boxes.append(box)
        labels.append(cls)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * [w, h, w, h]
    outside = (b[:, 0] < -1) | (b[:, 1] < -1) | (b[:, 2] > w + 1) | (b[:, 3] > h + 1)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return (b[keep].astype(np.float32), np.asarray(labels, dtype=np.int64)[keep],
            int((outside & keep).sum()), int((~keep).sum()))


def load_yolo(path: str | Path, split: str, *, name: str = "", strict_boxes: bool = False,
              class_names_override: list[str] | None = None) -> DetSource:
    """Records for one split of a YOLO set."""
    yaml_file, data = read_data_yaml(Path(path).resolve())
    names = read_names(data, yaml_file)
    if class_names_override is not None and class_names_override != names:
        raise YoloFormatError(f"{yaml_file}: 'names' {names} differ from the config's "
                              f"classes {class_names_override}")
    if not split:
        raise InputError(f"YOLO set {yaml_file}: 'split' (train, val or test) is required")
    images = image_dir(yaml_file, data, split)
    labels = labels_dir(images)
    files = sorted(f for f in images.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"YOLO set {yaml_file}: no images in {images}")
    records: list[Record] = []
    touched: list[str] = []
    n_clipped = n_dropped = 0
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = im.size
        except Exception as e:
            raise YoloFormatError(f"{f}: cannot be read as an image ({type(e).__name__}: "
                                  f"{e})") from None
        rel = f.relative_to(images)
        lf = labels / rel.with_suffix(".txt")
        if lf.is_file():
            boxes, cls, nc, nd = parse_label_file(lf, len(names), w, h,
                                                  strict_boxes=strict_boxes)
        else:
            boxes, cls, nc, nd = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 0, 0
        if nc or nd:
            touched.append(lf.name)
        n_clipped, n_dropped = n_clipped + nc, n_dropped + nd
        records.append({
            "image_id": len(records) + 1,
            "file": str(f),
            "height": h,
            "width": w,
            "boxes": torch.from_numpy(boxes),
            "classes": torch.from_numpy(cls + 1),
            "iscrowd": torch.zeros(len(cls), dtype=torch.bool),
            "difficult": torch.zeros(len(cls), dtype=torch.bool),
        })
    if touched:
        shown = ", ".join(touched[:5]) + (" ..." if len(touched) > 5 else "")
        warnings.warn(f"{labels} ({split}): clipped {n_clipped} box(es) extending past their "
                      f"image and dropped {n_dropped} left empty, in {len(touched)} file(s): "
                      f"{shown} (data.strict_boxes=true makes this an error)", stacklevel=2)
    category_ids = list(range(len(names)))
    label = name or re.sub(r"\W+", "_", f"{yaml_file.parent.name}_{split}")
    logger.info("%s (%s): %d images from %s", yaml_file, split, len(records), images)
    return DetSource(name=label, format="yolo", records=records, class_names=names,
                     category_ids=category_ids, path=yaml_file, split=split,
                     coco_factory=lambda src: coco_from_records(src.records, names,
                                                                category_ids),
                     clipped=n_clipped, dropped=n_dropped)


@DATASET_FORMATS.register("yolo")
def build_yolo_source(*, path: Path, images: Path | None = None, split: str = "",
                      name: str = "", strict_boxes: bool = False,
                      class_names: list[str] | None = None) -> DetSource:
    """Catalog builder: ``path`` is the set's folder or data.yaml, ``split`` train/val/test."""
    return load_yolo(path, split, name=name, strict_boxes=strict_boxes,
                     class_names_override=class_names)
