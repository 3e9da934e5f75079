"""Box <-> delta encoding of R-CNN (Girshick et al.), the same arithmetic as torchvision's
``BoxCoder`` but broadcasting over any leading shape, so one call serves a whole batch.

Deltas are ``(dx, dy, dw, dh)`` scaled by ``weights``: ``(1, 1, 1, 1)`` for the RPN and
``(10, 10, 5, 5)`` for the ROI heads. ``dw``/``dh`` are clamped at ``log(1000 / 16)`` before
``exp`` when decoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as deltas relative to reference boxes (anchors / proposals) and back."""

    def __init__(
        self,
        *,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        if len(weights) != 4:
            raise ValueError(
                f"box coder weights must have 4 values (wx, wy, ww, wh), got {weights}"
            )
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, gt_boxes: Tensor, boxes: Tensor) -> Tensor:
        """Deltas ``(..., 4)`` that take ``boxes`` to ``gt_boxes`` (shapes broadcast)."""
        wx, wy, ww, wh = self.weights
        ex_w = boxes[..., 2] - boxes[..., 0]
        ex_h = boxes[..., 3] - boxes[..., 1]
        ex_x = boxes[..., 0] + 0.5 * ex_w
        ex_y = boxes[..., 1] + 0.5 * ex_h
        gt_w = gt_boxes[..., 2] - gt_boxes[..., 0]
        gt_h = gt_boxes[..., 3] - gt_boxes[..., 1]
        gt_x = gt_boxes[..., 0] + 0.5 * gt_w
        gt_y = gt_boxes[..., 1] + 0.5 * gt_h
        dx = wx * (gt_x - ex_x) / ex_w
        dy = wy * (gt_y - ex_y) / ex_h
        dw = ww * torch.log(gt_w / ex_w)
        dh = wh * torch.log(gt_h / ex_h)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Boxes ``(..., 4)`` from ``deltas (..., 4)`` applied to ``boxes`` (shapes broadcast).

        For class-specific deltas pass ``deltas (R, K, 4)`` and ``boxes (R, 1, 4)``.
        """
        boxes = boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = boxes[..., 2] - boxes[..., 0]
        heights = boxes[..., 3] - boxes[..., 1]
        ctr_x = boxes[..., 0] + 0.5 * widths
        ctr_y = boxes[..., 1] + 0.5 * heights

        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        return torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h),
            dim=-1,
        )
