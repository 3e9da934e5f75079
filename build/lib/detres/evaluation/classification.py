"""Top-k classification accuracy (top-1 / top-5 and their errors, as the paper's tables)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from detres.evaluation.base import Evaluator, to_numpy


class ClassificationEvaluator(Evaluator):
    """Counts top-k hits of ``process(logits, labels)`` batches, gathered over ranks.

    With fewer than k classes, top-k is top-C (always a hit). ``ids`` (optional, per sample)
    let repeated samples, such as a DistributedSampler's padding, count once.
    """

    def __init__(self, *, topk: Sequence[int] = (1, 5)) -> None:
        if not topk or min(topk) < 1:
            raise ValueError(f"topk must be positive integers, got {list(topk)}")
        self.topk = tuple(int(k) for k in topk)
        super().__init__()

    def reset(self) -> None:
        self._hits: list[np.ndarray] = []
        self._ids: list[np.ndarray] | None = None

    @torch.no_grad()
    def process(self, logits: torch.Tensor, labels: torch.Tensor,
                ids: torch.Tensor | Sequence[int] | None = None) -> None:
        """Add a batch: ``logits`` (N, C), ``labels`` (N,) class indices, optional ``ids`` (N,)."""
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} "
                             f"and {tuple(labels.shape)}")
        if not self._hits:
            self._ids = None if ids is None else []
        elif (ids is None) != (self._ids is None):
            raise ValueError("give ids for every batch or for none")
        c = logits.shape[1]
        labels = labels.to(logits.device)
        if len(labels) and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"labels must be in [0, {c}), got {labels.min()}..{labels.max()}")
        pred = logits.topk(min(max(self.topk), c), dim=1).indices  # (N, k), best first
        hit = pred == labels[:, None]
        self._hits.append(torch.stack([hit[:, : min(k, c)].any(1) for k in self.topk], 1)
                          .cpu().numpy())
        if self._ids is not None:
            self._ids.append(to_numpy(ids, np.int64).reshape(-1))

    def state(self) -> tuple[np.ndarray, np.ndarray | None]:
        hits = np.concatenate(self._hits) if self._hits else np.zeros((0, len(self.topk)), bool)
        return hits, (np.concatenate(self._ids) if self._ids is not None else None)

    def score(self, states: list[Any]) -> dict[str, Any]:
        hits = np.concatenate([h for h, _ in states])
        if all(i is not None for _, i in states) and states:
            _, first = np.unique(np.concatenate([i for _, i in states]), return_index=True)
            hits = hits[first]
        n = len(hits)
        out: dict[str, Any] = {"num_samples": n}
        for j, k in enumerate(self.topk):
            acc = float(hits[:, j].mean()) if n else 0.0
            out[f"top{k}"] = acc
            out[f"top{k}_err"] = 1.0 - acc
        return out
