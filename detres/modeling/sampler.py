"""Balanced positive / negative sampling for the whole batch at once.

Per image: up to ``int(batch_size_per_image * positive_fraction)`` positives drawn at random,
then negatives to fill ``batch_size_per_image`` (torchvision's / Detectron2's rule). The
draw is vectorized: every element gets a random key, and an element is kept when its rank
among the image's positives (or negatives) is below that image's quota.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rank_among(mask: Tensor, keys: Tensor) -> Tensor:
    """Rank ``(N, P)`` of each True element of ``mask`` by ``keys`` within its row."""
    keyed = torch.where(mask, keys, torch.full_like(keys, 2.0))  # False elements sort last
    order = keyed.argsort(dim=1)
    ranks = torch.empty_like(order)
    ar = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, ar)


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
        pos_mask = positive & (_rank_among(positive, keys) < num_pos[:, None])
        neg_mask = negative & (_rank_among(negative, keys) < num_neg[:, None])
        return pos_mask, neg_mask
