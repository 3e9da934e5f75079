"""torchrun/DDP helpers. Everything works unchanged in a single process (world size 1).

Faults between ranks are this module's business too: collectives get a timeout
(:func:`init_distributed`), a collective that fails because a peer died or stopped answering
is a :class:`PeerLostError` (one line, its own exit code), and :func:`flagged_ranks` lets
every rank learn in one small all-reduce which ranks hit a fault (a bad batch, a non-finite
loss, a stop signal), so that all of them stop at the same step instead of some waiting
forever in the next collective.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

#: torch's own default for gloo; Detectron2 uses the same. Set by ``train.dist_timeout_s``.
DEFAULT_TIMEOUT_S = 1800


class PeerLostError(RuntimeError):
    """A collective failed: another rank died (its connection closed) or did not answer
    within the process group's timeout. The message names this rank and the cause."""


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


def restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this worker group (0 at the
    first launch; ``--max-restarts`` bounds it)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)


def init_distributed(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl on GPU, gloo
    on CPU, every collective bounded by ``timeout_s``. Returns whether the run is
    distributed."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or is_dist():
        return is_dist()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(get_local_rank())
    timeout = datetime.timedelta(seconds=timeout_s)
    # torchrun's store (env://), under a prefix of its own for each elastic restart: the
    # agent keeps one store across restarts, so without it a restarted rank can read the
    # address a dead rank of the previous attempt published there and fail to connect
    # (seen with gloo: "connectFullMesh failed ... Connection refused").
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(f"detres/attempt_{restart_count()}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                            timeout=timeout)
    return True


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_BACKEND_MARKS = ("gloo", "nccl", "timed out", "connection closed", "connection reset",
                  "broken pipe")


def is_peer_error(e: BaseException) -> bool:
    """Whether ``e`` is a collective's failure: c10d's ``DistError``, or the plain
    ``RuntimeError`` that gloo raises from its transport (a timeout, a closed connection)."""
    if isinstance(e, dist.DistError):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _BACKEND_MARKS)


def describe_peer_error(e: BaseException) -> str:
    """A collective's failure in a few words: a timeout or a lost connection, with the
    backend's first line."""
    text = " ".join(str(e).split())
    low = text.lower()
    if "timed out" in low or "timeout" in low:
        kind = "a collective timed out (a peer is stuck or gone)"
    elif "closed" in low or "reset" in low or "broken pipe" in low or "connection" in low:
        kind = "a peer's connection closed (the process died)"
    else:
        kind = "a collective failed"
    return f"{kind}: {text[:300]}"


def barrier() -> None:
    if is_dist():
        dist.barrier()


def flagged_ranks(*flags: bool) -> tuple[list[int], ...]:
    """For each flag, the ranks that set it: the same lists on every rank, from one
    all-reduce of ``len(flags) * world_size`` bytes (without a process group: ``[0]`` for a
    set flag, ``[]`` otherwise)."""
    if not is_dist():
        return tuple([0] if f else [] for f in flags)
    t = torch.zeros(len(flags), get_world_size(), dtype=torch.uint8,
                    device=_collective_device())
    t[:, get_rank()] = torch.tensor([int(bool(f)) for f in flags], dtype=torch.uint8)
    dist.all_reduce(t)
    t = t.cpu()
    return tuple([int(r) for r in torch.nonzero(row).flatten()] for row in t)


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
