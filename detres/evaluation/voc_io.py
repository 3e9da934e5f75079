"""Reading VOC ground truth (``Annotations/*.xml``) and VOC detection results for scoring.

Results come in one of two forms:

- a directory of devkit result files ``<prefix>_det_<split>_<class>.txt`` (for example
  ``comp4_det_test_dog.txt``), one detection a line: ``image_id score x1 y1 x2 y2``;
- a JSON list of detections, one object each::

      {"image_id": "000001", "category": "dog", "score": 0.93, "box": [x1, y1, x2, y2]}

  ``"category_id": k`` (1-based: the k-th class of the list) may replace ``"category"``, and
  ``"bbox": [x, y, w, h]`` (COCO style, x2 = x + w) may replace ``"box"``.

Coordinates are the devkit's: 1-based pixels as in the XML. Bad input raises ``ValueError``
naming the file and the line (text) or the index (JSON).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detres.evaluation.voc import VOC_CLASSES
from detres.formats.voc_xml import read_voc_xml
from detres.utils.errors import InputError

#: (image index, class index, score, box) per detection.
FlatDetections = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_image_set(voc_root: str | Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt``."""
    path = Path(voc_root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no image set {path} (split {split!r} of {voc_root})")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _parse_xml(path: Path) -> dict[str, Any]:
    """Ground truth of one file, read by the loaders' own reader
    (:func:`detres.formats.voc_xml.read_voc_xml`, the same rules); reversed boxes are left
    out and counted in ``reversed``."""
    ann = read_voc_xml(path)
    objs = [o for o in ann.objects if not o.reversed]
    return {"boxes": np.asarray([o.box for o in objs], np.float64).reshape(-1, 4),
            "labels": [o.name for o in objs],
            "difficult": np.asarray([o.difficult for o in objs], bool),
            "reversed": len(ann.objects) - len(objs)}


def load_voc_annotations(voc_root: str | Path, split: str
                         ) -> tuple[list[str], list[dict[str, Any]]]:
    """(image ids, ground truth per image) of a VOC year directory, e.g. VOCdevkit/VOC2007.

    Each record: ``boxes`` (M, 4) float xyxy as in the XML, ``labels`` (class names),
    ``difficult`` (M,) bool (a missing ``<difficult>`` tag is 0), by the loaders' rules
    (:mod:`detres.formats.voc_xml`): a reversed box is left out with one warning."""
    ids = read_image_set(voc_root, split)
    ann = Path(voc_root) / "Annotations"
    records = [_parse_xml(ann / f"{i}.xml") for i in ids]
    bad = [i for i, r in zip(ids, records, strict=True) if r["reversed"]]
    if bad:
        warnings.warn(f"{ann}: left out {sum(r['reversed'] for r in records)} reversed box(es) "
                      f"(xmax < xmin or ymax < ymin) in {len(bad)} file(s): "
                      f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}", stacklevel=2)
    return ids, records


def voc_class_names(voc_root: str | Path, records: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The class list of a VOC-layout set: ``<voc_root>/classes.txt`` (one name a line, as
    custom sets and the demo set have) if present; else the 20 VOC classes if every annotated
    name is one of them; else the sorted names found in the annotations."""
    f = Path(voc_root) / "classes.txt"
    if f.is_file():
        names = tuple(ln.strip() for ln in f.read_text().splitlines() if ln.strip())
        if not names or len(set(names)) != len(names):
            raise InputError(f"{f}: expected one unique class name per line")
        return names
    found = {name for r in records for name in r["labels"]}
    return VOC_CLASSES if found <= set(VOC_CLASSES) else tuple(sorted(found))


def _lookup_images(names: list[str], image_index: dict[str, int], where: list[str],
                   split: str) -> np.ndarray:
    idx = np.asarray([image_index.get(n, -1) for n in names], np.int64)
    bad = np.flatnonzero(idx < 0)
    if len(bad):
        raise InputError(f"{where[bad[0]]}: unknown image id {names[bad[0]]!r} (not in the "
                         f"{split!r} image set)")
    return idx


def _check_boxes(boxes: np.ndarray, where: list[str]) -> None:
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if len(bad):
        raise InputError(f"{where[bad[0]]}: box {boxes[bad[0]].tolist()} has x2 < x1 or y2 < y1")


def _read_result_dir(path: Path, split: str, image_index: dict[str, int],
                     class_names: Sequence[str]) -> FlatDetections:
    tag = f"_det_{split}_"
    files = sorted(p for p in path.glob(f"*{tag}*.txt"))
    if not files:
        raise FileNotFoundError(f"no devkit result files *{tag}<class>.txt in {path}")
    out: list[FlatDetections] = []
    for f in files:
        cls = f.stem.split(tag, 1)[1]
        if cls not in class_names:  # the file name's class
            raise InputError(f"{f}: unknown class {cls!r}; known: {', '.join(class_names)}")
        lines = [(n + 1, ln.split()) for n, ln in enumerate(f.read_text().splitlines())
                 if ln.strip()]
        where = [f"{f}:{n}" for n, _ in lines]
        for w, (_, parts) in zip(where, lines, strict=True):
            if len(parts) != 6:
                raise InputError(f"{w}: expected 'image_id score x1 y1 x2 y2', got "
                                 f"{' '.join(parts)!r}")
        try:
            values = np.asarray([p[1:] for _, p in lines], np.float64).reshape(-1, 5)
        except ValueError:
            for w, (_, parts) in zip(where, lines, strict=True):
                try:
                    [float(v) for v in parts[1:]]
                except ValueError:
                    raise InputError(f"{w}: non-numeric value in {' '.join(parts)!r}") from None
            raise
        _check_boxes(values[:, 1:], where)
        img = _lookup_images([p[0] for _, p in lines], image_index, where, split)
        cls_idx = np.full(len(img), list(class_names).index(cls), np.int64)
        out.append((img, cls_idx, values[:, 0], values[:, 1:]))
    img, cls, scores, boxes = zip(*out, strict=True)
    return np.concatenate(img), np.concatenate(cls), np.concatenate(scores), np.concatenate(boxes)


def _read_result_json(path: Path, split: str, image_index: dict[str, int],
                      class_names: Sequence[str]) -> FlatDetections:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of detections, got {type(data).__name__}")
    names, cls, scores, boxes = [], [], [], []
    class_index = {c: i for i, c in enumerate(class_names)}
    for n, d in enumerate(data):
        w = f"{path}[{n}]"
        try:
            if not isinstance(d, dict):
                raise InputError(f"expected an object, got {d!r}")
            names.append(str(d["image_id"]))
            if "category" in d:
                if d["category"] not in class_index:
                    raise InputError(f"unknown class {d['category']!r}; known: "
                                     f"{', '.join(class_names)}")
                cls.append(class_index[d["category"]])
            else:
                k = int(d["category_id"])
                if not 1 <= k <= len(class_names):
                    raise InputError(f"unknown category_id {k} (1..{len(class_names)})")
                cls.append(k - 1)
            scores.append(float(d["score"]))
            b = [float(v) for v in (d["box"] if "box" in d else d["bbox"])]
            if len(b) != 4:
                raise InputError(f"box {b} does not have 4 numbers")
            boxes.append(b if "box" in d else [b[0], b[1], b[0] + b[2], b[1] + b[3]])
        except KeyError as e:
            raise InputError(f"{w}: missing key {e} (need image_id, category or category_id, "
                             "score, box or bbox)") from None
        except (ValueError, TypeError) as e:
            raise InputError(f"{w}: {e}") from None
    where = [f"{path}[{n}]" for n in range(len(data))]
    box_arr = np.asarray(boxes, np.float64).reshape(-1, 4)
    _check_boxes(box_arr, where)
    return (_lookup_images(names, image_index, where, split), np.asarray(cls, np.int64),
            np.asarray(scores, np.float64), box_arr)


def load_voc_results(path: str | Path, *, image_ids: Sequence[str], class_names: Sequence[str],
                     split: str) -> FlatDetections:
    """Detections from a devkit result directory or a JSON list (see the module docstring) as
    flat arrays: image index into ``image_ids``, class index into ``class_names``, score, box."""
    path = Path(path)
    image_index = {i: n for n, i in enumerate(image_ids)}
    if path.is_dir():
        return _read_result_dir(path, split, image_index, class_names)
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path} (a directory of devkit files or a JSON)")
    return _read_result_json(path, split, image_index, class_names)
