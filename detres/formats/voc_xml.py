"""The one PASCAL VOC XML reader, for the loaders (:mod:`detres.data.voc`) and the scorer's
ground truth (:mod:`detres.evaluation.voc_io`): one set of rules for both.

* A file that is missing or not well-formed XML, an ``<object>`` without ``<name>`` or
  ``<bndbox>``, a coordinate that is not a finite number: :class:`VocFormatError` naming the
  file and the object.
* ``<difficult>``: missing or empty is 0; an integer, non-zero meaning difficult (the devkit
  reads it with ``int()``); anything else is an error.
* Coordinates are kept as written: 1-based, possibly floats.
* A reversed box (``xmax < xmin`` or ``ymax < ymin``) is not an error: it is kept with
  ``reversed=True`` and both readers drop it with a warning that counts them (a labeling tool
  slip should not stop a run; the devkit would give it a negative area).
* ``<size>``: ``(height, width)``, or None when it is missing or zero (LabelImg writes 0x0
  when it could not read the image): the image file's header says then. A ``<size>`` with a
  dimension that is not a number is an error.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from detres.utils.errors import InputError


class VocFormatError(InputError):
    """A VOC XML file that does not follow the format; names the file (and object)."""


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written (1-based)
    difficult: bool
    index: int  # position among the file's objects, for messages

    @property
    def reversed(self) -> bool:
        x1, y1, x2, y2 = self.box
        return x2 < x1 or y2 < y1


@dataclass
class VocAnnotation:
    file: Path
    filename: str  # <filename>, "" when absent
    path: str  # <path>, "" when absent (often a stale absolute path)
    size: tuple[int, int] | None  # (height, width), None when missing or zero
    objects: list[VocObject] = field(default_factory=list)


def _child_text(node: ET.Element, tag: str) -> str:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else ""


def _number(node: ET.Element, tag: str, file: Path, what: str) -> float:
    s = _child_text(node, tag)
    if not s:
        raise VocFormatError(f"{file}: {what} has no <{tag}>")
    try:
        v = float(s)
    except ValueError:
        raise VocFormatError(f"{file}: {what}: <{tag}> is not a number: {s!r}") from None
    if not math.isfinite(v):
        raise VocFormatError(f"{file}: {what}: <{tag}> is not finite: {s!r}")
    return v


def read_voc_xml(file: str | Path) -> VocAnnotation:
    """One VOC XML file (see the module docstring for the rules)."""
    file = Path(file)
    try:
        root = ET.parse(file).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation file {file} does not exist") from None
    except ET.ParseError as e:
        raise VocFormatError(f"{file}: malformed XML: {e}") from None
    size = None
    node = root.find("size")
    if node is not None and (node.find("width") is not None or node.find("height") is not None):
        w = _number(node, "width", file, "<size>")
        h = _number(node, "height", file, "<size>")
        size = (int(h), int(w)) if w > 0 and h > 0 else None
    ann = VocAnnotation(file=file, filename=_child_text(root, "filename"),
                        path=_child_text(root, "path"), size=size)
    for k, obj in enumerate(root.findall("object")):
        what = f"object #{k}"
        name = _child_text(obj, "name")
        if not name:
            raise VocFormatError(f"{file}: {what} has no <name>")
        what = f"{what} ({name})"
        dt = _child_text(obj, "difficult") or "0"
        try:
            difficult = int(dt) != 0
        except ValueError:
            raise VocFormatError(f"{file}: {what}: <difficult> must be an integer (0 or 1), "
                                 f"got {dt!r}") from None
        bb = obj.find("bndbox")
        if bb is None:
            raise VocFormatError(f"{file}: {what} has no <bndbox>")
        box = tuple(_number(bb, t, file, what) for t in ("xmin", "ymin", "xmax", "ymax"))
        ann.objects.append(VocObject(name=name, box=box, difficult=difficult,  # type: ignore[arg-type]
                                     index=k))
    return ann
