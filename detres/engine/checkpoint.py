"""Training checkpoints: plain tensors and plain types, written atomically, read safely.

A checkpoint is ``{"model", "optimizer", "scheduler", "scaler", "iteration", "rng",
"rng_per_rank", "world_size", "config", "meta"}`` (``rng``: rank 0's RNG state;
``rng_per_rank``: every rank's, so each rank of a resumed DDP run continues its own stream).
Everything in it is a tensor, a number, a string, or a list/dict of those, so reading it
(:func:`detres.utils.io.read_checkpoint`, ``weights_only=True``) never unpickles arbitrary
objects. The model's state goes through :mod:`detres.modeling.weights` (strict).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detres.modeling.weights import WeightsError, load_model_state
from detres.utils.io import atomic_save, read_checkpoint, rng_state, set_rng_state
from detres.utils.logging import LOG

LAST = "checkpoint_last.pth"
FINAL = "model_final.pth"
BEST = "model_best.pth"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    iteration: int = 0,
    config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    rng_per_rank: list[dict[str, Any]] | None = None,
    trainer: dict[str, Any] | None = None,
) -> Path:
    rngs = rng_per_rank or [rng_state()]
    obj: dict[str, Any] = {
        "model": unwrap(model).state_dict(),
        "iteration": int(iteration),
        "rng": rngs[0],
        "rng_per_rank": rngs,
        "world_size": len(rngs),
        "config": config or {},
        "meta": meta or {},
        "trainer": trainer or {},  # the loop's own state: best metric, evaluations since
    }
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        obj["scheduler"] = scheduler.state_dict()
    if scaler is not None and scaler.is_enabled():
        obj["scaler"] = scaler.state_dict()
    return atomic_save(obj, path)


def resume_from(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; returns the checkpoint dict.
    ``rank`` takes its own RNG state when the checkpoint was written by as many ranks as
    there are now; with another world size the data shards differ anyway, and every rank
    takes rank 0's state (logged)."""
    ckpt = read_checkpoint(path)
    if "model" not in ckpt:
        raise WeightsError(f"checkpoint {path} has no 'model' entry (keys: {sorted(ckpt)})")
    load_model_state(model, ckpt["model"], source=str(path))
    if optimizer is not None and "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and "scheduler" in ckpt:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    per_rank = ckpt.get("rng_per_rank") or []
    if len(per_rank) == world_size:
        set_rng_state(per_rank[rank])
    elif "rng" in ckpt:
        if per_rank:
            LOG.warning("%s was written by %d ranks, resumed by %d: the data shards and random "
                        "streams differ from an uninterrupted run", path, len(per_rank),
                        world_size)
        set_rng_state(ckpt["rng"])
    return ckpt
