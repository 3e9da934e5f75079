"""Balanced positive / negative sampling for the whole batch at once.

Per image: up to ``int(batch_size_per_image * positive_fraction)`` positives drawn at random,
then negatives to fill ``batch_size_per_image`` (torchvision's / Detectron2's rule). The
draw is vectorized: every element gets a random key, and an element is kept when its rank
among the image's positives (or negatives) is below that image's quota -- found with one
``topk`` of the quota's size per row rather than a full sort of the ~20k anchors.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _smallest(mask: Tensor, keys: Tensor, quota: Tensor) -> Tensor:
    """Mask ``(N, P)`` of the ``quota[i]`` True elements of row ``i`` of ``mask`` with the
    smallest ``keys`` (keys in [0, 1))."""
    k = int(quota.max()) if quota.numel() else 0
    out = torch.zeros_like(mask)
    if k == 0:
        return out
    keyed = torch.where(mask, keys, torch.full_like(keys, 2.0))  # False elements last
    idx = keyed.topk(min(k, keyed.shape[1]), dim=1, largest=False).indices  # ascending keys
    take = torch.arange(idx.shape[1], device=idx.device)[None, :] < quota[:, None]
    return out.scatter_(1, idx, take) & mask


class BalancedSampler:
    """Select ``(pos_mask, neg_mask)`` from labels ``(N, P)``: >=1 fg, 0 bg, -1 ignore."""

    def __init__(self, *, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0:
            raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(
        self, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        positive = labels >= 1
        negative = labels == 0
        num_pos = positive.sum(dim=1).clamp(
            max=int(self.batch_size_per_image * self.positive_fraction)
        )
        num_neg = torch.minimum(negative.sum(dim=1), self.batch_size_per_image - num_pos)
        keys = torch.rand(labels.shape, device=labels.device, generator=generator)
        return _smallest(positive, keys, num_pos), _smallest(negative, keys, num_neg)
