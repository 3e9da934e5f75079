"""A switch between detres' fast kernels and the reference computation they replace.

detres replaces two pieces of the reference Faster R-CNN with faster equivalents:
:func:`detres.modeling.backbones.resnet.conv_norm` folds a frozen (or eval-mode) BatchNorm
into the preceding convolution, and :func:`detres.modeling.roi_align.roi_align` gathers with
``embedding_bag`` instead of torchvision's RoIAlign kernel. Inside ``with reference_ops():``
both run the plain way (``norm(conv(x))``, ``torchvision.ops.roi_align``), so that
``tools/benchmark.py --ablation`` can measure what each buys and tests can check that the
outputs agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
