"""Decoding image files: one function for every loader and for ``tools/predict.py``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from detres.utils.errors import FileReadError

__all__ = ["load_image"]


def load_image(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file with cv2 as ``HxWx3`` uint8 RGB; a missing or undecodable file, or
    one whose size differs from the annotation's, is an error naming the file."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)  # unlike imread, non-ASCII paths work
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"image file {path} does not exist") from None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise FileReadError(f"image file {path} could not be decoded (empty or broken)")
    if expected_hw is not None and img.shape[:2] != tuple(expected_hw):
        raise FileReadError(f"image file {path} is {img.shape[1]}x{img.shape[0]} (w x h) but its "
                         f"annotation says {expected_hw[1]}x{expected_hw[0]}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
