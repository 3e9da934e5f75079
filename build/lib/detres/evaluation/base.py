"""The evaluator contract: ``reset()``, ``process(...)`` once per batch, ``evaluate()`` at the end.

Under ``torchrun`` every rank processes its share of the test set; ``evaluate()`` gathers
the accumulated state to rank 0 (``all_gather_object``), which scores it; other ranks get
``{}``. Detection evaluators take per-image prediction dicts::

    {"image_id": ..., "boxes": Tensor[N, 4] (x1, y1, x2, y2, original-image pixels),
     "scores": Tensor[N], "labels": Tensor[N] (dataset category ids)}
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from detres.utils.dist import all_gather_object, is_main_process
from detres.utils.errors import InputError

logger = logging.getLogger(__name__)

#: One image's detections: image_id, boxes (N, 4) f8, scores (N,) f8, labels (N,) i8.
Prediction = dict[str, Any]


def to_numpy(x: Any, dtype: Any) -> np.ndarray:
    """A tensor / array / sequence as a numpy array of ``dtype`` (tensors moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def as_prediction(p: Mapping[str, Any]) -> Prediction:
    """Validate one image's prediction dict and convert it to numpy (float64 boxes/scores)."""
    for key in ("image_id", "boxes", "scores", "labels"):
        if key not in p:
            raise KeyError(f"prediction for image {p.get('image_id', '?')!r} has no {key!r} "
                           "(expected image_id, boxes, scores, labels)")
    image_id = p["image_id"]
    if isinstance(image_id, torch.Tensor | np.ndarray | np.generic):
        image_id = image_id.item()
    boxes = to_numpy(p["boxes"], np.float64).reshape(-1, 4)
    scores = to_numpy(p["scores"], np.float64).reshape(-1)
    labels = to_numpy(p["labels"], np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise InputError(f"prediction for image {image_id!r}: {len(boxes)} boxes, "
                         f"{len(scores)} scores, {len(labels)} labels (must be equal)")
    if not np.isfinite(boxes).all() or not np.isfinite(scores).all():
        raise InputError(f"prediction for image {image_id!r} has non-finite boxes or scores")
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if len(bad):
        raise InputError(f"prediction for image {image_id!r}: box {boxes[bad[0]].tolist()} has "
                         "x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")
    return {"image_id": image_id, "boxes": boxes, "scores": scores, "labels": labels}


def dedupe_by_image(predictions: Iterable[Prediction]) -> list[Prediction]:
    """Keep the first prediction per image id: a DistributedSampler pads the last batch by
    repeating images, which must not count twice."""
    seen: set[Hashable] = set()
    out = []
    for p in predictions:
        if p["image_id"] in seen:
            continue
        seen.add(p["image_id"])
        out.append(p)
    return out


class Evaluator(ABC):
    """Accumulates per-batch results; :meth:`evaluate` scores them on rank 0."""

    def __init__(self) -> None:
        self.reset()

    @abstractmethod
    def reset(self) -> None:
        """Forget everything processed so far."""

    @abstractmethod
    def process(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate one batch."""

    @abstractmethod
    def state(self) -> Any:
        """This rank's accumulated state (picklable), as gathered by :meth:`evaluate`."""

    @abstractmethod
    def score(self, states: list[Any]) -> dict[str, Any]:
        """Results from the states of all ranks, in rank order."""

    def evaluate(self) -> dict[str, Any]:
        """Gather every rank's state to rank 0 and score it there; ``{}`` on other ranks."""
        states = all_gather_object(self.state())
        if not is_main_process():
            return {}
        return self.score(states)


class DetectionEvaluator(Evaluator):
    """Base of the COCO and VOC evaluators: collects per-image predictions as numpy arrays."""

    def reset(self) -> None:
        self._predictions: list[Prediction] = []

    def process(self, predictions: Iterable[Mapping[str, Any]]) -> None:
        """Add a batch of per-image prediction dicts (see the module docstring)."""
        self._predictions.extend(as_prediction(p) for p in predictions)

    def state(self) -> list[Prediction]:
        return self._predictions

    def score(self, states: list[Any]) -> dict[str, Any]:
        merged = dedupe_by_image(p for part in states for p in part)
        n = sum(len(part) for part in states)
        if n != len(merged):
            logger.debug("dropped %d repeated image predictions", n - len(merged))
        return self.score_predictions(merged)

    @abstractmethod
    def score_predictions(self, predictions: list[Prediction]) -> dict[str, Any]:
        """Results for a list of validated per-image predictions."""
