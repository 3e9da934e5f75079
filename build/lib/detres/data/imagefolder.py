"""ImageFolder classification sets (the ImageNet train/val layout ``root/<class>/<image>``).

Class directories are sorted by name and numbered from 0, and files are listed the way
torchvision's ``ImageFolder`` lists them (recursive walk, sorted, same extensions), so
indices and sample order match torchvision's. Images are decoded with OpenCV to RGB uint8.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from detres.data.catalog import DATASET_FORMATS
from detres.data.image_io import load_image

#: torchvision's ``IMG_EXTENSIONS`` (matched case-insensitively)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def read_image_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as ``HxWx3`` uint8 RGB (grey and RGBA become RGB):
    :func:`detres.data.image_io.load_image`."""
    return load_image(path)


def find_classes(root: Path) -> list[str]:
    """Sorted names of the sub-directories of ``root`` (torchvision's ``find_classes``)."""
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder directory not found: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"ImageFolder directory {root} has no class sub-directories "
            "(expected the layout <root>/<class>/<image>)"
        )
    return classes


def list_samples(
    root: Path, classes: list[str], extensions: tuple[str, ...] = IMG_EXTENSIONS
) -> list[tuple[str, int]]:
    """(file, class index) pairs in torchvision's ``make_dataset`` order."""
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for idx, cls in enumerate(classes):
        n0 = len(samples)
        for dirpath, _, fnames in sorted(os.walk(root / cls, followlinks=True)):
            for fname in sorted(fnames):
                if fname.lower().endswith(extensions):
                    samples.append((os.path.join(dirpath, fname), idx))
        if len(samples) == n0:
            empty.append(cls)
    if empty:
        shown = ", ".join(empty[:10]) + (f" ... ({len(empty)} in all)" if len(empty) > 10 else "")
        raise FileNotFoundError(
            f"ImageFolder {root}: no image files ({', '.join(extensions)}) in class "
            f"directories: {shown}"
        )
    return samples


class ImageFolderSource:
    """Samples of an ``root/<class>/<image>`` tree; ``load(i)`` decodes image ``i``."""

    def __init__(self, root: str | os.PathLike[str], *, name: str = "") -> None:
        self.root = Path(root)
        self.name = name or str(self.root)
        self.classes = find_classes(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = list_samples(self.root, self.classes)
        self.targets = np.array([t for _, t in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, int]:
        path, target = self.samples[i]
        return read_image_rgb(path), target

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource({self.name!r}, root={str(self.root)!r}, "
            f"images={len(self)}, classes={len(self.classes)})"
        )


@DATASET_FORMATS.register("imagefolder")
def build_imagefolder(
    *, path: Path, images: Path | None = None, split: str = "", name: str = ""
) -> ImageFolderSource:
    """Catalog builder: ``path`` is the split directory, or its parent when ``split`` is set
    (``path/split``). ``images`` is unused."""
    del images
    root = Path(path) / split if split else Path(path)
    return ImageFolderSource(root, name=name)
