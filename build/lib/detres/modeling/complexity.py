"""Model complexity: parameter counts and multiply-adds (MACs).

MACs are ``torch.utils.flop_counter.FlopCounterMode``'s FLOPs / 2: convolutions and matrix
products (the fc layers included), not BatchNorm, ReLU, pooling or additions, which is how
the ResNet paper counts "FLOPs (multiply-adds)" in its Table 1. Counting runs one forward
pass, on the ``meta`` device when the model lives there (no memory, no arithmetic): build a
model under ``with torch.device("meta"):`` to count a big network in milliseconds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from detres.modeling.backbones.base import Backbone


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (``nn.Parameter`` elements; buffers such as BN statistics and
    FrozenBatchNorm2d's affine terms are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _input(model: nn.Module, input_size: int | tuple[int, int], batch_size: int) -> Tensor:
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    return torch.zeros(batch_size, 3, h, w, device=device, dtype=dtype)


def _macs_of(fn: Any, *args: Any) -> tuple[int, Any]:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = fn(*args)
    return counter.get_total_flops() // 2, out


def count_macs(
    model: nn.Module, input_size: int | tuple[int, int] = 224, *, batch_size: int = 1
) -> int:
    """Multiply-adds of one forward pass of ``model`` (in eval mode) on a
    ``(batch_size, 3, H, W)`` input, on the model's device."""
    was_training = model.training
    model.eval()
    try:
        macs, _ = _macs_of(model, _input(model, input_size, batch_size))
    finally:
        model.train(was_training)
    return macs


def complexity(model: Backbone, input_size: int | tuple[int, int] = 224) -> dict[str, Any]:
    """``{"params", "macs", "input_size", "stages": {stage: {"params", "macs", "channels",
    "stride", "shape"}}, "head": {"params", "macs"}}`` for one image; the head is whatever
    runs after the last stage (pooling, fc layers)."""
    was_training = model.training
    model.eval()
    try:
        x = _input(model, input_size, 1)
        total, _ = _macs_of(model, x)
        stages: dict[str, dict[str, Any]] = {}
        specs = model.output_shape()
        for name, mod in model.stage_modules().items():
            macs, x = _macs_of(mod, x)
            stages[name] = {
                "params": count_params(mod),
                "macs": macs,
                "channels": specs[name].channels,
                "stride": specs[name].stride,
                "shape": list(x.shape[1:]),
            }
    finally:
        model.train(was_training)
    params = count_params(model)
    return {
        "params": params,
        "macs": total,
        "input_size": list(_input(model, input_size, 1).shape[2:]),
        "stages": stages,
        "head": {
            "params": params - sum(s["params"] for s in stages.values()),
            "macs": total - sum(s["macs"] for s in stages.values()),
        },
    }
