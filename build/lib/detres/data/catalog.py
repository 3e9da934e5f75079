"""Named data sets under a data root (``data.root``, ``$DETRES_DATA`` or ``<repo>/data``).

A :class:`~detres.config.DatasetCfg` either names a catalog entry (``name: coco_2017_val``)
or describes a custom set by path (``format: coco, path: ann.json, images: img_dir``).
Relative paths resolve against the data root. Format builders live in the format modules
and are registered in ``detres/data/__init__.py``; an entry may also name a generator that
writes an embedded synthetic set on first use.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from detres.config import DatasetCfg
from detres.registry import Registry
from detres.utils.errors import InputError, UnknownNameError

#: format name -> builder(*, path: Path, images: Path | None, split: str, name: str) -> source
DATASET_FORMATS = Registry("dataset format")
#: generator name -> fn(root: Path) -> None, writing an embedded set under root if missing
GENERATORS = Registry("dataset generator")

# name -> fields of DatasetCfg (+ optional "generator"); paths relative to the data root.
CATALOG: dict[str, dict[str, Any]] = {
    # --- classification ---------------------------------------------------------------
    "synthetic_cls_train": {
        "format": "synthetic_cls",
        "path": "synthetic_cls",
        "split": "train",
        "generator": "synthetic_cls",
    },
    "synthetic_cls_val": {
        "format": "synthetic_cls",
        "path": "synthetic_cls",
        "split": "val",
        "generator": "synthetic_cls",
    },
    "synthetic_cls_hard_train": {
        "format": "synthetic_cls",
        "path": "synthetic_cls_hard",
        "split": "train",
        "generator": "synthetic_cls_hard",
    },
    "synthetic_cls_hard_val": {
        "format": "synthetic_cls",
        "path": "synthetic_cls_hard",
        "split": "val",
        "generator": "synthetic_cls_hard",
    },
    "imagenet_train": {"format": "imagefolder", "path": "imagenet/train"},
    "imagenet_val": {"format": "imagefolder", "path": "imagenet/val"},
    "cifar10_train": {"format": "cifar10", "path": "cifar-10-batches-py", "split": "train"},
    "cifar10_test": {"format": "cifar10", "path": "cifar-10-batches-py", "split": "test"},
    "cifar100_train": {"format": "cifar100", "path": "cifar-100-python", "split": "train"},
    "cifar100_test": {"format": "cifar100", "path": "cifar-100-python", "split": "test"},
    # --- detection --------------------------------------------------------------------
    "coco_2017_train": {
        "format": "coco",
        "path": "coco/annotations/instances_train2017.json",
        "images": "coco/train2017",
    },
    "coco_2017_val": {
        "format": "coco",
        "path": "coco/annotations/instances_val2017.json",
        "images": "coco/val2017",
    },
    "coco_2014_train": {
        "format": "coco",
        "path": "coco/annotations/instances_train2014.json",
        "images": "coco/train2014",
    },
    "coco_2014_val": {
        "format": "coco",
        "path": "coco/annotations/instances_val2014.json",
        "images": "coco/val2014",
    },
    "voc_2007_trainval": {"format": "voc", "path": "VOCdevkit/VOC2007", "split": "trainval"},
    "voc_2007_train": {"format": "voc", "path": "VOCdevkit/VOC2007", "split": "train"},
    "voc_2007_val": {"format": "voc", "path": "VOCdevkit/VOC2007", "split": "val"},
    "voc_2007_test": {"format": "voc", "path": "VOCdevkit/VOC2007", "split": "test"},
    "voc_2012_trainval": {"format": "voc", "path": "VOCdevkit/VOC2012", "split": "trainval"},
    "voc_2012_train": {"format": "voc", "path": "VOCdevkit/VOC2012", "split": "train"},
    "voc_2012_val": {"format": "voc", "path": "VOCdevkit/VOC2012", "split": "val"},
    # The embedded detection demo set, written in both layouts on first use.
    "demo_coco_train": {
        "format": "coco",
        "path": "demo_det/annotations/instances_train.json",
        "images": "demo_det/images",
        "generator": "demo_det",
    },
    "demo_coco_val": {
        "format": "coco",
        "path": "demo_det/annotations/instances_val.json",
        "images": "demo_det/images",
        "generator": "demo_det",
    },
    "demo_voc_train": {
        "format": "voc",
        "path": "demo_det/VOCdevkit/VOCdemo",
        "split": "train",
        "generator": "demo_det",
    },
    "demo_voc_val": {
        "format": "voc",
        "path": "demo_det/VOCdevkit/VOCdemo",
        "split": "val",
        "generator": "demo_det",
    },
}


DETECTION_FORMATS = ("coco", "voc", "yolo")


def format_of(ds: DatasetCfg) -> str:
    """The format of a catalog name or a custom set (nothing is read or generated)."""
    if ds.format:
        return ds.format
    if ds.name not in CATALOG:
        raise UnknownNameError(
            f"unknown dataset {ds.name!r}; catalog names: {', '.join(sorted(CATALOG))}"
            " (or give format/path for a custom set)"
        )
    return str(CATALOG[ds.name]["format"])


def resolve(ds: DatasetCfg, root: Path) -> tuple[str, Path, Path | None, str, str]:
    """(format, path, images, split, label) for a catalog name or a custom set."""
    if ds.format:
        fmt, path, images, split, gen = ds.format, ds.path, ds.images, ds.split, None
        if not path:
            raise InputError(f"dataset {ds.name or '<unnamed>'!r}: format {fmt!r} needs 'path'")
    else:
        if ds.name not in CATALOG:
            raise UnknownNameError(
                f"unknown dataset {ds.name!r}; catalog names: {', '.join(sorted(CATALOG))}"
                " (or give format/path for a custom set)"
            )
        e = CATALOG[ds.name]
        fmt, path, images, split = e["format"], e["path"], e.get("images", ""), e.get("split", "")
        gen = e.get("generator")
        split = ds.split or split
    if gen is not None:
        GENERATORS.get(gen)(root)
    p = Path(path) if Path(path).is_absolute() else root / path
    im = None
    if images:
        im = Path(images) if Path(images).is_absolute() else root / images
    return fmt, p, im, split, ds.name or label_from_path(p, split)


def label_from_path(path: Path, split: str = "") -> str:
    """A short, file-name-safe label for a custom set given by path: ``val.json`` -> ``val``,
    ``VOCdevkit/VOC2007`` + ``test`` -> ``VOC2007_test``."""
    base = path.stem if path.suffix else path.name
    return safe_name(f"{base}_{split}" if split else base)


def safe_name(label: str) -> str:
    """``label`` with anything but letters, digits, ``.``, ``-``, ``_`` replaced (a file name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "dataset"


def build_source(ds: DatasetCfg, root: Path, **options: Any) -> Any:
    """The raw data source (records or samples, before transforms) for one data set;
    ``options`` go to the format's builder (detection: ``strict_boxes``)."""
    fmt, path, images, split, label = resolve(ds, root)
    if ds.val_fraction:
        options.update(val_fraction=ds.val_fraction, split_seed=ds.split_seed)
    if ds.classes:
        options["class_names"] = list(ds.classes)
    builder = DATASET_FORMATS.get(fmt)
    takes = inspect.signature(builder).parameters
    for key, opt in (("val_fraction", "val_fraction"), ("classes", "class_names")):
        if opt in options and opt not in takes:
            raise InputError(f"data set {label!r}: format {fmt!r} takes no {key!r} (a VOC "
                             "folder's option)")
    return builder(path=path, images=images, split=split, name=label, **options)
