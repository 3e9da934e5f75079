"""YOLO txt detection sets as Ultralytics and Roboflow export them.

``path`` is the set's folder (or its ``data.yaml``); ``data.yaml`` gives the class ``names``
(a list, or a ``{index: name}`` mapping) and, per split, its images (``train:``, ``val:`` or
``valid:``, ``test:``): a folder, a ``.txt`` file of image paths (relative to that file's
folder), or a list of them; relative to ``path:`` if the file has one, else to the file's
folder; Roboflow's ``../train/images``, written for a parent folder, is also looked up inside
the set's folder, as Ultralytics does. Without an entry the split's images are looked for in
``images/<split>``, ``<split>/images`` (``valid`` for ``val``) or ``<split>``; the set's
``images`` key names the folder outright. Each image's labels are the same-named ``.txt``
under the matching ``labels`` folder (the last ``images`` path component replaced,
Ultralytics' rule; else the one folder beside it whose name holds the image folder's, as
Roboflow's ``labels/train-labels``); one line
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

from detres.data.catalog import DATASET_FORMATS
from detres.data.coco import coco_from_records
from detres.data.det_source import DetSource, Record
from detres.data.image_io import header_info
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


_ALIASES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val", "validation"),
            "test": ("test",), "train": ("train",)}


def _resolve(entry: str, root: Path, base: Path) -> list[Path]:
    """Where a data.yaml path may point: absolute; under ``path:``; beside the file; and, for
    Roboflow's ``../train/images`` written for a parent folder, inside the set's folder."""
    e = Path(entry)
    if e.is_absolute():
        return [e]
    return [root / e, base / e, base / Path(*[p for p in e.parts if p != ".."] or ["."])]


def split_files(yaml_file: Path, data: dict[str, Any], split: str) -> tuple[list[Path], str]:
    """The split's image files and where they came from (see the module docstring): the
    data.yaml entry for the split (or its alias, ``val`` / ``valid``): a folder, a ``.txt``
    file of image paths (relative to that file's folder), or a list of them; without one,
    the folders ``images/<split>``, ``<split>/images`` or ``<split>``."""
    base = yaml_file.parent
    root = Path(data["path"]) if data.get("path") else base
    root = root if root.is_absolute() else base / root
    keys = _ALIASES.get(split, (split,))
    entry = next((data[k] for k in keys if data.get(k)), None)
    tried: list[Path] = []
    if entry is not None:
        files: list[Path] = []
        for e in entry if isinstance(entry, list) else [entry]:
            hit = next((p for p in _resolve(str(e), root, base) if p.exists()), None)
            if hit is None:
                tried += _resolve(str(e), root, base)
            elif hit.is_dir():
                files += sorted(f for f in hit.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            else:  # a list of image paths, one a line, relative to the list's folder
                for line in hit.read_text().splitlines():
                    line = line.strip()
                    if line:
                        p = Path(line)
                        files.append(p if p.is_absolute() else (hit.parent / p))
        if files or not tried:
            return [f.resolve() for f in files], f"data.yaml '{keys[0]}'"
    for k in keys:
        tried += [root / "images" / k, root / k / "images", root / k]
    for d in tried:
        if d.is_dir():
            d = d.resolve()
            return sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES), str(d)
    raise FileNotFoundError(
        f"YOLO set {yaml_file}: no images for split {split!r}; tried "
        f"{', '.join(str(t) for t in dict.fromkeys(tried))}. Give data.yaml a '{split}:' entry "
        "(a folder, a .txt list of images, or a list of them), or the split's folder as the "
        "set's 'images' key")


def labels_dir(images: Path) -> Path:
    """The label folder of an image folder: the last ``images`` path component replaced by
    ``labels`` (Ultralytics' rule); when that folder does not exist, the one folder beside it
    whose name holds the image folder's name (Roboflow's ``labels/train-labels``)."""
    parts = list(images.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            cand = Path(*parts)
            if cand.is_dir() or not cand.parent.is_dir():
                return cand
            token = images.name.lower()
            like = [d for d in cand.parent.iterdir() if d.is_dir() and token in d.name.lower()
                    and d.name.lower() != token]
            return like[0] if len(like) == 1 else cand
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
              class_names_override: list[str] | None = None,
              images_key: str | Path | None = None) -> DetSource:
    """Records for one split of a YOLO set."""
    yaml_file, data = read_data_yaml(Path(path).resolve())
    names = read_names(data, yaml_file)
    if class_names_override is not None and class_names_override != names:
        raise YoloFormatError(f"{yaml_file}: 'names' {names} differ from the config's "
                              f"classes {class_names_override}")
    if not split:
        raise InputError(f"YOLO set {yaml_file}: 'split' (train, val or test) is required")
    if images_key is not None:
        d = Path(images_key).resolve()
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        where = str(d)
    else:
        files, where = split_files(yaml_file, data, split)
    if not files:
        raise FileNotFoundError(f"YOLO set {yaml_file}: no images for split {split!r} in "
                                f"{where}")
    label_dirs: dict[Path, Path] = {}
    records: list[Record] = []
    touched: list[str] = []
    n_clipped = n_dropped = 0
    for f in files:
        try:
            h, w = header_info(f)[1]  # upright, as the loader decodes it
        except Exception as e:
            raise YoloFormatError(f"{f}: cannot be read as an image ({type(e).__name__}: "
                                  f"{e})") from None
        if f.parent not in label_dirs:
            label_dirs[f.parent] = labels_dir(f.parent)
        lf = label_dirs[f.parent] / f.with_suffix(".txt").name
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
        warnings.warn(f"{yaml_file} ({split}): clipped {n_clipped} box(es) extending past their "
                      f"image and dropped {n_dropped} left empty, in {len(touched)} file(s): "
                      f"{shown} (data.strict_boxes=true makes this an error)", stacklevel=2)
    category_ids = list(range(len(names)))
    label = name or re.sub(r"\W+", "_", f"{yaml_file.parent.name}_{split}")
    logger.info("%s (%s): %d images from %s, labels from %s", yaml_file, split, len(records),
                where, ", ".join(sorted({str(d) for d in label_dirs.values()})[:3]))
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
    return load_yolo(path, split, name=name, strict_boxes=strict_boxes, images_key=images,
                     class_names_override=class_names)
