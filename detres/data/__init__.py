"""Data: readers for COCO JSON, VOC XML, ImageFolder, CIFAR and the embedded synthetic sets;
albumentations pipelines; batching. Format readers register in ``catalog.DATASET_FORMATS``."""

# Imported to register their formats and generators.
from detres.data import (  # noqa: F401
    cifar,
    coco,
    demo_det,
    imagefolder,
    synthetic_cls,
    voc,
)
from detres.data.catalog import CATALOG, DATASET_FORMATS, GENERATORS, build_source

__all__ = ["CATALOG", "DATASET_FORMATS", "GENERATORS", "build_source"]
