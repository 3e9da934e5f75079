"""PASCAL VOC XML detection sets (VOC2007, VOC2012 and custom sets in the same layout).

``path`` is a year directory such as ``VOCdevkit/VOC2007``; ``split`` names an image set,
read from ``ImageSets/Main/<split>.txt``; each id has ``Annotations/<id>.xml`` and
``JPEGImages/<id>.jpg``. Classes are the 20 PASCAL classes in the standard order, unless the
directory holds a ``classes.txt`` (one name per line, in label order) as custom sets and the
embedded demo set do. ``category_ids`` are 1..K.

Box convention: VOC coordinates are 1-based inclusive pixel indices. As in Detectron2 and
torchvision we subtract 1 from ``xmin`` and ``ymin`` only, giving 0-based continuous boxes
``(xmin - 1, ymin - 1, xmax, ymax)`` whose width ``xmax - xmin + 1`` equals the devkit's
inclusive width. :func:`to_voc_boxes` converts back for the devkit scoring rules.

Difficult objects are kept with ``difficult=True`` (the evaluator ignores them; training
leaves them out unless ``data.use_difficult``). Malformed XML, a missing tag, an unknown
class, a non-finite coordinate or ``xmax < xmin`` are errors naming the file. A box partly
outside its image is clipped to it (one warning per image set, with the count and the first
files; ``strict_boxes``: an error), and dropped if nothing is left.
"""

from __future__ import annotations

import logging
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from detres.data.catalog import DATASET_FORMATS
from detres.data.det_source import DetSource, Record
from detres.utils.errors import InputError

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class VocFormatError(InputError):
    """A VOC annotation file or image set that does not follow the format."""


def to_voc_boxes(boxes: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """0-based continuous (x1, y1, x2, y2) -> VOC 1-based inclusive (xmin, ymin, xmax, ymax)."""
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[..., 0:2] += 1
    return out


def from_voc_boxes(boxes: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """VOC 1-based inclusive (xmin, ymin, xmax, ymax) -> 0-based continuous (x1, y1, x2, y2)."""
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[..., 0:2] -= 1
    return out


def read_class_names(root: Path) -> list[str]:
    """``<root>/classes.txt`` if present, else the 20 PASCAL classes."""
    f = root / "classes.txt"
    if not f.is_file():
        return list(VOC_CLASSES)
    names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    if not names or len(set(names)) != len(names):
        raise VocFormatError(f"{f}: expected one unique class name per line, got {names}")
    return names


def _text(node: ET.Element, tag: str, xml_file: Path, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise VocFormatError(f"{xml_file}: {what} has no <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, xml_file: Path, what: str) -> float:
    s = _text(node, tag, xml_file, what)
    try:
        return float(s)
    except ValueError:
        raise VocFormatError(f"{xml_file}: {what}: <{tag}> is not a number: {s!r}") from None


def parse_voc_xml(
    xml_file: Path, class_index: dict[str, int], *, strict_boxes: bool = False
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(height, width, boxes (M, 4) 0-based continuous, labels 1..K, difficult, boxes
    clipped to the image, boxes dropped as empty after clipping) of one file."""
    try:
        root = ET.parse(xml_file).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation file {xml_file} does not exist") from None
    except ET.ParseError as e:
        raise VocFormatError(f"{xml_file}: malformed XML: {e}") from None
    size = root.find("size")
    if size is None:
        raise VocFormatError(f"{xml_file}: no <size>")
    w = int(_number(size, "width", xml_file, "<size>"))
    h = int(_number(size, "height", xml_file, "<size>"))
    if w <= 0 or h <= 0:
        raise VocFormatError(f"{xml_file}: bad image size {w}x{h}")
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        what = f"object #{k}"
        name = _text(obj, "name", xml_file, what)
        if name not in class_index:
            raise VocFormatError(f"{xml_file}: {what}: unknown class {name!r}; known: "
                                 f"{sorted(class_index)}")
        diff = obj.find("difficult")
        dt = diff.text.strip() if diff is not None and diff.text else "0"
        if dt not in ("0", "1"):
            raise VocFormatError(f"{xml_file}: {what} ({name}): <difficult> must be 0 or 1, "
                                 f"got {dt!r}")
        difficult.append(dt == "1")
        bb = obj.find("bndbox")
        if bb is None:
            raise VocFormatError(f"{xml_file}: {what} ({name}) has no <bndbox>")
        box = [_number(bb, t, xml_file, f"{what} ({name})")
               for t in ("xmin", "ymin", "xmax", "ymax")]
        if not np.isfinite(box).all():
            raise VocFormatError(f"{xml_file}: {what} ({name}): non-finite box {box}")
        if box[2] < box[0] or box[3] < box[1]:
            raise VocFormatError(f"{xml_file}: {what} ({name}): xmax < xmin or ymax < ymin "
                                 f"in {box}")
        if strict_boxes and (box[0] < 0 or box[1] < 0 or box[2] > w + 1 or box[3] > h + 1):
            raise VocFormatError(f"{xml_file}: {what} ({name}): box {box} outside the "
                                 f"{w}x{h} image (data.strict_boxes=true)")
        boxes.append(box)
        labels.append(class_index[name])
    raw = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    outside = (raw[:, 0] < 0) | (raw[:, 1] < 0) | (raw[:, 2] > w + 1) | (raw[:, 3] > h + 1)
    b = from_voc_boxes(raw)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # nothing left inside: dropped
    lab, diff = np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool)
    n_out = int((outside & keep).sum())
    return h, w, b[keep], lab[keep], diff[keep], n_out, int((~keep).sum())


def load_voc(root: str | Path, split: str, *, name: str = "",
             class_names: list[str] | None = None, strict_boxes: bool = False) -> DetSource:
    """Records for the image set ``split`` of a VOC year directory ``root``."""
    root = Path(root).resolve()
    if not split:
        raise ValueError(f"VOC set {root}: 'split' (an image set such as trainval) is required")
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise FileNotFoundError(f"VOC image set {ids_file} does not exist")
    ids = [ln.split()[0] for ln in ids_file.read_text().splitlines() if ln.strip()]
    names = list(class_names) if class_names is not None else read_class_names(root)
    class_index = {n: k + 1 for k, n in enumerate(names)}
    records: list[Record] = []
    clipped: list[str] = []
    n_clipped = n_dropped = 0
    for image_id in ids:
        h, w, boxes, labels, diff, n_out, n_empty = parse_voc_xml(
            root / "Annotations" / f"{image_id}.xml", class_index, strict_boxes=strict_boxes)
        if n_out or n_empty:
            clipped.append(image_id)
        n_clipped, n_dropped = n_clipped + n_out, n_dropped + n_empty
        records.append({
            "image_id": image_id,
            "file": str(root / "JPEGImages" / f"{image_id}.jpg"),
            "height": h,
            "width": w,
            "boxes": torch.from_numpy(boxes),
            "classes": torch.from_numpy(labels),
            "iscrowd": torch.zeros(len(labels), dtype=torch.bool),
            "difficult": torch.from_numpy(diff),
        })
    if clipped:
        shown = ", ".join(f"{i}.xml" for i in clipped[:5]) + (" ..." if len(clipped) > 5 else "")
        warnings.warn(f"{root}/Annotations ({split}): clipped {n_clipped} box(es) extending "
                      f"past their image and dropped {n_dropped} left empty, in "
                      f"{len(clipped)} file(s): {shown} (data.strict_boxes=true makes this an "
                      "error)", stacklevel=2)
    m = re.search(r"VOC(\d{4})", root.name)
    logger.info("%s/%s: %d images", root, split, len(records))
    return DetSource(name=name or f"{root}:{split}", format="voc", records=records,
                     class_names=names, category_ids=list(range(1, len(names) + 1)),
                     path=root, split=split, year=m.group(1) if m else "",
                     clipped=n_clipped, dropped=n_dropped)


@DATASET_FORMATS.register("voc")
def build_voc_source(*, path: Path, images: Path | None = None, split: str = "",
                     name: str = "", strict_boxes: bool = False) -> DetSource:
    """Catalog builder: ``path`` is the year directory, ``split`` the image set."""
    return load_voc(path, split, name=name, strict_boxes=strict_boxes)
