"""RoIAlign as one weighted gather: ``torch.nn.functional.embedding_bag`` over an NHWC table.

``torchvision.ops.roi_align`` on CPU walks RoIs, bins and samples in C++ loops, and its
backward is a serial scatter; on this project's 2-core CPU it is 10-25% of a training step.
RoIAlign is linear in the features: every output bin is a weighted sum of at most
``4 * grid_h * grid_w`` feature vectors (four bilinear corners per sample point). So we
compute those (index, weight) pairs for all bins at once with tensor arithmetic and hand the
sum to ``embedding_bag(mode="sum", per_sample_weights=...)``: a parallel, vectorized gather
whose backward is a parallel index-add, and which reads whole C-channel rows of the feature
map (contiguous when the features are channels-last). ``tools/benchmark.py --ops`` measures
it against torchvision; ``tests/test_roi_align.py`` checks forward and backward against
``torchvision.ops.roi_align`` (aligned and not, fixed and adaptive sampling, boxes outside
the map) and ``MultiScaleRoIAlign``.

The sample positions, the out-of-range rule (``y < -1 or y > H``), the clamping at the border
and the division by ``grid_h * grid_w`` follow torchvision's kernel line by line.

Shape shorthand: N images, C channels, H x W feature size, R RoIs, S x S output bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.ops.poolers import LevelMapper

from detres.modeling.fastpath import fast_ops_enabled


def _bag_entries(
    rois: Tensor,
    height: int,
    width: int,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Flat (position, weight) pairs of every bin and the bag offsets.

    ``rois (R, 5)`` rows ``(image_index, x1, y1, x2, y2)``. Positions index the table
    ``(N * H * W, C)``; bag ``r * S * S + ph * S + pw`` is bin ``(ph, pw)`` of RoI ``r``.
    """
    dev, s = rois.device, output_size
    r = rois if rois.dtype == torch.float64 else rois.float()
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    rw = r[:, 3] * spatial_scale - offset - x1
    rh = r[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision: malformed RoIs are forced to 1x1
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bw, bh = rw / s, rh / s
    if sampling_ratio > 0:
        gw = torch.full_like(bw, sampling_ratio, dtype=torch.int64)
        gh = gw
    else:
        gw, gh = torch.ceil(bw).long(), torch.ceil(bh).long()
    per_bin = gh * gw  # samples per bin, per RoI  (R,)
    per_roi = per_bin * (s * s)
    num_rois = rois.shape[0]
    roi = torch.repeat_interleave(torch.arange(num_rois, device=dev), per_roi)  # (T,)
    start = torch.cumsum(per_roi, 0) - per_roi
    local = torch.arange(roi.numel(), device=dev) - start[roi]
    nb = per_bin[roi]
    b, k = local // nb, local % nb  # bin index, sample within the bin
    ph, pw = b // s, b % s
    gwr, ghr = gw[roi], gh[roi]
    iy, ix = k // gwr, k % gwr
    y = y1[roi] + ph * bh[roi] + (iy + 0.5) * bh[roi] / ghr
    x = x1[roi] + pw * bw[roi] + (ix + 0.5) * bw[roi] / gwr
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y_lo, x_lo = y.long(), x.long()  # truncation == floor for y, x >= 0
    y_top, x_top = y_lo >= height - 1, x_lo >= width - 1
    y_lo = torch.where(y_top, height - 1, y_lo).clamp_(min=0)  # clamp: NaN boxes stay in range
    x_lo = torch.where(x_top, width - 1, x_lo).clamp_(min=0)
    y = torch.where(y_top, y_lo.to(y.dtype), y)
    x = torch.where(x_top, x_lo.to(x.dtype), x)
    y_hi = torch.where(y_top, y_lo, y_lo + 1)
    x_hi = torch.where(x_top, x_lo, x_lo + 1)
    ly, lx = y - y_lo, x - x_lo
    hy, hx = 1.0 - ly, 1.0 - lx
    scale = inside.to(y.dtype) / (ghr * gwr).clamp(min=1).to(y.dtype)
    base = rois[roi, 0].long() * (height * width)
    pos = torch.stack(
        (y_lo * width + x_lo, y_lo * width + x_hi, y_hi * width + x_lo, y_hi * width + x_hi), 1
    )  # (T, 4): the four bilinear corners of each sample
    weight = torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), 1) * scale[:, None]
    pos = pos + base[:, None]
    # bag offsets: each bin holds 4 * per_bin entries
    counts = (4 * per_bin).repeat_interleave(s * s)  # (R * S * S,)
    offsets = torch.cumsum(counts, 0) - counts
    return pos.reshape(-1), weight.reshape(-1), offsets


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` for square outputs: ``(N, C, H, W)`` features and
    ``(R, 5)`` RoIs -> ``(R, C, S, S)`` (channels-last strides). Differentiable in ``features``.

    Returns the input dtype; see :func:`_pool_dtype` for the precision of the pooling.
    """
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5) (image_index, x1, y1, x2, y2), got {rois.shape}")
    n, c, h, w = features.shape
    s = int(output_size)
    # the reference kernel (tools/benchmark.py --ablation), and what an exported graph holds
    # (ONNX RoiAlign)
    if not fast_ops_enabled() or torch.compiler.is_exporting():
        x = features.double() if features.dtype == torch.float64 else features.float()
        out = torchvision.ops.roi_align(x, rois.to(x.dtype), (s, s), spatial_scale,
                                        sampling_ratio, aligned)
        return out.to(features.dtype)
    if rois.shape[0] == 0:
        return features.new_zeros((0, c, s, s))
    with torch.no_grad():
        pos, weight, offsets = _bag_entries(
            rois.detach(), h, w, s, spatial_scale, sampling_ratio, aligned
        )
    table = features.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when channels-last
    dtype = _pool_dtype(features)
    with torch.autocast(features.device.type, enabled=False):
        out = F.embedding_bag(
            pos, table.to(dtype), offsets, mode="sum", per_sample_weights=weight.to(dtype)
        )  # (R * S * S, C)
    # (R * S * S, C) -> (R, S, S, C) -> (R, C, S, S), channels-last strides
    return out.view(rois.shape[0], s, s, c).permute(0, 3, 1, 2).to(features.dtype)


def _pool_dtype(x: Tensor) -> torch.dtype:
    """float64 stays; bf16/fp16 features pool in their own dtype when no gradient flows (the
    bilinear weights and the output are rounded to that dtype, an error of the order of the
    features' own rounding; ~10x faster than casting the maps to float32) and in float32 for
    training, where autocast runs torchvision's kernel in float32 too."""
    if x.dtype == torch.float64:
        return x.dtype
    if x.dtype in (torch.bfloat16, torch.float16) and not (
        torch.is_grad_enabled() and x.requires_grad
    ):
        return x.dtype
    return torch.float32


def fpn_levels(boxes: Tensor, k_min: int, k_max: int, rule: str = "torchvision") -> Tensor:
    """FPN Eq. 1: each box's level index in ``[0, k_max - k_min]`` (canonical 224 px at level
    4): torchvision's ``LevelMapper`` (epsilon 1e-6 after the logarithm) or Detectron2's
    ``assign_boxes_to_levels`` (epsilon 1e-8 inside it)."""
    if rule == "torchvision":
        return LevelMapper(k_min, k_max)([boxes])
    if rule != "detectron2":
        raise ValueError(f"FPN level rule {rule!r} is not one of torchvision, detectron2")
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    lvl = torch.floor(4 + torch.log2(sizes / 224 + 1e-8)).clamp(min=k_min, max=k_max)
    return lvl.to(torch.int64) - k_min


def multilevel_roi_align(
    features: Sequence[Tensor],
    strides: Sequence[int],
    rois: Tensor,
    output_size: int,
    sampling_ratio: int,
    aligned: bool = False,
    level_rule: str = "torchvision",
) -> Tensor:
    """``MultiScaleRoIAlign``: each RoI pooled from its FPN level -> ``(R, C, S, S)``."""
    levels = [int(round(math.log2(st))) for st in strides]
    lvl = fpn_levels(rois[:, 1:], levels[0], levels[-1], level_rule)
    c, s = features[0].shape[1], int(output_size)
    dtype = _pool_dtype(features[0])
    # (R, S, S, C); every row is written once below (each RoI has exactly one level)
    out = features[0].new_empty((rois.shape[0], s, s, c), dtype=dtype)
    for i, (feat, stride) in enumerate(zip(features, strides, strict=True)):
        idx = (lvl == i).nonzero(as_tuple=True)[0]
        if not torch.compiler.is_exporting() and idx.numel() == 0:  # a graph pools every level
            continue
        pooled = roi_align(feat, rois[idx], s, 1.0 / stride, sampling_ratio, aligned)
        out.index_copy_(0, idx, pooled.permute(0, 2, 3, 1).to(dtype))  # autograd reaches feat
    return out.permute(0, 3, 1, 2).to(features[0].dtype)  # (R, S, S, C) -> (R, C, S, S)
