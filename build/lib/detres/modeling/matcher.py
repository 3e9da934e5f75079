"""Assign ground-truth boxes to anchors / proposals by IoU, for a whole batch at once.

GT boxes are padded per image to the batch's largest count (``gt_valid`` marks the real
ones), so one ``(N, M, P)`` IoU tensor and one ``max`` serve every image. The rules are
torchvision's / Detectron2's ``Matcher``: IoU ``>= high`` is a match, ``< low`` is
background (-1), in between is ignored (-2); with ``allow_low_quality_matches`` every
prediction that is a best match of some GT (ties included) keeps that match (the RPN).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from detres.modeling.box_ops import batched_iou

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def pad_gt(gt_boxes: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(N, M, 4)`` zero-padded GT boxes and the ``(N, M)`` validity mask, M = max count."""
    n = len(gt_boxes)
    counts = torch.tensor([len(b) for b in gt_boxes], device=device)
    m = int(counts.max()) if n else 0
    if m == 0:
        return torch.zeros(n, 0, 4, device=device), torch.zeros(
            n, 0, dtype=torch.bool, device=device
        )
    padded = pad_sequence(
        [b.to(device=device, dtype=torch.float32) for b in gt_boxes], batch_first=True
    )
    valid = torch.arange(m, device=device)[None, :] < counts[:, None]
    return padded, valid


class Matcher:
    """IoU matcher over a batch: ``(N, M, P)`` quality -> ``(N, P)`` GT index or -1 / -2."""

    def __init__(
        self,
        *,
        high_threshold: float,
        low_threshold: float,
        allow_low_quality_matches: bool = False,
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError(
                f"matcher low_threshold {low_threshold} > high_threshold {high_threshold}"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality: Tensor, gt_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``matches (N, P)`` int64 and the best IoU ``(N, P)`` (-1 with no GT)."""
        n, m, p = quality.shape
        if m == 0:
            matches = torch.full(
                (n, p), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device
            )
            return matches, torch.full((n, p), -1.0, device=quality.device)
        quality = quality.masked_fill(~gt_valid[:, :, None], -1.0)  # padded GTs never win
        matched_vals, matches = quality.max(dim=1)  # (N, M, P) -> (N, P)
        all_matches = matches
        matches = matches.masked_fill(matched_vals < self.low_threshold, BELOW_LOW_THRESHOLD)
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches = matches.masked_fill(between, BETWEEN_THRESHOLDS)
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=2, keepdim=True).values  # (N, M, 1)
            is_best = (quality == best_per_gt) & gt_valid[:, :, None]  # (N, M, P)
            matches = torch.where(is_best.any(dim=1), all_matches, matches)
        return matches, matched_vals


def match_boxes(
    matcher: Matcher, gt_boxes: list[Tensor], boxes: Tensor, boxes_valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Match ``boxes`` (``(P, 4)`` shared or ``(N, P, 4)``) to each image's GT boxes.

    Returns ``matches (N, P)``, ``matched_vals (N, P)`` and the padded GTs ``(N, M, 4)``.
    Invalid (padding) boxes get ``BETWEEN_THRESHOLDS`` so that they are never sampled.
    """
    gt, gt_valid = pad_gt(gt_boxes, boxes.device)
    quality = batched_iou(gt, boxes.float())  # (N, M, P)
    matches, vals = matcher(quality, gt_valid)
    if boxes_valid is not None:
        matches = matches.masked_fill(~boxes_valid, BETWEEN_THRESHOLDS)
    return matches, vals, gt
