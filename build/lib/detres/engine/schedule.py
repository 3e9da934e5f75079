"""Optimizer and learning-rate schedule, both driven by the iteration count.

The schedule is ``base_lr x warmup(it) x decay(it)`` with decay multi-step, cosine, or
"plateau" (lr x gamma after ``plateau_patience`` evaluations without improvement, the
paper's ImageNet rule). Its state is plain numbers, so it checkpoints exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from detres.config import SolverCfg

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def scaled_lr(solver: SolverCfg) -> float:
    """The linear scaling rule: base_lr x batch_size / reference_batch_size."""
    if solver.reference_batch_size > 0:
        return solver.base_lr * solver.batch_size / solver.reference_batch_size
    return solver.base_lr


def build_optimizer(model: nn.Module, solver: SolverCfg) -> torch.optim.Optimizer:
    """SGD (or AdamW) with ``weight_decay_norm`` on normalization layers' parameters and
    biases treated like other weights (as Detectron2 does by default)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, _NORM_TYPES) else decay).append(p)
    groups = [{"params": decay, "weight_decay": solver.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": solver.weight_decay_norm})
    lr = scaled_lr(solver)
    if solver.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=solver.momentum, nesterov=solver.nesterov)
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"solver.optimizer: unknown {solver.optimizer!r}")


class LRSchedule:
    """Sets every param group's lr from the iteration; call :meth:`step` each iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, solver: SolverCfg) -> None:
        self.optimizer = optimizer
        self.solver = solver
        self.base_lr = scaled_lr(solver)
        self.plateau_factor = 1.0
        self.best: float | None = None
        self.bad_evals = 0
        self.step(0)

    def factor(self, it: int) -> float:
        s = self.solver
        if it < s.warmup_iters:
            if s.warmup_method == "constant":
                warm = s.warmup_factor
            else:
                alpha = it / max(1, s.warmup_iters)
                warm = s.warmup_factor * (1 - alpha) + alpha
        else:
            warm = 1.0
        if s.schedule == "multistep":
            decay = s.gamma ** sum(1 for m in s.steps if it >= m)
        elif s.schedule == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * min(it, s.max_iter) / max(1, s.max_iter)))
        else:  # plateau
            decay = self.plateau_factor
        return warm * decay

    def lr_at(self, it: int) -> float:
        return self.base_lr * self.factor(it)

    def step(self, it: int) -> float:
        lr = self.lr_at(it)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def observe(self, metric: float, *, lower_is_better: bool = True) -> None:
        """Feed a validation metric; on a plateau schedule, decay after enough bad evals."""
        if self.solver.schedule != "plateau":
            return
        score = metric if lower_is_better else -metric
        if self.best is None or score < self.best - 1e-12:
            self.best, self.bad_evals = score, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.solver.plateau_patience:
            self.plateau_factor *= self.solver.gamma
            self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateau_factor": self.plateau_factor,
            "best": self.best,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_factor = float(state["plateau_factor"])
        self.best = state["best"]
        self.bad_evals = int(state["bad_evals"])
