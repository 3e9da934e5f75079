"""Batching for detection: images zero-padded (bottom/right) to one size, a multiple of
``size_divisibility`` (:func:`detres.preprocess.pad_batch`), and per-image target dicts.

A sample (from :class:`detres.data.det_loader.DetDataset`) is ``{"image": Tensor[3, h, w],
"gt_boxes": Tensor[M, 4] (resized pixels), "gt_classes": Tensor[M] (1..K), "image_id",
"orig_size": (H, W), "image_size": (h, w), "scale": Tensor[2] (sx, sy)}``; the batch is
``(Tensor[N, 3, Hp, Wp], [target dict without "image"] * N)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from detres.preprocess import pad_batch


def collate_detection(
    batch: Sequence[dict[str, Any]], size_divisibility: int = 32
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``(images Tensor[N, 3, Hp, Wp], targets list[dict])`` from a list of samples."""
    images = pad_batch([s["image"] for s in batch], size_divisibility)
    targets = [{k: v for k, v in s.items() if k != "image"} for s in batch]
    return images, targets


def make_collate(size_divisibility: int = 32) -> partial[tuple[torch.Tensor, list[dict[str, Any]]]]:
    """A picklable collate function for a DataLoader (worker processes)."""
    return partial(collate_detection, size_divisibility=size_divisibility)
