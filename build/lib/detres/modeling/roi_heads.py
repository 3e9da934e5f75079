"""ROI heads: sample RoIs, pool features, box head, predictor, losses and detections.

Shape shorthand: N images, R RoIs in the batch (all images, grouped by image), C feature
channels, S pooled size, D box-head feature size, K foreground classes (class 0 is
background inside the heads), M GT boxes per image (padded to the batch maximum).

Box heads (one per detector family):

* :class:`Res5Head` (C4, the paper): res5 of the ResNet run on each 14x14 RoI (first block
  stride 2 -> 7x7), then global average pooling. res5 is the ResNet's ``layer4``, taken out
  of the trunk (``Backbone.split_last_stage``) and owned here, as in Detectron2: the state
  dict holds it as ``roi_heads.box_head.res5.*`` and a classifier's ``layer4.*`` maps there.
* :class:`VGGFCHead`: fc6/fc7 of VGG-16 on 7x7 RoIs (``roi_heads.box_head.fc.{0,3}``), taken
  from the VGG classifier likewise.
* :class:`TwoMLPHead` (FPN): two 1024-d fc layers, torchvision's ``TwoMLPHead``.

The predictor gives ``K + 1`` class logits and class-specific deltas for the K foreground
classes only (``4K``, Detectron2's layout; torchvision's ``4(K + 1)`` carries unused
background deltas, which the weight converter drops).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_iou, roi_pool

from detres.modeling.box_coder import BoxCoder
from detres.modeling.box_ops import (
    batched_nms,
    box_regression_loss,
    clip_boxes,
    image_index_of,
    image_sizes_tensor,
    keep_topk_per_image,
    nonempty,
    rois_from_flat,
    split_by_image,
)
from detres.modeling.fastpath import autocast_dtype, derived, fast_ops_enabled
from detres.modeling.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher, match_boxes
from detres.modeling.roi_align import multilevel_roi_align, roi_align
from detres.modeling.sampler import BalancedSampler


def _rois(proposals: list[Tensor]) -> Tensor:
    """Per-image boxes -> ``(R, 5)`` rows ``(image_index, x1, y1, x2, y2)``."""
    boxes = torch.cat(proposals, dim=0)
    idx = torch.repeat_interleave(
        torch.arange(len(proposals), device=boxes.device),
        torch.tensor([len(p) for p in proposals], device=boxes.device),
    )
    return rois_from_flat(boxes, idx)


class SingleLevelPooler(nn.Module):
    """RoIAlign (``aligned=True``, Detectron2's ROIAlignV2; detres' embedding-bag kernel,
    :mod:`detres.modeling.roi_align`) or RoIPool (the paper; torchvision's) on one feature
    map: ``(N, C, H, W)`` + R RoIs -> ``(R, C, S, S)``."""

    def __init__(
        self, *, feature: str, kind: str, output_size: int, stride: int, sampling_ratio: int = 0,
        aligned: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("ROIAlign", "ROIPool"):
            raise ValueError(f"model.roi_heads.pooler: {kind!r} is not one of ROIAlign, ROIPool")
        self.feature, self.kind, self.aligned = feature, kind, aligned
        self.output_size, self.scale, self.sampling_ratio = (
            output_size,
            1.0 / stride,
            sampling_ratio,
        )

    def forward(self, features: dict[str, Tensor], rois: Tensor) -> Tensor:
        """``rois (R, 5)`` rows ``(image_index, x1, y1, x2, y2)`` -> ``(R, C, S, S)``."""
        x = features[self.feature]
        rois = rois.float()
        if self.kind == "ROIAlign":  # pools in float32, returns x.dtype
            return roi_align(x, rois, self.output_size, self.scale, self.sampling_ratio,
                             self.aligned)
        size = (self.output_size, self.output_size)
        return roi_pool(x.float(), rois, size, self.scale).to(x.dtype)


class MultiLevelPooler(nn.Module):
    """torchvision's ``MultiScaleRoIAlign`` (FPN level assignment by box size, canonical 224 px
    at level 4, ``aligned=False``) on detres' RoIAlign kernel; ``strides`` of the levels.
    ``level_rule="detectron2"`` with ``aligned=True`` is Detectron2's ``ROIPooler`` with
    ROIAlignV2 (its epsilon inside the logarithm)."""

    def __init__(
        self,
        *,
        features: list[str],
        strides: list[int],
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        level_rule: str = "torchvision",
    ) -> None:
        super().__init__()
        if len(features) != len(strides):
            raise ValueError(f"{len(features)} pooled levels but {len(strides)} strides")
        self.features, self.strides = list(features), list(strides)
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.aligned, self.level_rule = aligned, level_rule

    def forward(self, features: dict[str, Tensor], rois: Tensor) -> Tensor:
        """``rois (R, 5)`` rows ``(image_index, x1, y1, x2, y2)`` -> ``(R, C, S, S)``."""
        rois = rois.float()
        feats = [features[k] for k in self.features]
        return multilevel_roi_align(
            feats, self.strides, rois, self.output_size, self.sampling_ratio,
            aligned=self.aligned, level_rule=self.level_rule,
        )


class Res5Head(nn.Module):
    """``(R, C4, 14, 14)`` -> res5 -> ``(R, C5, 7, 7)`` -> mean -> ``(R, C5)``."""

    def __init__(self, res5: nn.Module) -> None:
        super().__init__()
        self.res5 = res5

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))  # (R, C5, 7, 7) -> (R, C5)


class VGGFCHead(nn.Module):
    """``(R, 512, 7, 7)`` -> flatten -> fc6, ReLU, dropout, fc7, ReLU, dropout -> ``(R, 4096)``."""

    def __init__(self, fc: nn.Module) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))  # (R, 512, 7, 7) -> (R, 25088) -> (R, 4096)


class TwoMLPHead(nn.Module):
    """``(R, C, S, S)`` -> flatten -> fc6, ReLU, fc7, ReLU -> ``(R, D)`` (torchvision's names).

    At inference fc6 runs as the equivalent ``S x S`` convolution (its weight viewed ``(D, C,
    S, S)`` and cached in the input's memory format): the same arithmetic, read straight from
    the channels-last pooled features, and 2.2x faster than the fp32 GEMM on 1000 RoIs on this
    project's CPU (:mod:`detres.modeling.fastpath`). Under autograd it stays a ``Linear``:
    re-laying the weight out every step (and its gradient back) costs more than it saves.
    ``reference_ops()`` runs the ``Linear`` always."""

    def __init__(self, *, in_features: int, fc_dim: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)

    def forward(self, x: Tensor) -> Tensor:
        if (not fast_ops_enabled() or torch.is_grad_enabled() or x.dim() != 4
                or x.shape[1] * x.shape[2] * x.shape[3] != self.fc6.in_features):
            return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))  # (R, C*S*S) -> (R, D)
        r, c, h, w = x.shape
        fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
               else torch.contiguous_format)

        def kernel() -> Tensor:
            return self.fc6.weight.view(-1, c, h, w).contiguous(memory_format=fmt)

        dtype = autocast_dtype(x.device)
        weight = derived(self.fc6, f"fc6_kernel_{fmt}", (self.fc6.weight,), dtype, kernel)
        bias = self.fc6.bias if dtype is None else self.fc6.bias.to(dtype)
        y = F.relu(F.conv2d(x, weight, bias)).flatten(1)  # (R, D, 1, 1) -> (R, D)
        return F.relu(self.fc7(y))


class FastRCNNPredictor(nn.Module):
    """``(R, D)`` -> ``pred_class_logits (R, K + 1)`` and ``pred_deltas (R, 4K)``."""

    def __init__(self, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.cls_score.bias, 0.0)
        nn.init.constant_(self.bbox_pred.bias, 0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class ContextPredictor(nn.Module):
    """The global-context half of the predictor (the paper's appendix A): ``(R, D)`` features of
    each RoI's whole image -> class logits ``(R, K + 1)`` and deltas ``(R, 4K)`` added to the
    region's own. The sum is exactly a linear layer on the concatenation ``[region, image]``;
    kept as its own layers, initialized to zero, so that a checkpoint trained without context
    loads whole (only these layers are new) and predicts unchanged until they are trained."""

    def __init__(self, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def image_rois(image_sizes: list[tuple[int, int]] | Tensor, device: torch.device) -> Tensor:
    """The whole-image RoI of each image, ``(N, 5)`` rows ``(i, 0, 0, w, h)``."""
    sizes = image_sizes_tensor(image_sizes, device).float()  # (N, 2) h, w
    n = sizes.shape[0]
    zeros = torch.zeros(n, 2, device=device)
    idx = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    return torch.cat([idx, zeros, sizes[:, 1:2], sizes[:, 0:1]], dim=1)


def box_voting(kept: Tensor, kept_groups: Tensor, boxes: Tensor, scores: Tensor,
               groups: Tensor, iou_thresh: float) -> Tensor:
    """Box voting (Gidaris & Komodakis 2015, the paper's appendix A): each kept box ``(D, 4)``
    replaced by the score-weighted mean of the candidate ``boxes (M, 4)`` of its group (image
    and class) that overlap it with IoU >= ``iou_thresh`` (itself among them)."""
    if len(kept) == 0:
        return kept
    out = []
    for a in range(0, len(kept), 256):  # (256, M) IoUs at a time
        iou = box_iou(kept[a : a + 256], boxes)
        w = ((iou >= iou_thresh) & (kept_groups[a : a + 256, None] == groups[None, :]))
        w = w.to(scores.dtype) * scores[None, :]  # (d, M)
        out.append((w @ boxes) / w.sum(dim=1, keepdim=True).clamp(min=1e-12))
    return torch.cat(out)


class ROIHeads(nn.Module):
    """Pooler + box head + predictor, with Fast R-CNN sampling, losses and inference; with
    the appendix's box refinement and global context when switched on."""

    def __init__(
        self,
        *,
        pooler: nn.Module,
        box_head: nn.Module,
        box_predictor: FastRCNNPredictor,
        num_classes: int,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        bg_iou_thresh_lo: float = 0.0,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 0.0,
        score_thresh_test: float = 0.05,
        nms_thresh_test: float = 0.5,
        detections_per_image: int = 100,
        min_test_box_size: float | None = 1e-2,
        box_refinement: bool = False,
        refine_nms_thresh: float = 0.3,
        box_voting_thresh: float = 0.5,
        context_predictor: ContextPredictor | None = None,
    ) -> None:
        super().__init__()
        self.box_pooler, self.box_head, self.box_predictor = pooler, box_head, box_predictor
        #: global context (None: off): image features' share of the logits and deltas
        self.context_predictor = context_predictor
        #: torchvision drops detections under 1e-2 px; Detectron2 (None) keeps every one
        self.min_test_box_size = min_test_box_size
        self.num_classes = num_classes
        self.matcher = Matcher(high_threshold=fg_iou_thresh, low_threshold=bg_iou_thresh)
        self.bg_iou_thresh_lo = bg_iou_thresh_lo
        self.sampler = BalancedSampler(
            batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction
        )
        self.box_coder = BoxCoder(weights=bbox_reg_weights)
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh_test
        self.nms_thresh = nms_thresh_test
        self.detections_per_image = detections_per_image
        self.box_refinement = box_refinement
        self.refine_nms_thresh, self.box_voting_thresh = refine_nms_thresh, box_voting_thresh
        self.chunk_bytes = 64 * 2**20  # pooled features per chunk at inference

    # ------------------------------------------------------------------ features, logits

    def box_features(self, features: dict[str, Tensor], rois: Tensor,
                     image_sizes: list[tuple[int, int]] | Tensor | None = None) -> Tensor:
        """What the predictor reads for ``rois (R, 5)``: the box head's ``(R, D)``, and with
        global context ``(R, 2D)``, each region's feature beside its image's (the image box
        pooled and run through the same head). Training runs both through the head in one
        batch (one set of batch-norm statistics); inference chunks the regions (see
        :meth:`predict_logits`)."""
        if self.context_predictor is None:
            return self._head(features, rois)
        if image_sizes is None:
            raise ValueError("global context needs the image sizes")
        whole = image_rois(image_sizes, rois.device)
        if torch.is_grad_enabled():
            x = self._head(features, torch.cat([rois.float(), whole]))
            x, g = x[: len(rois)], x[len(rois):]
        else:
            g = self._head(features, whole)
            x = self._head(features, rois)
        return torch.cat([x, g[image_index_of(rois)].to(x.dtype)], dim=1)

    def _head(self, features: dict[str, Tensor], rois: Tensor) -> Tensor:
        """Pool ``rois`` and run the box head: ``(R, D)``; chunked without autograd (the C4
        head pools 1000 RoIs x 1024 x 14 x 14, 800 MB in float32, which would otherwise be
        written, converted and read back whole). An exported graph runs in one piece (its
        runtime plans the memory)."""
        if torch.is_grad_enabled() or torch.compiler.is_exporting():
            return self.box_head(self.box_pooler(features, rois))
        feat = next(iter(features.values()))
        size = self.box_pooler.output_size
        per_roi = feat.shape[1] * size * size * feat.element_size()
        chunk = max(1, self.chunk_bytes // per_roi)
        outs = [self.box_head(self.box_pooler(features, rois[a : a + chunk]))
                for a in range(0, max(len(rois), 1), chunk)]
        return torch.cat(outs)

    def predict_from_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`box_features` -> ``pred_class_logits (R, K + 1)``, ``pred_deltas (R, 4K)``."""
        if self.context_predictor is None:
            return self.box_predictor(x)
        d = x.shape[1] // 2
        logits, deltas = self.box_predictor(x[:, :d])
        c_logits, c_deltas = self.context_predictor(x[:, d:])
        return logits + c_logits, deltas + c_deltas

    def predict_logits(self, features: dict[str, Tensor], rois: Tensor,
                       image_sizes: list[tuple[int, int]] | Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        """``pred_class_logits (R, K + 1)`` and ``pred_deltas (R, 4K)`` for ``rois (R, 5)``
        (``image_sizes``: needed by global context)."""
        return self.predict_from_features(self.box_features(features, rois, image_sizes))

    @torch.no_grad()
    def sample_proposals(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_classes: list[Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Add GT boxes to the proposals, match, and sample RoIs per image.

        Returns the sampled RoIs per image, their labels ``(R,)`` (0 = background) and the
        matched GT box of each ``(R, 4)`` (meaningful for foreground RoIs only).
        """
        n = len(proposals)
        props = [
            torch.cat([p.float(), g.to(p.device).float()])
            for p, g in zip(proposals, gt_boxes, strict=True)
        ]
        counts = torch.tensor([len(p) for p in props], device=props[0].device)
        padded = pad_sequence(props, batch_first=True)  # (N, Pmax, 4)
        valid = torch.arange(padded.shape[1], device=padded.device)[None, :] < counts[:, None]
        matches, vals, gt = match_boxes(self.matcher, gt_boxes, padded, valid)  # (N, Pmax)
        if gt.shape[1] > 0:
            cls = pad_sequence([c.to(padded.device) for c in gt_classes], batch_first=True)
            labels = torch.gather(cls, 1, matches.clamp(min=0)).masked_fill(matches < 0, 0)
        else:
            labels = torch.zeros_like(matches)
        labels = labels.masked_fill(matches == BETWEEN_THRESHOLDS, -1)
        # Fast R-CNN's background range [lo, bg_iou_thresh); an image without GT counts as IoU 0
        too_low = (matches == BELOW_LOW_THRESHOLD) & (vals.clamp(min=0) < self.bg_iou_thresh_lo)
        labels = labels.masked_fill(too_low, -1)
        pos, neg = self.sampler(labels)
        img, idx = (pos | neg).nonzero(as_tuple=True)  # grouped by image
        rois = padded[img, idx]  # (R, 4)
        if gt.shape[1] > 0:
            matched_gt = gt[img, matches[img, idx].clamp(min=0)]  # (R, 4)
        else:
            matched_gt = torch.zeros_like(rois)
        return split_by_image(rois, img, n), labels[img, idx], matched_gt

    def losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        gt_boxes: list[Tensor],
        gt_classes: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """Cross-entropy over sampled RoIs; class-specific box regression over foreground RoIs,
        divided by the number of sampled RoIs."""
        rois, labels, matched_gt = self.sample_proposals(proposals, gt_boxes, gt_classes)
        logits, deltas = self.predict_logits(features, _rois(rois), image_sizes)
        logits, deltas = logits.float(), deltas.float()
        loss_cls = F.cross_entropy(logits, labels, reduction="sum") / max(labels.numel(), 1)
        fg = (labels > 0).nonzero(as_tuple=True)[0]
        with torch.no_grad():
            target = self.box_coder.encode(matched_gt[fg], torch.cat(rois)[fg])
        deltas = deltas.view(len(labels), self.num_classes, 4)  # (R, 4K) -> (R, K, 4)
        pred = deltas[fg, labels[fg] - 1]  # the deltas of each foreground RoI's own class
        loss_box = box_regression_loss(pred, target, self.smooth_l1_beta) / max(labels.numel(), 1)
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    @torch.no_grad()
    def inference(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Per image ``detections``: ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` in 1..K,
        after a score threshold and NMS per class, at most ``detections_per_image``."""
        n = len(proposals)
        boxes, scores, labels, img = self.detect(features, _rois(proposals), image_sizes, n)
        per_image = zip(
            split_by_image(boxes, img, n),
            split_by_image(scores, img, n),
            split_by_image(labels, img, n),
            strict=True,
        )
        return [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in per_image]

    @torch.no_grad()
    def detect(
        self,
        features: dict[str, Tensor],
        rois: Tensor,
        image_sizes: list[tuple[int, int]] | Tensor,
        num_images: int,
        logits_fn: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`inference` on ``rois (R, 5)``, flat: ``boxes (D, 4)``, ``scores (D,)``,
        ``labels (D,)`` in 1..K and the ``(D,)`` image index, grouped by image and sorted by
        score within each. ``logits_fn`` (RoIs -> logits, deltas; default
        :meth:`predict_logits` on ``features``) is how multi-scale testing pools instead.

        With box refinement each RoI's box regressed for its best class is scored and
        regressed again; the union of both predictions is NMSed at ``refine_nms_thresh`` and
        each kept box replaced by its vote (:func:`box_voting`)."""
        fn = logits_fn or (lambda r: self.predict_logits(features, r, image_sizes))
        scores, boxes = self.decode(*fn(rois), rois, image_sizes)  # (R, K), (R, K, 4)
        img = image_index_of(rois)
        if not self.box_refinement:
            return self.select(boxes, scores, img, num_images, self.nms_thresh)
        best = scores.argmax(dim=1)
        rois2 = rois_from_flat(boxes[torch.arange(len(rois), device=rois.device), best], img)
        scores2, boxes2 = self.decode(*fn(rois2), rois2, image_sizes)
        return self.select(torch.cat([boxes, boxes2]), torch.cat([scores, scores2]),
                           torch.cat([img, img]), num_images, self.refine_nms_thresh,
                           voting_thresh=self.box_voting_thresh)

    def decode(self, logits: Tensor, deltas: Tensor, rois: Tensor,
               image_sizes: list[tuple[int, int]] | Tensor) -> tuple[Tensor, Tensor]:
        """Foreground ``scores (R, K)`` (softmax) and class boxes ``(R, K, 4)`` decoded on the
        RoIs and clipped to their images."""
        k = self.num_classes
        r = logits.shape[0]
        if torch.compiler.is_exporting():  # a bound for the RoI count, which is data-dependent
            torch._check(r <= 2**40)  # (else R * K overflows int64 in the graph's shape checks)
        scores = F.softmax(logits.float(), dim=-1)[:, 1:]  # (R, K + 1) -> (R, K) foreground
        deltas = deltas.float().view(r, k, 4)  # (R, 4K) -> (R, K, 4)
        boxes = self.box_coder.decode(deltas, rois[:, None, 1:].float())  # (R, K, 4)
        sizes = image_sizes_tensor(image_sizes, logits.device)
        return scores, clip_boxes(boxes, sizes[image_index_of(rois)][:, None, :])

    def select(self, boxes: Tensor, scores: Tensor, img: Tensor, num_images: int,
               nms_thresh: float, voting_thresh: float | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Score threshold, per-class NMS and the top detections of each image on ``boxes
        (R, K, 4)``, ``scores (R, K)`` of RoIs in images ``img (R,)``; flat outputs as
        :meth:`detect`'s. With ``voting_thresh`` each kept box is its vote."""
        r, k = scores.shape
        labels = torch.arange(1, k + 1, device=scores.device).expand(r, k)
        img = img[:, None].expand(r, k)
        keep = scores > self.score_thresh  # (R, K)
        if self.min_test_box_size is not None:
            keep &= nonempty(boxes, self.min_test_box_size)
        boxes, scores, labels, img = boxes[keep], scores[keep], labels[keep], img[keep]  # flat
        groups = img * (k + 1) + labels
        kept = batched_nms(boxes, scores, groups, nms_thresh)
        kept = keep_topk_per_image(kept, img, self.detections_per_image, num_images)
        out = boxes[kept]
        if voting_thresh is not None:
            out = box_voting(out, groups[kept], boxes, scores, groups, voting_thresh)
        return out, scores[kept], labels[kept], img[kept]
