"""COCO JSON detection sets through pycocotools' API.

Category ids are sorted and mapped to contiguous labels 1..K (``DetSource.category_ids``
maps back); ``bbox`` (x, y, w, h) becomes (x1, y1, x2, y2) in absolute pixels. Every image is
kept, with or without objects (training drops empty ones later, see
:func:`detres.data.det_source.training_records`); crowd boxes stay in the record, flagged by
``iscrowd``. The pycocotools ``COCO`` object is kept at ``source.coco`` for the evaluator.

Checks, each an error naming the json file and the image or annotation id: a missing
``file_name``/``height``/``width``, a duplicate image id, an annotation without ``bbox`` /
``image_id`` / ``category_id``, a bbox that is not 4 finite numbers, a negative width or
height, an unknown category or image id.

Boxes partly outside their image are clipped to it, as torchvision's references and
Detectron2 do (sets drawn with ``skimage.draw.random_shapes`` have boxes a few pixels past
the border); with ``strict_boxes`` (``data.strict_boxes=true``) a box outside by more than
one pixel is an error instead. Boxes left with zero area (w or h = 0 after clipping) are
dropped from the records: they carry no box to learn (IoU with anything is 0) and COCO itself
has a handful. One warning per file gives the counts and the first annotation ids; the
source keeps the counts (``clipped``, ``dropped``) for the data set summary. Dropped boxes
stay in ``source.coco``, so evaluation is unaffected.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from pycocotools.coco import COCO

from detres.data.catalog import DATASET_FORMATS
from detres.data.det_source import DetSource, Record
from detres.utils.errors import InputError

logger = logging.getLogger(__name__)


class CocoFormatError(InputError):
    """A COCO json file that does not follow the format."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _read_json(json_file: Path) -> dict[str, Any]:
    """The file's object, parsed by orjson (3x the standard library's speed: a COCO-train-sized
    file in a third of the time)."""
    try:
        raw = Path(json_file).read_bytes()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:  # strict JSON only: NaN and Infinity go to json
            data = json.loads(raw)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file {json_file} does not exist") from None
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{json_file}: not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CocoFormatError(f"{json_file}: expected an object with an 'images' list")
    if not isinstance(data.get("categories"), list):
        raise CocoFormatError(f"{json_file}: expected a 'categories' list")
    data.setdefault("annotations", [])  # image-info files (test-dev) have none
    if not isinstance(data["annotations"], list):
        raise CocoFormatError(f"{json_file}: 'annotations' must be a list")
    return data


def _categories(data: dict[str, Any], json_file: Path) -> tuple[list[int], list[str]]:
    names: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        cid = c.get("id") if isinstance(c, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(c.get("name"), str):
            raise CocoFormatError(f"{json_file}: category #{i} needs an integer 'id' and a "
                                  f"'name', got {c!r}")
        if cid in names:
            raise CocoFormatError(f"{json_file}: duplicate category id {cid}")
        names[cid] = c["name"]
    ids = sorted(names)
    return ids, [names[i] for i in ids]


def _images(data: dict[str, Any], json_file: Path) -> tuple[list[Any], dict[Any, int]]:
    index: dict[Any, int] = {}
    for i, im in enumerate(data["images"]):
        iid = im.get("id") if isinstance(im, dict) else None
        if iid is None:
            raise CocoFormatError(f"{json_file}: image #{i} has no 'id'")
        for key in ("file_name", "height", "width"):
            if key not in im:
                raise CocoFormatError(f"{json_file}: image id {iid} has no {key!r}")
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise CocoFormatError(f"{json_file}: image id {iid}: bad file_name "
                                  f"{im['file_name']!r}")
        if not (_is_number(im["height"]) and _is_number(im["width"])) or \
                im["height"] <= 0 or im["width"] <= 0:
            raise CocoFormatError(f"{json_file}: image id {iid}: bad size "
                                  f"{im['height']!r} x {im['width']!r}")
        if iid in index:
            raise CocoFormatError(f"{json_file}: duplicate image id {iid}")
        index[iid] = i
    return data["images"], index


_NUMBER_TYPES = {int, float}


def _annotation_arrays(
    anns: list[Any], json_file: Path, img_index: dict[Any, int], cat_ids: list[int]
) -> dict[str, np.ndarray]:
    """Per-annotation arrays: vectorized when every annotation is well formed, else the
    checking pass below, which names the first bad one."""
    try:
        bbox = [a["bbox"] for a in anns]
        flat = list(itertools.chain.from_iterable(bbox))
        img_list = [img_index[a["image_id"]] for a in anns]
        cat_list = [a["category_id"] for a in anns]
        if (len(flat) == 4 * len(anns) and all(len(b) == 4 for b in bbox)
                and set(map(type, flat)) <= _NUMBER_TYPES
                and set(map(type, cat_list)) <= {int}):
            n = len(anns)
            boxes = np.asarray(flat, dtype=np.float64).reshape(n, 4)
            cat = np.asarray(cat_list, dtype=np.int64)
            known = np.asarray(cat_ids, dtype=np.int64)
            pos = np.searchsorted(known, cat).clip(0, max(len(known) - 1, 0))
            if len(known) and (known[pos] == cat).all():
                return {"boxes": boxes, "img": np.asarray(img_list, dtype=np.int64),
                        "label": pos + 1,
                        "crowd": np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool),
                        "ann_ids": np.asarray([a.get("id", f"#{i}") for i, a in
                                               enumerate(anns)], dtype=object)}
    except (KeyError, TypeError, AttributeError):
        pass  # the checking pass says which annotation and what
    return _checked_annotation_arrays(anns, json_file, img_index, cat_ids)


def _checked_annotation_arrays(
    anns: list[Any], json_file: Path, img_index: dict[Any, int], cat_ids: list[int]
) -> dict[str, np.ndarray]:
    """Per-annotation arrays (one pass with the structural checks, the rest vectorized)."""
    n = len(anns)
    boxes = np.zeros((n, 4), dtype=np.float64)
    img = np.zeros(n, dtype=np.int64)
    cat = np.zeros(n, dtype=np.int64)
    crowd = np.zeros(n, dtype=bool)
    ann_ids: list[Any] = [None] * n
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise CocoFormatError(f"{json_file}: annotation #{i} is not an object")
        aid = ann_ids[i] = a.get("id", f"#{i}")
        for key in ("bbox", "image_id", "category_id"):
            if key not in a:
                raise CocoFormatError(f"{json_file}: annotation id {aid} has no {key!r}")
        bb = a["bbox"]
        if not isinstance(bb, list | tuple) or len(bb) != 4 or not all(map(_is_number, bb)):
            raise CocoFormatError(f"{json_file}: annotation id {aid}: bbox must be 4 numbers "
                                  f"[x, y, w, h], got {bb!r}")
        boxes[i] = bb
        j = img_index.get(a["image_id"])
        if j is None:
            raise CocoFormatError(f"{json_file}: annotation id {aid}: unknown image_id "
                                  f"{a['image_id']!r}")
        img[i] = j
        cat[i] = a["category_id"] if _is_number(a["category_id"]) else -(2**62)
        crowd[i] = bool(a.get("iscrowd", 0))
    known = np.asarray(cat_ids, dtype=np.int64)
    pos = np.searchsorted(known, cat).clip(0, max(len(known) - 1, 0))
    bad = np.flatnonzero(known[pos] != cat) if len(known) else np.arange(n)
    if len(bad):
        i = int(bad[0])
        raise CocoFormatError(f"{json_file}: annotation id {ann_ids[i]}: unknown category_id "
                              f"{anns[i]['category_id']!r}; known: {cat_ids}")
    return {"boxes": boxes, "img": img, "label": pos + 1, "crowd": crowd,
            "ann_ids": np.asarray(ann_ids, dtype=object)}


def _check_boxes(
    a: dict[str, np.ndarray], images: list[dict[str, Any]], json_file: Path, strict: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate (x, y, w, h) against the image sizes; returns the clipped (x1, y1, x2, y2)
    and a mask of the boxes that extended past their image by more than a pixel."""
    b = a["boxes"]
    hw = np.array([[im["height"], im["width"]] for im in images], dtype=np.float64)
    h, w = hw[a["img"], 0], hw[a["img"], 1]
    x1, y1 = b[:, 0], b[:, 1]
    x2, y2 = x1 + b[:, 2], y1 + b[:, 3]
    outside = (x1 < -1) | (y1 < -1) | (x2 > w + 1) | (y2 > h + 1)
    checks = [
        (~np.isfinite(b).all(1), "bbox has non-finite values"),
        ((b[:, 2] < 0) | (b[:, 3] < 0), "negative width or height"),
    ]
    if strict:
        checks.append((outside, "box outside the image (data.strict_boxes=true)"))
    for bad, what in checks:
        idx = np.flatnonzero(bad)
        if len(idx):
            i = int(idx[0])
            im = images[a["img"][i]]
            raise CocoFormatError(
                f"{json_file}: annotation id {a['ann_ids'][i]} (image id {im['id']}, "
                f"{im['width']}x{im['height']}): {what}: bbox {b[i].tolist()}"
                + (f" ({len(idx)} such annotations)" if len(idx) > 1 else ""))
    out = np.stack([x1.clip(0, w), y1.clip(0, h), x2.clip(0, w), y2.clip(0, h)], axis=1)
    return out, outside


def _ids(ids: list[Any], n: int = 5) -> str:
    return ", ".join(map(str, ids[:n])) + (" ..." if len(ids) > n else "")


_CACHE_VERSION = 1


def _cache_path(json_file: Path, strict_boxes: bool) -> tuple[Path, str]:
    """Where the parsed columns of ``json_file`` are cached, and the stamp they must carry
    (path, size, mtime, the strictness they were checked with, the cache's version)."""
    st = json_file.stat()
    stamp = json.dumps([str(json_file), st.st_size, st.st_mtime_ns, strict_boxes,
                        _CACHE_VERSION])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    key = hashlib.sha1(str(json_file).encode()).hexdigest()[:16]
    return Path(base) / "detres" / "coco" / f"{key}.npz", stamp


def _parse_coco(json_file: Path, strict_boxes: bool) -> dict[str, Any]:
    """The file's images, boxes, labels and classes as flat arrays (each image's boxes
    contiguous, ``starts`` their offsets), checked, with the notes to warn about."""
    data = _read_json(json_file)
    cat_ids, class_names = _categories(data, json_file)
    images, img_index = _images(data, json_file)
    a = _annotation_arrays(data["annotations"], json_file, img_index, cat_ids)
    xyxy, outside = _check_boxes(a, images, json_file, strict_boxes)
    degenerate = (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
    clipped = outside & ~degenerate
    notes = []
    if degenerate.any():
        notes.append(f"dropped {int(degenerate.sum())} zero-area box(es) (after clipping to "
                     f"the image), annotation ids {_ids(a['ann_ids'][degenerate].tolist())}")
    if clipped.any():
        notes.append(f"clipped {int(clipped.sum())} box(es) extending past their image by "
                     f"more than 1 px, annotation ids {_ids(a['ann_ids'][clipped].tolist())} "
                     "(data.strict_boxes=true makes this an error)")
    keep = ~degenerate
    img = a["img"][keep]
    order = np.argsort(img, kind="stable")
    counts = np.bincount(img, minlength=len(images))
    return {
        "image_ids": json.dumps([im["id"] for im in images]),
        "file_names": json.dumps([im["file_name"] for im in images]),
        "heights": np.asarray([int(im["height"]) for im in images], np.int64),
        "widths": np.asarray([int(im["width"]) for im in images], np.int64),
        "starts": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "boxes": xyxy[keep][order].astype(np.float32),
        "labels": a["label"][keep][order].astype(np.int64),
        "crowd": a["crowd"][keep][order],
        "cat_ids": np.asarray(cat_ids, np.int64), "class_names": json.dumps(class_names),
        "clipped": int(clipped.sum()), "dropped": int(degenerate.sum()),
        "notes": json.dumps(notes),
    }


def _parsed_coco(json_file: Path, strict_boxes: bool) -> dict[str, Any]:
    """:func:`_parse_coco`, cached by path, size and mtime (``$XDG_CACHE_HOME/detres/coco``):
    a COCO-train-sized file parses in ~10 s, its columns load in well under one."""
    cache, stamp = _cache_path(json_file, strict_boxes)
    try:
        with np.load(cache) as z:
            if str(z["stamp"]) == stamp:
                return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        pass
    parsed = _parse_coco(json_file, strict_boxes)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, stamp=stamp, **parsed)
        os.replace(tmp, cache)
    except OSError as e:  # a read-only home: parsing again next time is all it costs
        logger.debug("COCO cache not written: %s", e)
    return parsed


def load_coco_json(
    json_file: str | Path, image_root: str | Path | None = None, *, name: str = "",
    strict_boxes: bool = False,
) -> DetSource:
    """Records for every image of a COCO json file (images under ``image_root``, by default
    the json file's directory)."""
    json_file = Path(json_file).resolve()
    image_root = Path(image_root).resolve() if image_root else json_file.parent
    p = _parsed_coco(json_file, strict_boxes)
    notes = json.loads(str(p["notes"]))
    if notes:
        warnings.warn(f"{json_file}: " + "; ".join(notes), stacklevel=2)
    starts, boxes = p["starts"].tolist(), torch.from_numpy(p["boxes"])
    labels, crowd = torch.from_numpy(p["labels"]), torch.from_numpy(p["crowd"])
    no_flags = torch.zeros(len(boxes), dtype=torch.bool)
    root_dir = str(image_root)
    records: list[Record] = [
        {"image_id": iid, "file": os.path.join(root_dir, f), "height": h, "width": w,
         "boxes": boxes[s:e], "classes": labels[s:e], "iscrowd": crowd[s:e],
         "difficult": no_flags[s:e]}
        for iid, f, h, w, s, e in zip(json.loads(str(p["image_ids"])),
                                      json.loads(str(p["file_names"])), p["heights"].tolist(),
                                      p["widths"].tolist(), starts[:-1], starts[1:],
                                      strict=True)]
    cat_ids = p["cat_ids"].tolist()
    logger.info("%s: %d images, %d boxes, %d classes", json_file, len(records), len(boxes),
                len(cat_ids))
    return DetSource(name=name or str(json_file), format="coco", records=records,
                     class_names=json.loads(str(p["class_names"])), category_ids=cat_ids,
                     path=json_file,
                     coco_factory=lambda src: coco_ground_truth(json_file, src.records),
                     clipped=int(p["clipped"]), dropped=int(p["dropped"]))


def coco_ground_truth(json_file: Path, records: list[Record]) -> COCO:
    """The scorer's ground truth: the json file read again (only sets that are scored do
    this), restricted to the images of ``records`` (all of them unless some were left out)."""
    data = _read_json(json_file)
    ids = {r["image_id"] for r in records}
    if len(ids) != len(data["images"]):
        data["images"] = [im for im in data["images"] if im["id"] in ids]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    for ann in data["annotations"]:  # CVAT / Label Studio / Roboflow leave these out;
        ann.setdefault("iscrowd", 0)  # the scorers read both
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    return _coco_index(data)


def _coco_index(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def coco_from_records(records: list[Record], class_names: list[str], category_ids: list[int]
                      ) -> COCO:
    """A COCO ground truth of detection records (for scoring a set of another format with
    COCO's metrics): boxes as ``[x, y, w, h]``, ``area`` the box area, labels 1..K mapped to
    ``category_ids``."""
    images, anns = [], []
    for r in records:
        images.append({"id": r["image_id"], "file_name": Path(r["file"]).name,
                       "height": int(r["height"]), "width": int(r["width"])})
        for b, c, crowd in zip(r["boxes"].tolist(), r["classes"].tolist(),
                               r["iscrowd"].tolist(), strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": r["image_id"],
                         "category_id": category_ids[c - 1], "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": int(crowd)})
    cats = [{"id": i, "name": n} for i, n in zip(category_ids, class_names, strict=True)]
    return _coco_index({"images": images, "annotations": anns, "categories": cats})


@DATASET_FORMATS.register("coco")
def build_coco_source(*, path: Path, images: Path | None, split: str = "",
                      name: str = "", strict_boxes: bool = False) -> DetSource:
    """Catalog builder: ``path`` is the json file, ``images`` the image directory."""
    return load_coco_json(path, images, name=name, strict_boxes=strict_boxes)
