"""Device and precision: which device a run uses and the autocast context of ``train.amp``."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from detres.utils.dist import get_local_rank


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available (this process's local rank under torchrun), else CPU;
    ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", get_local_rank() % max(torch.cuda.device_count(), 1))
    return torch.device(name)


def autocast_context(device: torch.device, amp: str) -> AbstractContextManager[Any]:
    """bf16 autocast on CPU or GPU, fp16 on GPU; nothing for ``none``."""
    if amp == "none":
        return nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"train.amp: {amp!r} is not one of none, bf16, fp16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("train.amp=fp16 needs a GPU; use bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)
