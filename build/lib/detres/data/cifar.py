"""CIFAR-10 and CIFAR-100 in their published python-pickle format.

``cifar-10-batches-py/``: ``data_batch_1..5`` (train), ``test_batch``, ``batches.meta``;
``cifar-100-python/``: ``train``, ``test``, ``meta`` (the 100 fine labels are used). Each
batch is a dict with ``b"data"``: uint8 ``[N, 3072]`` (1024 R, then G, then B values of a
32x32 image, row-major) and ``b"labels"`` / ``b"fine_labels"``.

Pickle can run arbitrary code while loading, so only trusted dataset files should be read.
As a second line of defence, files are read with :class:`RestrictedUnpickler`, which
resolves only the few numpy / builtin names that the published files (and numpy-array
pickles in general) need, and refuses every other global with an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detres.data.catalog import DATASET_FORMATS
from detres.utils.errors import FileReadError, InputError
from detres.utils.io import RestrictedUnpickler, UnsafePickleError


def load_pickle(path: Path) -> dict[bytes, Any]:
    """A published CIFAR pickle (a dict with bytes keys); errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, source=str(path), encoding="bytes").load()  # type: ignore[arg-type]
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated / not a pickle
        raise FileReadError(f"cannot read CIFAR pickle {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def _get(d: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key in d:
        return d[key]
    skey = key.decode()
    if skey in d:  # tolerate str keys (files re-pickled under Python 3)
        return d[skey]  # type: ignore[index]
    raise KeyError(f"{path}: missing key {key!r}; has {sorted(map(repr, d))}")


def _names(values: list[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class CifarSource:
    """One split of CIFAR-10/100 held in memory as ``[N, 32, 32, 3]`` uint8 RGB."""

    FILES = {
        ("cifar10", "train"): [f"data_batch_{i}" for i in range(1, 6)],
        ("cifar10", "test"): ["test_batch"],
        ("cifar100", "train"): ["train"],
        ("cifar100", "test"): ["test"],
    }
    META = {
        "cifar10": ("batches.meta", b"label_names", b"labels"),
        "cifar100": ("meta", b"fine_label_names", b"fine_labels"),
    }

    def __init__(self, root: str | Path, *, variant: str, split: str, name: str = "") -> None:
        if variant not in self.META:
            raise InputError(f"unknown CIFAR variant {variant!r}; choose cifar10 or cifar100")
        split = split or "train"
        if (variant, split) not in self.FILES:
            raise InputError(f"{variant} {root}: unknown split {split!r}; choose train or test")
        self.root = Path(root)
        self.variant, self.split = variant, split
        self.name = name or f"{variant}_{split}"
        if not self.root.is_dir():
            raise FileNotFoundError(f"{variant} directory not found: {self.root}")
        meta_file, names_key, labels_key = self.META[variant]
        meta_path = self.root / meta_file
        self.classes = _names(_get(load_pickle(meta_path), names_key, meta_path))
        images, labels = [], []
        for fname in self.FILES[(variant, split)]:
            path = self.root / fname
            d = load_pickle(path)
            data = np.asarray(_get(d, b"data", path))
            lab = np.asarray(_get(d, labels_key, path), dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise InputError(
                    f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}"
                )
            if lab.shape != (data.shape[0],):
                raise InputError(f"{path}: {len(lab)} labels for {data.shape[0]} images")
            if lab.size and (lab.min() < 0 or lab.max() >= len(self.classes)):
                raise InputError(
                    f"{path}: labels outside [0, {len(self.classes)}) "
                    f"(min {lab.min()}, max {lab.max()})"
                )
            # (N, 3072) -> (N, 3, 32, 32) channel planes -> (N, 32, 32, 3) HWC RGB
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab)
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.targets = np.concatenate(labels)

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i].copy(), int(self.targets[i])

    def __repr__(self) -> str:
        return f"CifarSource({self.name!r}, root={str(self.root)!r}, images={len(self)})"


@DATASET_FORMATS.register("cifar10")
def build_cifar10(
    *, path: Path, images: Path | None = None, split: str = "train", name: str = ""
) -> CifarSource:
    """Catalog builder for ``cifar-10-batches-py``; ``split`` is train or test."""
    del images
    return CifarSource(path, variant="cifar10", split=split, name=name)


@DATASET_FORMATS.register("cifar100")
def build_cifar100(
    *, path: Path, images: Path | None = None, split: str = "train", name: str = ""
) -> CifarSource:
    """Catalog builder for ``cifar-100-python`` (fine labels); ``split`` is train or test."""
    del images
    return CifarSource(path, variant="cifar100", split=split, name=name)
