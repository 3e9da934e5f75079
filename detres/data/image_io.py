"""Decoding image files: one function for every loader, ``tools/predict.py`` (and so the
inputs an exported file is run on) and the image check.

One rule everywhere: OpenCV's. ``cv2.imdecode`` of the file's bytes (unlike ``imread``, any
path works); where libjpeg gives up on a truncated file (``imdecode`` returns nothing),
``cv2.imread`` of the path, which keeps what it decoded, as PIL with truncated loading and
image viewers show it. EXIF orientation is applied (OpenCV's ``IMREAD_COLOR`` default, as
Detectron2's ``read_image`` and Ultralytics do), so a photo taken sideways is loaded upright
and its annotation's size is compared with the upright size. Grayscale, CMYK and palette
images load as 3-channel RGB; a PNG named ``.jpg`` loads by its content."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detres.utils.errors import FileReadError

__all__ = ["decode_image", "header_info", "load_image"]

#: EXIF orientations that swap width and height (transpose, rotate 90 / 270, transverse)
_SWAPS = {5, 6, 7, 8}


def header_info(path: str | Path) -> tuple[str | None, tuple[int, int]]:
    """``(format, (height, width))`` from the file's header (PIL reads it without decoding),
    the size upright, as :func:`decode_image` returns it (EXIF orientation applied). A file
    PIL cannot identify raises ``OSError`` / ``ValueError``."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orient = im.getexif().get(0x0112, 1)
            return im.format, ((w, h) if orient in _SWAPS else (h, w))
    except (UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"{path}: not an image PIL knows ({e})") from None


def decode_image(path: str | Path) -> tuple[np.ndarray, str]:
    """``(HxWx3 uint8 RGB, the decoder that read it: "imdecode" | "imread")``; a missing or
    undecodable file is an error naming it."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"image file {path} does not exist") from None
    how = "imdecode"
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None and buf.size:
        how = "imread"
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileReadError(f"image file {path} could not be decoded (empty or broken)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), how


def load_image(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file as ``HxWx3`` uint8 RGB (:func:`decode_image`); a missing or
    undecodable file, or one whose size differs from the annotation's, is an error naming the
    file."""
    img, _ = decode_image(path)
    if expected_hw is not None and img.shape[:2] != tuple(expected_hw):
        raise FileReadError(f"image file {path} is {img.shape[1]}x{img.shape[0]} (w x h) but its "
                         f"annotation says {expected_hw[1]}x{expected_hw[0]}")
    return img
