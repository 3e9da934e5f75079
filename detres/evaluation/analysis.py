"""Where a detector's AP goes, from the evaluator's own arrays: precision-recall curves per
class at IoU .5 and .75, F1 against the score threshold (the best threshold is what
``predict.py --score-thresh`` wants), and a confusion matrix with a background row and
column.

* Curves. COCO: the accumulated ``precision`` and ``scores`` arrays of the ``COCOeval`` that
  produced the printed figures (101 recall points, interpolated precision, the detection
  score at each point; area "all", the largest ``maxDets``), so each curve's mean is exactly
  the printed AP. VOC: the devkit rules' own cumulative recall and precision over the
  class's ranked detections, so ``voc_ap`` of the curve is exactly the printed AP.
* F1. Per class, F1 = 2PR / (P + R) at each point of its curve, read as a function of the
  score threshold (the curve's points are in decreasing score); the mean over classes with
  ground truth on a 0.00-1.00 grid gives the run's best threshold.
* Confusion matrix (Ultralytics' definition). At IoU >= .5 and one stated score threshold,
  detections and ground-truth boxes of an image are paired greedily by decreasing IoU,
  whatever their classes; row = predicted class, column = true class, the last row and
  column background: a missed object counts in the background row, a detection of nothing in
  the background column. Crowd and difficult ground truth is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REPORT_IOUS = (0.5, 0.75)
SCORE_GRID = np.linspace(0.0, 1.0, 101)


@dataclass
class ClassCurve:
    """One class's curve: points in decreasing score."""

    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    ap: float

    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)

    def f1_at(self, thresholds: np.ndarray) -> np.ndarray:
        """F1 of the detections kept at each score threshold: the last curve point whose
        score is at or above it (0 when none is)."""
        f1 = self.f1()
        # scores decrease along the curve: the number of points with score >= g
        n = np.searchsorted(-self.scores, -thresholds, side="right")
        return np.where(n > 0, f1[np.maximum(n - 1, 0)], 0.0)


def coco_curves(ev: Any) -> dict[float, list[ClassCurve | None]]:
    """Curves per IoU in :data:`REPORT_IOUS` and per category of ``ev.params.catIds`` (None
    for a category without ground truth) from an accumulated ``COCOeval``."""
    precision, scores = ev.eval["precision"], ev.eval["scores"]  # (T, R, K, A, M)
    rec = np.asarray(ev.params.recThrs, np.float64)
    a = list(ev.params.areaRngLbl).index("all")
    m = len(ev.params.maxDets) - 1
    out: dict[float, list[ClassCurve | None]] = {}
    for iou in REPORT_IOUS:
        t = int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - iou)))
        curves: list[ClassCurve | None] = []
        for k in range(precision.shape[2]):
            p = np.asarray(precision[t, :, k, a, m], np.float64)
            if (p < 0).all():
                curves.append(None)
                continue
            curves.append(ClassCurve(scores=np.asarray(scores[t, :, k, a, m], np.float64),
                                     precision=p, recall=rec, ap=float(p[p > -1].mean())))
        out[iou] = curves
    return out


def f1_summary(curves: Sequence[ClassCurve | None], class_names: Sequence[str]
               ) -> dict[str, Any]:
    """Per class: the best F1, its score threshold, precision and recall; overall: the
    mean F1 over classes with ground truth on :data:`SCORE_GRID` and its best threshold."""
    per_class: dict[str, Any] = {}
    rows = []
    for name, c in zip(class_names, curves, strict=True):
        if c is None or not len(c.scores):
            per_class[name] = None
            continue
        f1 = c.f1()
        i = int(np.argmax(f1))
        per_class[name] = {"f1": float(f1[i]), "score_thresh": float(c.scores[i]),
                           "precision": float(c.precision[i]), "recall": float(c.recall[i])}
        rows.append(c.f1_at(SCORE_GRID))
    mean = np.mean(rows, axis=0) if rows else np.zeros_like(SCORE_GRID)
    j = int(np.argmax(mean))
    return {"best_score_thresh": float(SCORE_GRID[j]), "best_mean_f1": float(mean[j]),
            "grid": SCORE_GRID.tolist(), "mean_f1": mean.tolist(), "per_class": per_class}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def confusion_matrix(gt: dict[Any, tuple[np.ndarray, np.ndarray]],
                     det: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]],
                     num_classes: int, *, score_thresh: float, iou: float = 0.5) -> np.ndarray:
    """``(K + 1, K + 1)`` counts, row predicted, column true, index K background (see the
    module docstring). ``gt[image] = (class indices 0..K-1, xyxy boxes)``, ``det[image] =
    (class indices, scores, xyxy boxes)``."""
    k = num_classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    for image in set(gt) | set(det):
        gc, gb = gt.get(image, (np.zeros(0, np.int64), np.zeros((0, 4))))
        dc, ds, db = det.get(image, (np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))))
        keep = ds >= score_thresh
        dc, db = dc[keep], db[keep]
        matched_g = np.zeros(len(gc), bool)
        matched_d = np.zeros(len(dc), bool)
        if len(gc) and len(dc):
            ov = _iou(db, gb)
            di, gi = np.nonzero(ov >= iou)
            order = np.argsort(-ov[di, gi], kind="stable")
            for d, g in zip(di[order].tolist(), gi[order].tolist(), strict=True):
                if not matched_d[d] and not matched_g[g]:
                    matched_d[d] = matched_g[g] = True
                    cm[dc[d], gc[g]] += 1
        np.add.at(cm, (np.full((~matched_g).sum(), k), gc[~matched_g]), 1)
        np.add.at(cm, (dc[~matched_d], np.full((~matched_d).sum(), k)), 1)
    return cm


def curves_json(curves: dict[float, list[ClassCurve | None]], class_names: Sequence[str]
                ) -> dict[str, Any]:
    return {f"{iou:g}": {name: (None if c is None else {
        "ap": c.ap, "recall": c.recall.tolist(), "precision": c.precision.tolist(),
        "scores": c.scores.tolist()}) for name, c in zip(class_names, cs, strict=True)}
        for iou, cs in curves.items()}


def build_report(curves: dict[float, list[ClassCurve | None]], class_names: Sequence[str],
                 gt: dict[Any, tuple[np.ndarray, np.ndarray]],
                 det: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 *, source: str) -> dict[str, Any]:
    """The report's numbers (the JSON beside the pictures)."""
    f1 = f1_summary(curves[0.5], class_names)
    thresh = f1["best_score_thresh"]
    cm = confusion_matrix(gt, det, len(class_names), score_thresh=thresh)
    col = cm.sum(0, keepdims=True)
    return {"source": source, "class_names": list(class_names),
            "pr_curves": curves_json(curves, class_names), "f1": f1,
            "confusion_matrix": {"iou": 0.5, "score_thresh": thresh,
                                 "labels": [*class_names, "background"],
                                 "rows": "predicted", "columns": "true",
                                 "counts": cm.tolist(),
                                 "normalized": (cm / np.maximum(col, 1)).tolist()}}
