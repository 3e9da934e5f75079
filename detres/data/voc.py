"""PASCAL VOC XML detection sets: VOC2007/VOC2012, and folders of XML files as labeling tools
write them (LabelImg, CVAT, Roboflow).

``path`` is a folder. The devkit layout (``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``,
``ImageSets/Main/<split>.txt``) is read as it is. A folder without ``ImageSets/`` takes its
XML files from ``Annotations/``, ``annotations/`` or the folder itself, and finds each
image by the XML's ``<filename>`` in ``images`` (the config key), ``JPEGImages/``,
``images/``, the XML folder or the folder itself, forgiving a different case or extension
and falling back to the base name of ``<path>`` (often a stale absolute path) and to the
XML's own name. Its split is every image (``split: ""`` or ``all``), or ``train`` / ``val``
with ``val_fraction`` held out by ``split_seed``: the same files always split the same way.

Classes: ``class_names`` (the config's ``classes``) if given, else ``classes.txt`` (one name
per line, in label order), else the 20 PASCAL classes for a ``VOC<year>`` folder, else the
names the annotations use, sorted (logged; the trainer records them in ``OUT/config.yaml``
so that evaluation uses the same list). ``category_ids`` are 1..K.

Box convention: VOC coordinates are 1-based inclusive pixel indices. As in Detectron2 and
torchvision we subtract 1 from ``xmin`` and ``ymin`` only, giving 0-based continuous boxes
``(xmin - 1, ymin - 1, xmax, ymax)`` whose width ``xmax - xmin + 1`` equals the devkit's
inclusive width. :func:`to_voc_boxes` converts back for the devkit scoring rules.
Coordinates may be floats; a missing ``<difficult>`` is 0 and a missing ``<size>`` is read
from the image file.

Difficult objects are kept with ``difficult=True`` (the evaluator ignores them; training
leaves them out unless ``data.use_difficult``). Malformed XML, a missing tag, an unknown
class or a non-finite coordinate are errors naming the file. A box partly outside its image
is clipped to it, and a box with ``xmax < xmin`` or nothing left after clipping is dropped
(one warning per image set with the counts and the first files; ``strict_boxes``: errors).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from detres.data.catalog import DATASET_FORMATS
from detres.data.det_source import DetSource, Record
from detres.data.image_io import header_info
from detres.formats.voc_xml import VocAnnotation, VocFormatError, read_voc_xml

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_class_names(root: Path) -> list[str] | None:
    """``<root>/classes.txt`` (one unique name per line, in label order), or None."""
    f = root / "classes.txt"
    if not f.is_file():
        return None
    names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    if not names or len(set(names)) != len(names):
        raise VocFormatError(f"{f}: expected one unique class name per line, got {names}")
    return names


def xml_class_names(xml_files: list[Path]) -> list[str]:
    """The class names the files' objects use, sorted."""
    return sorted({o.name for f in xml_files for o in read_voc_xml(f).objects})


def parse_voc_xml(
    xml_file: Path, class_index: dict[str, int], *, strict_boxes: bool = False,
    image_size: tuple[int, int] | None = None, ann: VocAnnotation | None = None,
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(height, width, boxes (M, 4) 0-based continuous, labels 1..K, difficult, boxes
    clipped to the image, boxes dropped: ``xmax < xmin`` or empty after clipping) of one
    file (read by :func:`detres.formats.voc_xml.read_voc_xml`); ``image_size`` (h, w) when
    the file has no usable ``<size>``."""
    ann = read_voc_xml(xml_file) if ann is None else ann
    if ann.size is None and image_size is None:
        raise VocFormatError(f"{xml_file}: no <size>")
    h, w = ann.size if ann.size is not None else image_size  # type: ignore[misc]
    boxes, labels, difficult = [], [], []
    n_reversed = 0
    for obj in ann.objects:
        what = f"object #{obj.index} ({obj.name})"
        if obj.name not in class_index:
            raise VocFormatError(
                f"{xml_file}: object #{obj.index}: unknown class {obj.name!r}; known: "
                f"{sorted(class_index)}. The list comes from the config's data set 'classes', "
                "else classes.txt in the set's folder (one name per line), else the names in "
                "the training annotations (the 20 PASCAL classes for a VOC<year> folder)")
        box = list(obj.box)
        if obj.reversed:
            if strict_boxes:
                raise VocFormatError(f"{xml_file}: {what}: xmax < xmin or ymax < ymin in "
                                     f"{box} (data.strict_boxes=true)")
            n_reversed += 1
            continue
        if strict_boxes and (box[0] < 0 or box[1] < 0 or box[2] > w + 1 or box[3] > h + 1):
            raise VocFormatError(f"{xml_file}: {what}: box {box} outside the "
                                 f"{w}x{h} image (data.strict_boxes=true)")
        difficult.append(obj.difficult)
        boxes.append(box)
        labels.append(class_index[obj.name])
    raw = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    outside = (raw[:, 0] < 0) | (raw[:, 1] < 0) | (raw[:, 2] > w + 1) | (raw[:, 3] > h + 1)
    b = from_voc_boxes(raw)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # nothing left inside: dropped
    lab, diff = np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool)
    n_out = int((outside & keep).sum())
    return h, w, b[keep], lab[keep], diff[keep], n_out, int((~keep).sum()) + n_reversed


class _ImageFinder:
    """Finds the image of a loose VOC file among a few folders (listed once)."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        for d in self.dirs:
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    self.by_name.setdefault(f.name.lower(), f)
                    self.by_stem.setdefault(f.stem.lower(), f)

    def find(self, xml_file: Path, ann: VocAnnotation) -> Path:
        tried = [re.split(r"[\\/]", t)[-1] for t in (ann.filename, ann.path) if t]
        tried.append(xml_file.stem)
        for name in tried:
            hit = self.by_name.get(name.lower()) or self.by_stem.get(Path(name).stem.lower())
            if hit is not None:
                return hit
        raise VocFormatError(f"{xml_file}: no image {' or '.join(dict.fromkeys(tried))} "
                             f"(any case, {'/'.join(IMAGE_SUFFIXES)}) in "
                             f"{', '.join(str(d) for d in self.dirs)}; set the data set's "
                             "'images' to the folder that holds them")


def find_xml_dir(root: Path) -> Path:
    """The folder of a loose set's XML files: ``Annotations/``, ``annotations/``, the folder
    itself, else its one sub-folder that holds them, whatever its name (``annots/``, ``xml/``,
    ``labels/``); several such sub-folders, or none, is an error that names what it found and
    the keys to write."""
    for d in (root / "Annotations", root / "annotations", root):
        if d.is_dir() and any(d.glob("*.xml")):
            return d
    if not root.is_dir():
        raise FileNotFoundError(f"VOC set {root}: no such folder")
    subs = sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*.xml")))
    if len(subs) == 1:
        logger.info("%s: XML annotations found in %s/", root, subs[0].name)
        return subs[0]
    if subs:
        names = ", ".join(f"{d.name}/ ({sum(1 for _ in d.glob('*.xml'))} files)" for d in subs)
        raise VocFormatError(f"VOC set {root}: XML files in several sub-folders: {names}; give "
                             f"the one to use as the set's path, e.g. {{format: voc, path: "
                             f"{subs[0]}, images: <the images' folder>}}")
    found = {}
    for f in root.rglob("*"):
        if f.suffix.lower() in (".xml", ".txt", ".json") and f.is_file():
            found.setdefault(f.suffix.lower(), f.parent)
    hint = ""
    if ".xml" in found:
        hint = (f"; XML files are in {found['.xml']}: {{format: voc, path: {found['.xml']}, "
                f"images: <the images' folder>}}")
    elif ".txt" in found:
        hint = f"; .txt files are in {found['.txt']}: a YOLO set? {{format: yolo, path: {root}}}"
    elif ".json" in found:
        hint = f"; a .json file is in {found['.json']}: a COCO set? {{format: coco, path: <it>}}"
    raise FileNotFoundError(f"VOC set {root}: no .xml files in Annotations/, annotations/, the "
                            f"folder itself or one of its sub-folders{hint}")


def split_ids(ids: list[str], split: str, val_fraction: float, seed: int, where: str
              ) -> list[str]:
    """A loose set's ``split``: all ids, or the ``train`` / ``val`` part of a deterministic
    draw (sorted ids permuted by ``seed``; ``round(val_fraction * n)`` held out)."""
    if split in ("", "all") and not val_fraction:
        return ids
    if split not in ("train", "val"):
        raise VocFormatError(f"{where}: no ImageSets/Main/{split}.txt; a folder without image "
                             "sets takes split '' (all images) or 'train' / 'val' with "
                             "val_fraction")
    if not 0 < val_fraction < 1:
        raise VocFormatError(f"{where}: split {split!r} without ImageSets/ needs val_fraction "
                             f"in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, round(val_fraction * len(ids)))
    val = {ids[i] for i in order[:n_val]}
    return [i for i in ids if (i in val) == (split == "val")]


def load_voc(root: str | Path, split: str, *, name: str = "",
             class_names: list[str] | None = None, strict_boxes: bool = False,
             images: str | Path | None = None, val_fraction: float = 0.0,
             split_seed: int = 0) -> DetSource:
    """Records for the image set ``split`` of a VOC folder ``root`` (the devkit layout or a
    labeling tool's; see the module docstring)."""
    root = Path(root).resolve()
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    devkit = (root / "Annotations").is_dir() and ids_file.is_file()
    if devkit:
        ids = [ln.split()[0] for ln in ids_file.read_text().splitlines() if ln.strip()]
        xml_dir = root / "Annotations"
        xmls = [xml_dir / f"{i}.xml" for i in ids]
    else:
        if (root / "ImageSets" / "Main").is_dir() and not val_fraction:
            if not split:
                raise VocFormatError(f"VOC set {root}: 'split' (an image set such as "
                                     "trainval) is required")
            raise FileNotFoundError(f"VOC image set {ids_file} does not exist")
        xml_dir = find_xml_dir(root)
        by_id = {f.stem: f for f in sorted(xml_dir.glob("*.xml"))}
        ids = split_ids(sorted(by_id), split, val_fraction, split_seed, str(root))
        xmls = [by_id[i] for i in ids]
    source = "the config"
    names = list(class_names) if class_names is not None else read_class_names(root)
    if names is None and re.fullmatch(r"VOC\d{4}", root.name):
        names, source = list(VOC_CLASSES), "PASCAL VOC"
    elif names is None:
        names = xml_class_names(xmls)
        source = "its annotations"
        logger.info("%s: classes from its annotations: %s", root, names)
        if not names:
            raise VocFormatError(f"VOC set {root} ({split}): no objects in its annotations to "
                                 "take class names from; give classes.txt or 'classes'")
    elif class_names is None:
        source = "classes.txt"
    class_index = {n: k + 1 for k, n in enumerate(names)}
    finder = _ImageFinder([Path(images) if images else root / "JPEGImages",
                           root / "JPEGImages", root / "images", xml_dir, root])
    records: list[Record] = []
    clipped: list[str] = []
    n_clipped = n_dropped = 0
    for image_id, xml_file in zip(ids, xmls, strict=True):
        tree = read_voc_xml(xml_file)
        default = root / "JPEGImages" / f"{image_id}.jpg"
        if devkit and default.is_file():
            file = default
        else:
            try:
                file = finder.find(xml_file, tree)
            except VocFormatError:
                if devkit:
                    file = default  # read (and reported) when the image is loaded
                else:
                    raise
        image_size = _image_hw(file, xml_file) if tree.size is None else None
        h, w, boxes, labels, diff, n_out, n_empty = parse_voc_xml(
            xml_file, class_index, strict_boxes=strict_boxes, image_size=image_size, ann=tree)
        if n_out or n_empty:
            clipped.append(xml_file.name)
        n_clipped, n_dropped = n_clipped + n_out, n_dropped + n_empty
        records.append({
            "image_id": image_id,
            "file": str(file),
            "height": h,
            "width": w,
            "boxes": torch.from_numpy(boxes),
            "classes": torch.from_numpy(labels),
            "iscrowd": torch.zeros(len(labels), dtype=torch.bool),
            "difficult": torch.from_numpy(diff),
        })
    if clipped:
        shown = ", ".join(clipped[:5]) + (" ..." if len(clipped) > 5 else "")
        warnings.warn(f"{xml_dir} ({split or 'all'}): clipped {n_clipped} box(es) extending "
                      f"past their image and dropped {n_dropped} left empty or reversed "
                      f"(xmax < xmin), in {len(clipped)} file(s): {shown} (data.strict_boxes=true "
                      "makes this an error)", stacklevel=2)
    m = re.search(r"VOC(\d{4})", root.name)
    logger.info("%s/%s: %d images, classes from %s", root, split, len(records), source)
    return DetSource(name=name or f"{root}:{split}", format="voc", records=records,
                     class_names=names, category_ids=list(range(1, len(names) + 1)),
                     path=root, split=split, year=m.group(1) if m else "",
                     clipped=n_clipped, dropped=n_dropped,
                     classes_inferred=source == "its annotations")


def _image_hw(file: Path, xml_file: Path) -> tuple[int, int]:
    """(height, width) from an image file's header, upright (EXIF orientation applied, as the
    loader decodes it), for an XML without a usable <size>."""
    try:
        return header_info(file)[1]
    except Exception as e:
        raise VocFormatError(f"{xml_file}: no <size>, and its image {file} cannot be read "
                             f"({type(e).__name__}: {e})") from None


@DATASET_FORMATS.register("voc")
def build_voc_source(*, path: Path, images: Path | None = None, split: str = "",
                     name: str = "", strict_boxes: bool = False, val_fraction: float = 0.0,
                     split_seed: int = 0, class_names: list[str] | None = None) -> DetSource:
    """Catalog builder: ``path`` is the VOC folder, ``split`` the image set or the part of a
    loose folder (see :func:`load_voc`)."""
    return load_voc(path, split, name=name, strict_boxes=strict_boxes, images=images,
                    val_fraction=val_fraction, split_seed=split_seed, class_names=class_names)
