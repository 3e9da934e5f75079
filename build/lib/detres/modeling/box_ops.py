"""Batched box helpers shared by the RPN and the ROI heads.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels of the resized image. The helpers work on
the whole batch at once: per-image quantities (image sizes, GT boxes) are either padded to a
common count or carried as an image index per box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import boxes as box_ops


def image_sizes_tensor(image_sizes: list[tuple[int, int]] | Tensor, device: torch.device) -> Tensor:
    """``(N, 2)`` int64 tensor of ``(h, w)`` from a list of pairs or a tensor."""
    t = torch.as_tensor(image_sizes, dtype=torch.int64, device=device)
    if t.dim() != 2 or t.shape[1] != 2:
        raise ValueError(f"image_sizes must be N pairs (h, w), got shape {tuple(t.shape)}")
    return t


def clip_boxes(boxes: Tensor, sizes_hw: Tensor) -> Tensor:
    """Clip boxes ``(..., 4)`` to ``[0, w] x [0, h]``; ``sizes_hw`` broadcasts as ``(..., 2)``.

    Same arithmetic as ``torchvision.ops.clip_boxes_to_image`` but one size per box.
    """
    h = sizes_hw[..., 0:1].to(boxes.dtype)
    w = sizes_hw[..., 1:2].to(boxes.dtype)
    x = boxes[..., 0::2].clamp(min=0)
    y = boxes[..., 1::2].clamp(min=0)
    x = torch.minimum(x, w)
    y = torch.minimum(y, h)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def nonempty(boxes: Tensor, min_size: float, *, strict: bool = False) -> Tensor:
    """Mask of boxes whose width and height are both ``>= min_size`` (torchvision's rule), or
    ``> min_size`` with ``strict`` (Detectron2's ``Boxes.nonempty``)."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    if strict:
        return (ws > min_size) & (hs > min_size)
    return (ws >= min_size) & (hs >= min_size)


def batched_iou(gt_boxes: Tensor, boxes: Tensor) -> Tensor:
    """IoU of ``(N, M, 4)`` against ``(N, P, 4)`` (or shared ``(P, 4)``) -> ``(N, M, P)``.

    The same arithmetic as ``torchvision.ops.box_iou``, batched over images.
    """
    if boxes.dim() == 2:
        boxes = boxes.unsqueeze(0)
    g, b = gt_boxes[:, :, None, :], boxes[:, None, :, :]  # (N, M, 1, 4), (N, 1, P, 4)
    area1 = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    area2 = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    # x and y separately: no (N, M, P, 2) temporaries on large anchor sets
    iw = (torch.minimum(g[..., 2], b[..., 2]) - torch.maximum(g[..., 0], b[..., 0])).clamp_(min=0)
    ih = (torch.minimum(g[..., 3], b[..., 3]) - torch.maximum(g[..., 1], b[..., 1])).clamp_(min=0)
    inter = iw.mul_(ih)  # (N, M, P)
    return inter / (area1 + area2 - inter)


@torch.library.custom_op("detres::grouped_nms", mutates_args=())
def grouped_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group of ``idxs`` (float32 boxes), kept indices by decreasing score.

    The op that an exported graph calls (``detres.export`` translates it to ONNX
    ``NonMaxSuppression`` with one class per group, so no coordinate offsets and no float32
    rounding of offset boxes); eagerly it is :func:`batched_nms`."""
    return batched_nms(boxes, scores, idxs, iou_threshold)


@grouped_nms.register_fake
def _(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms`` without coordinate rounding.

    Callers merge image index and class/level into ``idxs``, so the offsets of torchvision's
    coordinate trick can be large; where that trick is used it runs in float64 so that the
    offset boxes stay exact. Returns kept indices sorted by decreasing score. While a graph is
    exported, the :func:`grouped_nms` op stands for all of it.
    """
    if torch.compiler.is_exporting():
        return torch.ops.detres.grouped_nms(boxes.float(), scores.float(), idxs, iou_threshold)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    vanilla = boxes.device.type == "cpu" and boxes.numel() > 4000  # torchvision's per-id loop
    if vanilla or boxes.dtype == torch.float64:
        return box_ops.batched_nms(boxes, scores, idxs, iou_threshold)
    return box_ops.batched_nms(boxes.double(), scores.double(), idxs, iou_threshold)


def keep_topk_per_image(keep: Tensor, image_index: Tensor, k: int, num_images: int) -> Tensor:
    """From ``keep`` (indices sorted by decreasing score over the whole batch), the first ``k``
    of each image, grouped by image and still sorted by score within each image.

    ``image_index[keep]`` gives the image of each kept element. Counting per image by
    comparison (``num_images x len(keep)``, small) rather than ``bincount`` keeps every shape
    symbolic for export.
    """
    img = image_index[keep]
    # group by image, keep the score order: keys are unique, so any sort is stable here
    # (ONNX has no stable sort)
    key = img * keep.numel() + torch.arange(keep.numel(), device=keep.device)
    order = torch.sort(key).indices
    keep, img = keep[order], img[order]
    images = torch.arange(num_images, device=img.device)
    counts = (img[None, :] == images[:, None]).sum(dim=1)  # (num_images,)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[img]
    return keep[rank < k]


def image_index_of(rois: Tensor) -> Tensor:
    """The image index column of ``(R, 5)`` RoIs as int64."""
    return rois[:, 0].to(torch.int64)


def rois_from_flat(boxes: Tensor, image_index: Tensor) -> Tensor:
    """``(R, 4)`` boxes and their image indices -> ``(R, 5)`` rows ``(i, x1, y1, x2, y2)``."""
    return torch.cat([image_index[:, None].to(boxes.dtype), boxes], dim=1)


def split_by_image(values: Tensor, image_index: Tensor, num_images: int) -> list[Tensor]:
    """Split ``values`` (already grouped by ascending image index) into one tensor per image."""
    counts = torch.bincount(image_index, minlength=num_images).tolist()
    return list(values.split(counts, dim=0))


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1 (``beta > 0``) or L1 (``beta == 0``, Detectron2's default) of box
    deltas; the RPN and the ROI heads both use it."""
    if beta > 0:
        return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
    return F.l1_loss(pred, target, reduction="sum")
