"""Data: readers for COCO JSON, VOC XML, ImageFolder, CIFAR and the embedded synthetic sets;
albumentations pipelines; batching. Format readers register in ``catalog.DATASET_FORMATS``."""

from detres.data.catalog import CATALOG, DATASET_FORMATS, GENERATORS, build_source

__all__ = ["CATALOG", "DATASET_FORMATS", "GENERATORS", "build_source"]
