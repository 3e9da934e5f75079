"""Region Proposal Network: head, proposal selection and losses (Ren et al. 2015).

Shape shorthand: N images, C feature channels, L feature levels, A anchors per location,
Hi x Wi size of level i, Ti = Hi * Wi * A anchors of level i, T = sum of Ti, M GT boxes
per image (padded to the batch maximum).

Everything is batched: proposals of all images and levels go through one ``batched_nms``
with ``idxs = image_index * L + level``, and the losses are computed on one ``(N, T)``
label tensor from one batched IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detres.modeling.anchors import AnchorGenerator
from detres.modeling.box_coder import BoxCoder
from detres.modeling.box_ops import (
    batched_nms,
    box_regression_loss,
    clip_boxes,
    image_sizes_tensor,
    keep_topk_per_image,
    nonempty,
    split_by_image,
)
from detres.modeling.matcher import BETWEEN_THRESHOLDS, Matcher, match_boxes
from detres.modeling.sampler import BalancedSampler


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs for objectness (A) and anchor deltas (4A).

    Input: L feature maps ``(N, C, Hi, Wi)``. Output per level: ``objectness_logits
    (N, Ti)`` and ``pred_deltas (N, Ti, 4)`` ordered (y, x, anchor) like the anchors.
    """

    def __init__(self, *, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0.0)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        a = self.objectness_logits.out_channels
        # both 1x1 convs as one (A + 4A outputs): one pass over the shared features per level
        weight = torch.cat([self.objectness_logits.weight, self.anchor_deltas.weight])
        bias = torch.cat([self.objectness_logits.bias, self.anchor_deltas.bias])
        for x in features:
            t = F.relu(self.conv(x), inplace=True)
            both = F.conv2d(t, weight, bias)  # (N, 5A, Hi, Wi)
            n, _, h, w = both.shape
            o, d = both[:, :a], both[:, a:]
            logits.append(o.permute(0, 2, 3, 1).reshape(n, -1))  # (N, A, Hi, Wi) -> (N, Ti)
            d = d.reshape(n, a, 4, h, w)  # (N, A*4, Hi, Wi) -> (N, A, 4, Hi, Wi)
            deltas.append(d.permute(0, 3, 4, 1, 2).reshape(n, -1, 4))  # -> (N, Ti, 4)
        return logits, deltas


@dataclass
class RPNOutput:
    """Raw RPN outputs, one entry per feature level."""

    anchors: list[Tensor]  # (Ti, 4), shared by all images
    objectness_logits: list[Tensor]  # (N, Ti)
    pred_deltas: list[Tensor]  # (N, Ti, 4)


class RPN(nn.Module):
    """Anchors + :class:`RPNHead`; ``proposals()`` for the ROI heads, ``losses()`` to train."""

    def __init__(
        self,
        *,
        in_channels: int,
        anchor_generator: AnchorGenerator,
        pre_nms_topk_train: int = 12000,
        post_nms_topk_train: int = 2000,
        pre_nms_topk_test: int = 6000,
        post_nms_topk_test: int = 1000,
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        bbox_reg_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        smooth_l1_beta: float = 0.0,
        loss_weight: float = 1.0,
        strict_min_size: bool = False,
        rank_by_logits: bool = False,
        normalize_by_batch_size: bool = False,
    ) -> None:
        super().__init__()
        per_loc = anchor_generator.num_anchors_per_location()
        if len(set(per_loc)) != 1:
            raise ValueError(
                f"the shared RPN head needs the same anchor count per level, got {per_loc}"
            )
        self.anchor_generator = anchor_generator
        self.head = RPNHead(in_channels=in_channels, num_anchors=per_loc[0])
        self.box_coder = BoxCoder(weights=bbox_reg_weights)
        self.matcher = Matcher(
            high_threshold=fg_iou_thresh,
            low_threshold=bg_iou_thresh,
            allow_low_quality_matches=True,
        )
        self.sampler = BalancedSampler(
            batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction
        )
        self.topk = {
            True: (pre_nms_topk_train, post_nms_topk_train),
            False: (pre_nms_topk_test, post_nms_topk_test),
        }
        self.nms_thresh = nms_thresh
        # torchvision keeps boxes of at least 1e-3 px; Detectron2 (strict_min_size) keeps those
        # wider and taller than min_box_size (0: every box that is not empty)
        self.strict_min_size = strict_min_size
        self.min_box_size = min_box_size if strict_min_size else max(min_box_size, 1e-3)
        # torchvision ranks proposals (NMS, top-k) by sigmoid probabilities, Detectron2 by the
        # logits: the same order except where float32's sigmoid saturates (logits above ~10
        # collapse onto a few values near 1 and tie, and ties decide NMS and the top-k cut)
        self.rank_by_logits = rank_by_logits
        # the losses' divisor: torchvision's, the anchors actually sampled; Detectron2's
        # (normalize_by_batch_size), batch_size_per_image x images, which differs where an
        # image has fewer anchors to sample than that
        self.normalize_by_batch_size = normalize_by_batch_size
        self.batch_size_per_image = batch_size_per_image
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight

    def forward(self, features: list[Tensor], padded_hw: tuple[int, int]) -> RPNOutput:
        logits, deltas = self.head(features)
        return RPNOutput(self.anchor_generator(features, padded_hw), logits, deltas)

    @torch.no_grad()
    def proposals(
        self, out: RPNOutput, image_sizes: list[tuple[int, int]] | Tensor, *, training: bool
    ) -> list[Tensor]:
        """Per image ``(Ri, 4)`` proposals sorted by objectness: per-level top-k, decode, clip,
        drop tiny boxes, NMS per image and level, post-NMS top-k per image."""
        boxes, image_index = self.select_proposals(out, image_sizes, training=training)
        return split_by_image(boxes, image_index, out.objectness_logits[0].shape[0])

    @torch.no_grad()
    def select_proposals(
        self, out: RPNOutput, image_sizes: list[tuple[int, int]] | Tensor, *, training: bool,
        with_scores: bool = False,
    ) -> tuple[Tensor, ...]:
        """:meth:`proposals` as flat ``(P, 4)`` boxes and their ``(P,)`` image indices,
        grouped by image (the form an exported graph carries: no per-image lists); with
        ``with_scores`` their ranking scores ``(P,)`` as well."""
        pre_k, post_k = self.topk[training]
        n = out.objectness_logits[0].shape[0]
        device = out.objectness_logits[0].device
        batch = torch.arange(n, device=device)[:, None]
        boxes, scores, levels = [], [], []
        for lvl, (anchors, logits, deltas) in enumerate(
            zip(out.anchors, out.objectness_logits, out.pred_deltas, strict=True)
        ):
            k = min(pre_k, logits.shape[1])
            top_logits, idx = logits.float().topk(k, dim=1)  # (N, Ti) -> (N, k)
            # (N, k, 4) deltas applied to their (N, k, 4) anchors
            boxes.append(self.box_coder.decode(deltas[batch, idx].float(), anchors[idx].float()))
            scores.append(top_logits)
            levels.append(torch.full_like(idx, lvl))
        boxes_t = torch.cat(boxes, dim=1)  # (N, sum k, 4)
        sizes = image_sizes_tensor(image_sizes, device)
        boxes_t = clip_boxes(boxes_t, sizes[:, None, :])
        keep_mask = nonempty(boxes_t, self.min_box_size, strict=self.strict_min_size)  # (N, sum k)
        image_index = batch.expand_as(keep_mask)[keep_mask]  # (N, sum k) -> (S,)
        flat_boxes = boxes_t[keep_mask]  # (S, 4)
        flat_scores = torch.cat(scores, dim=1)[keep_mask]
        if not self.rank_by_logits:
            flat_scores = flat_scores.sigmoid()
        group = image_index * len(out.anchors) + torch.cat(levels, dim=1)[keep_mask]
        keep = batched_nms(flat_boxes, flat_scores, group, self.nms_thresh)
        keep = keep_topk_per_image(keep, image_index, post_k, n)
        if with_scores:
            return flat_boxes[keep], image_index[keep], flat_scores[keep]
        return flat_boxes[keep], image_index[keep]

    def losses(self, out: RPNOutput, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """Objectness BCE over sampled anchors and box regression over positives, both divided
        by the number of sampled anchors in the batch (Detectron2's rule:
        ``batch_size_per_image`` x images)."""
        anchors = torch.cat(out.anchors, dim=0).float()  # (T, 4)
        logits = torch.cat(out.objectness_logits, dim=1).float()  # (N, T)
        deltas = torch.cat(out.pred_deltas, dim=1).float()  # (N, T, 4)
        with torch.no_grad():
            matches, _, gt = match_boxes(self.matcher, gt_boxes, anchors)  # (N, T), (N, M, 4)
            labels = (matches >= 0).long()
            labels = labels.masked_fill(matches == BETWEEN_THRESHOLDS, -1)
            pos, neg = self.sampler(labels)
            sampled = pos | neg
            num_sampled = sampled.sum().clamp(min=1)
            if self.normalize_by_batch_size:
                num_sampled = torch.full_like(num_sampled, self.batch_size_per_image * len(pos))
            img, anc = pos.nonzero(as_tuple=True)  # positives as (image, anchor) pairs
            target_deltas = self.box_coder.encode(gt[img, matches[img, anc]], anchors[anc])
        loss_cls = F.binary_cross_entropy_with_logits(
            logits[sampled], pos[sampled].to(logits.dtype), reduction="sum"
        )
        loss_box = box_regression_loss(deltas[img, anc], target_deltas, self.smooth_l1_beta)
        return {
            "loss_rpn_cls": loss_cls / num_sampled * self.loss_weight,
            "loss_rpn_box": loss_box / num_sampled * self.loss_weight,
        }
