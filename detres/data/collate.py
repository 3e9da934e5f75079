"""Batching for detection: images zero-padded (bottom/right) to one size, a multiple of
``size_divisibility``, and per-image target dicts.

A sample (from :class:`detres.data.det_loader.DetDataset`) is ``{"image": Tensor[3, h, w],
"gt_boxes": Tensor[M, 4] (resized pixels), "gt_classes": Tensor[M] (1..K), "image_id",
"orig_size": (H, W), "image_size": (h, w), "scale": Tensor[2] (sx, sy)}``; the batch is
``(Tensor[N, 3, Hp, Wp], [target dict without "image"] * N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch


def pad_images(images: Sequence[torch.Tensor], size_divisibility: int = 32) -> torch.Tensor:
    """Stack ``Tensor[C, h_i, w_i]`` into ``Tensor[N, C, Hp, Wp]``, zero-padded at the bottom
    and right; Hp, Wp are the largest h, w rounded up to a multiple of ``size_divisibility``."""
    if not images:
        raise ValueError("pad_images: no images")
    c = images[0].shape[0]
    if any(im.dim() != 3 or im.shape[0] != c for im in images):
        raise ValueError(f"pad_images: expected Tensor[C, H, W] with one C, got "
                         f"{[tuple(im.shape) for im in images]}")
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    if size_divisibility > 1:
        h = math.ceil(h / size_divisibility) * size_divisibility
        w = math.ceil(w / size_divisibility) * size_divisibility
    out = images[0].new_zeros((len(images), c, h, w))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]].copy_(im)
    return out


def collate_detection(
    batch: Sequence[dict[str, Any]], size_divisibility: int = 32
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``(images Tensor[N, 3, Hp, Wp], targets list[dict])`` from a list of samples."""
    images = pad_images([s["image"] for s in batch], size_divisibility)
    targets = [{k: v for k, v in s.items() if k != "image"} for s in batch]
    return images, targets


def make_collate(size_divisibility: int = 32) -> partial[tuple[torch.Tensor, list[dict[str, Any]]]]:
    """A picklable collate function for a DataLoader (worker processes)."""
    return partial(collate_detection, size_divisibility=size_divisibility)
