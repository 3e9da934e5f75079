"""Data: readers for COCO JSON, VOC XML, YOLO txt, ImageFolder, CIFAR and the embedded
synthetic sets; albumentations pipelines; batching. Format readers register in
``catalog.DATASET_FORMATS``."""

import cv2

# Imported to register their formats and generators.
from detres.data import (  # noqa: F401
    cifar,
    coco,
    demo_det,
    imagefolder,
    synthetic_cls,
    voc,
    yolo,
)
from detres.data.catalog import CATALOG, DATASET_FORMATS, GENERATORS, build_source

# One OpenCV thread: DataLoader workers are the parallelism, and a worker forked from a
# parent whose OpenCV thread pool is running can deadlock when it touches that pool.
cv2.setNumThreads(1)

__all__ = ["CATALOG", "DATASET_FORMATS", "GENERATORS", "build_source"]
