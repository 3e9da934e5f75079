"""Feature Pyramid Network (Lin et al. 2017) on ResNet stages, as in torchvision's
``fasterrcnn_resnet50_fpn``: ``torchvision.ops.FeaturePyramidNetwork`` (1x1 lateral and 3x3
output convs) with ``LastLevelMaxPool`` for the extra stride-64 level.

Shape shorthand: N images, Ci channels of input stage i, F output channels (256).
Input ``{"res2": (N, C2, H/4, W/4), ..., "res5": (N, C5, H/32, W/32)}``; output
``{"p2": (N, F, H/4, W/4), ..., "p5", "p6": (N, F, H/64, W/64)}`` (sizes rounded up).

The module is a neck on top of the backbone rather than a wrapper around it, so the detector
keeps the plain ResNet as ``backbone`` (its weights load unchanged) and this as ``neck``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detres.modeling.backbones.base import ShapeSpec
from detres.modeling.fastpath import fast_ops_enabled


class FPN(FeaturePyramidNetwork):
    """``FeaturePyramidNetwork`` + ``LastLevelMaxPool`` with named levels ``p2``..``p6``."""

    def __init__(self, *, input_shapes: dict[str, ShapeSpec], out_channels: int = 256) -> None:
        if not input_shapes:
            raise ValueError("FPN needs at least one input stage (model.fpn.in_features)")
        strides = [s.stride for s in input_shapes.values()]
        if strides != sorted(strides) or len(set(strides)) != len(strides):
            raise ValueError(f"FPN input stages must have increasing strides, got {input_shapes}")
        super().__init__(
            in_channels_list=[s.channels for s in input_shapes.values()],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.in_features = list(input_shapes)
        self.out_channels = out_channels
        self._shapes = {
            f"p{_log2(s.stride)}": ShapeSpec(out_channels, s.stride) for s in input_shapes.values()
        }
        last = strides[-1] * 2
        self._shapes[f"p{_log2(last)}"] = ShapeSpec(out_channels, last)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Output level name -> (channels, stride), finest first."""
        return dict(self._shapes)

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:  # type: ignore[override]
        missing = [k for k in self.in_features if k not in x]
        if missing:
            raise KeyError(f"FPN needs backbone stages {self.in_features}; missing {missing}")
        # torchvision's FeaturePyramidNetwork.forward, with the top-down sum done in place
        # (the lateral conv's output is not needed by its backward): one fresh map fewer
        feats = [x[k] for k in self.in_features]
        last_inner = self.get_result_from_inner_blocks(feats[-1], -1)
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.get_result_from_inner_blocks(feats[idx], idx)
            last_inner = add_upsampled_(lateral, last_inner)
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        names = list(self._shapes)
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(self._shapes, results, strict=True))


def add_upsampled_(fine: Tensor, coarse: Tensor) -> Tensor:
    """``fine += interpolate(coarse, size=fine's, mode="nearest")``, in place. Where ``fine`` is
    exactly twice ``coarse`` in both sides (an input padded to the top level's stride), the
    nearest 2x upsampling is a broadcast over a (h, 2, w, 2) view of ``fine``: the same sum, bit
    for bit, without writing the upsampled map (p2 at 800 x 1088: 56 MB; the top-down sums'
    time halves). Without autograd only: the backward of an in-place sum into a view goes
    through autograd's copy-slices path, 2-3x the interpolation's backward on p2 (measured in a
    training step). The reference path (:func:`~detres.modeling.fastpath.reference_ops`) and an
    export take torchvision's interpolation."""
    n, c, h, w = coarse.shape
    if (fast_ops_enabled() and not torch.compiler.is_exporting()
            and not (torch.is_grad_enabled() and (fine.requires_grad or coarse.requires_grad))
            and fine.shape[-2:] == (2 * h, 2 * w)):
        fine.view(n, c, h, 2, w, 2).add_(coarse[:, :, :, None, :, None])
        return fine
    return fine.add_(F.interpolate(coarse, size=fine.shape[-2:], mode="nearest"))


def _log2(stride: int) -> int:
    if stride <= 0 or stride & (stride - 1):
        raise ValueError(f"FPN stage strides must be powers of two, got {stride}")
    return stride.bit_length() - 1
