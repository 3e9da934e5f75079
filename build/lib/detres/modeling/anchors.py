"""Anchor generation: ``len(sizes[l]) * len(aspect_ratios)`` anchors at every location of
feature level ``l``, in the same order and with the same values as torchvision's
``AnchorGenerator`` (aspect ratio = height / width, zero-centred cell anchors rounded to
integers, shifted by ``stride * (x, y)``). With ``round_anchors=False`` and fixed
``strides`` the values are Detectron2's ``DefaultAnchorGenerator`` (no rounding, the levels'
nominal strides); Detectron2 orders a location's anchors size-major, which only matters for
several sizes per level (C4) and is handled by the weight converter, not here.

Shape shorthand: L levels, Hi x Wi feature size of level i, A anchors per location.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def cell_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], *, dtype: torch.dtype = torch.float32,
    round_anchors: bool = True,
) -> Tensor:
    """Zero-centred anchors ``(A, 4)``, ratio-major: ``A = len(aspect_ratios) * len(sizes)``;
    rounded to integers as torchvision does (Detectron2: not rounded)."""
    if not round_anchors:  # Detectron2's arithmetic: w = sqrt(size^2 / ratio), h = ratio * w
        out = []
        for r in aspect_ratios:
            for s in sizes:
                w = (s * s / r) ** 0.5
                h = r * w
                out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(out, dtype=dtype)
    scales = torch.as_tensor(sizes, dtype=dtype)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors per feature level, cached per (feature size, stride, device, dtype).

    ``sizes[l]`` lists the anchor sizes of level ``l`` (C4: one level with
    ``[32, 64, 128, 256, 512]``; FPN: ``[[32], [64], [128], [256], [512]]``). The stride of a
    level is ``padded_image_size // feature_size`` per axis (torchvision's rule, which also
    handles FPN's extra max-pooled level on odd sizes).
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] = ((32, 64, 128, 256, 512),),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        round_anchors: bool = True,
        strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not sizes or any(len(s) == 0 for s in sizes):
            raise ValueError(f"anchor sizes must be a non-empty list per level, got {sizes}")
        if not aspect_ratios:
            raise ValueError("anchor aspect_ratios must not be empty")
        if strides is not None and len(strides) != len(sizes):
            raise ValueError(f"{len(sizes)} anchor levels but {len(strides)} strides")
        self.sizes = [list(s) for s in sizes]
        self.aspect_ratios = list(aspect_ratios)
        #: fixed strides per level (Detectron2), else padded image size // feature size
        self.strides = list(strides) if strides is not None else None
        self._cells = [cell_anchors(s, self.aspect_ratios, round_anchors=round_anchors)
                       for s in self.sizes]
        self._cache: dict[tuple[int, int, int, int, int, str, torch.dtype], Tensor] = {}

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(self.aspect_ratios) for s in self.sizes]

    def grid_anchors(
        self,
        level: int,
        grid_hw: tuple[int, int],
        stride_hw: tuple[int, int],
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """Anchors ``(Hi * Wi * A, 4)`` of one level, ordered (y, x, anchor)."""
        key = (level, *grid_hw, *stride_hw, str(device), dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        anchors = self._grid(level, grid_hw, stride_hw, device, dtype)
        if len(self._cache) > 64:  # many input sizes (multi-scale training): bound the cache
            self._cache.clear()
        self._cache[key] = anchors
        return anchors

    def _grid(self, level: int, grid_hw: tuple[int, int], stride_hw: tuple[int, int],
              device: torch.device, dtype: torch.dtype) -> Tensor:
        (gh, gw), (sh, sw) = grid_hw, stride_hw
        base = self._cells[level].to(device=device, dtype=dtype)
        shifts_x = torch.arange(0, gw, dtype=torch.int32, device=device) * sw
        shifts_y = torch.arange(0, gh, dtype=torch.int32, device=device) * sh
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        # (Hi*Wi, 1, 4) + (1, A, 4) -> (Hi*Wi*A, 4)
        return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)

    def forward(self, features: list[Tensor], padded_hw: tuple[int, int]) -> list[Tensor]:
        """Anchors ``(Hi * Wi * A, 4)`` per level, shared by every image of the batch."""
        if len(features) != self.num_levels:
            raise ValueError(
                f"{len(features)} feature levels but anchor sizes for {self.num_levels} "
                f"(model.anchors.sizes={self.sizes})"
            )
        out = []
        exporting = torch.compiler.is_exporting()
        for level, feat in enumerate(features):
            gh, gw = feat.shape[-2], feat.shape[-1]
            if not exporting:  # a graph keeps the sizes symbolic (and has no cache)
                gh, gw = int(gh), int(gw)
            if self.strides is not None:
                stride = (self.strides[level], self.strides[level])
            else:
                stride = (padded_hw[0] // gh, padded_hw[1] // gw)
            dtype = torch.float64 if feat.dtype == torch.float64 else torch.float32  # not bf16
            if exporting:
                out.append(self._grid(level, (gh, gw), stride, feat.device, dtype))
            else:
                out.append(self.grid_anchors(level, (gh, gw), (int(stride[0]), int(stride[1])),
                                             feat.device, dtype))
        return out
