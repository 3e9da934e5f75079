"""torchrun/DDP helpers. Everything works unchanged in a single process (world size 1)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl on GPU, gloo
    on CPU. Returns whether the run is distributed."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or is_dist():
        return is_dist()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a process group)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (a copy; the input is untouched)."""
    if not is_dist():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / get_world_size()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
