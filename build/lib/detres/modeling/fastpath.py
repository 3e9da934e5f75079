"""A switch between detres' fast kernels and the reference computation they replace, and the
cache of weights those kernels derive.

detres replaces three pieces of the reference Faster R-CNN with faster equivalents:
:func:`detres.modeling.backbones.resnet.conv_norm` folds a frozen (or eval-mode) BatchNorm
into the preceding convolution, :func:`detres.modeling.roi_align.roi_align` gathers with
``embedding_bag`` instead of torchvision's RoIAlign kernel, and the FPN box head's fc6 runs
as a 7x7 convolution over the pooled RoIs (oneDNN's convolution is 2.4x faster than the
fp32 GEMM on 1000 RoIs here, and reads the channels-last pooled features without a copy).
Inside ``with reference_ops():`` all run the plain way (``norm(conv(x))``,
``torchvision.ops.roi_align``, ``Linear``), so that ``tools/benchmark.py --ablation`` can
measure what each buys and tests can check that the outputs agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

_state = {"fast": True}


def fast_ops_enabled() -> bool:
    return _state["fast"]


@contextmanager
def reference_ops(enabled: bool = True) -> Iterator[None]:
    """Run the reference computation instead of detres' fast kernels (when ``enabled``)."""
    previous = _state["fast"]
    _state["fast"] = not enabled and previous
    try:
        yield
    finally:
        _state["fast"] = previous


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active on ``device``'s type, or None."""
    dev = device.type
    amp = torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)
    return torch.get_autocast_dtype(dev) if amp else None


def derived(owner: nn.Module, name: str, sources: tuple[Tensor | None, ...],
            dtype: torch.dtype | None, build: Callable[[], Any]) -> Any:
    """``build()`` -- weights derived from ``sources`` (folded, reshaped, re-laid-out) -- cached
    on ``owner`` without autograd, in ``dtype`` (the autocast dtype, or None) when tensors, until
    any source tensor changes (storage or version). Under autograd or ``torch.compile`` it is
    computed afresh: the gradient must reach the sources, and the compiler folds constants
    itself. The state dict is unaffected."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return build()
    key = (dtype, tuple((t.data_ptr(), t._version, t.device) for t in sources if t is not None))
    slot = f"_detres_{name}"
    cached = owner.__dict__.get(slot)
    if cached is not None and cached[0] == key:
        return cached[1]
    value = build()
    if dtype is not None:
        value = tuple(v.to(dtype) for v in value) if isinstance(value, tuple) else value.to(dtype)
    owner.__dict__[slot] = (key, value)
    return value
