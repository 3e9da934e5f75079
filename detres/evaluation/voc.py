"""PASCAL VOC detection AP by the devkit's rules, vectorized with numpy.

The rules (``VOCevaldet.m`` and its Python port ``voc_eval.py`` of py-faster-rcnn / Detectron2):

- detections of a class are ranked by descending score (a stable sort: ties keep input order);
- each detection is compared with the ground truth of its image and class; IoU uses the
  inclusive pixel convention (width = x2 - x1 + 1) and the detection's best-overlapping
  ground-truth box ``jmax`` (the first one on a tie) is its only candidate;
- IoU > threshold (strictly, as in ``voc_eval.py``; the MATLAB devkit writes ``>=``) with a
  *difficult* ``jmax``: ignored, neither TP nor FP; with a ``jmax`` not yet taken: TP, which
  takes it; already taken: FP (duplicate); IoU <= threshold: FP;
- recall = TP / number of non-difficult ground-truth boxes, precision = TP / (TP + FP);
  AP is the VOC2007 11-point interpolation or, for VOC2010 and later, the area under the
  interpolated (monotone) precision/recall curve.

Because ``jmax`` does not depend on which boxes are already taken, the greedy matching has a
closed form: a candidate is a TP iff it is the highest-ranked candidate for its ``jmax``.
That lets all detections and all IoU thresholds be scored at once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from detres.evaluation.analysis import REPORT_IOUS, ClassCurve, build_report
from detres.evaluation.base import DetectionEvaluator, Prediction, to_numpy

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
#: .50:.05:.95, as COCO's (np.linspace(.5, .95, 10)).
IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """The devkit's AP for one precision/recall curve (recall non-decreasing)."""
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        if len(rec) == 0:
            return 0.0
        # 11 points: mean over t in {0, .1, ..., 1} of max(precision[recall >= t]) (0 if none).
        # recall >= t is a suffix, so that max is the reversed running max at its first index.
        envelope = np.maximum.accumulate(prec[::-1])[::-1]
        first = np.searchsorted(rec, np.arange(0.0, 1.1, 0.1), side="left")
        p = np.where(first < len(rec), envelope[np.minimum(first, len(rec) - 1)], 0.0)
        return float(np.sum(p / 11.0))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.flatnonzero(mrec[1:] != mrec[:-1])  # points where recall changes
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _cat(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    return np.concatenate(parts) if parts else empty


def _paired_iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of det[i] with gt[i] in the devkit's inclusive pixel convention (same op order)."""
    iw = np.maximum(np.minimum(gt[:, 2], det[:, 2]) - np.maximum(gt[:, 0], det[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], det[:, 3]) - np.maximum(gt[:, 1], det[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    uni = ((det[:, 2] - det[:, 0] + 1.0) * (det[:, 3] - det[:, 1] + 1.0)
           + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
    return inters / uni


def voc_average_precisions(
    gt_image: np.ndarray, gt_class: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray,
    det_image: np.ndarray, det_class: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
    *, num_classes: int, iou_thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS,
    use_07_metric: bool = False, curves: dict[float, dict[int, Any]] | None = None,
) -> np.ndarray:
    """AP[t, c] for every IoU threshold t and class c (NaN for a class without non-difficult
    ground truth). Images and classes are integer indices; boxes are (x1, y1, x2, y2) in
    the devkit's 1-based inclusive pixel coordinates. ``curves``: filled with the curve
    that gives each AP, ``curves[iou][c] = (scores, recall, precision)`` over the class's
    ranked detections, for the thresholds of ``iou_thresholds`` among its keys."""
    k = num_classes
    thr = np.asarray(iou_thresholds, dtype=np.float64)
    gt_image, gt_class = np.asarray(gt_image, np.int64), np.asarray(gt_class, np.int64)
    det_image, det_class = np.asarray(det_image, np.int64), np.asarray(det_class, np.int64)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, np.float64)
    gt_difficult = np.asarray(gt_difficult, bool)
    if not len(gt_image) == len(gt_class) == len(gt_boxes) == len(gt_difficult):
        raise ValueError("ground truth: image, class, box and difficult arrays differ in length")
    if not len(det_image) == len(det_class) == len(det_scores) == len(det_boxes):
        raise ValueError("detections: image, class, score and box arrays differ in length")
    if not (np.isfinite(det_scores).all() and np.isfinite(det_boxes).all()):
        raise ValueError("detections have non-finite scores or boxes")
    for name, c in (("ground-truth", gt_class), ("detection", det_class)):
        if len(c) and (c.min() < 0 or c.max() >= k):
            bad = c[(c < 0) | (c >= k)][0]
            raise ValueError(f"{name} class index out of range [0, {k}): {bad}")

    # Ground truth grouped by (image, class), annotation order kept inside a group.
    gkey = gt_image * k + gt_class
    gorder = np.argsort(gkey, kind="stable")
    gkey, gboxes, gdiff = gkey[gorder], gt_boxes[gorder], gt_difficult[gorder]
    # Detections ranked by class, then descending score.
    dorder = np.lexsort((-det_scores, det_class))
    dcls, dboxes = det_class[dorder], det_boxes[dorder]
    dkey = det_image[dorder] * k + dcls
    lo = np.searchsorted(gkey, dkey, side="left")
    n = np.searchsorted(gkey, dkey, side="right") - lo  # same-image same-class GT per det

    # Every (detection, GT) pair of the same image and class: best overlap and its GT.
    num_pairs = int(n.sum())
    start = np.cumsum(n) - n
    pair_det = np.repeat(np.arange(len(dkey)), n)
    pair_gt = np.repeat(lo - start, n) + np.arange(num_pairs)
    ovmax = np.full(len(dkey), -np.inf)
    jmax = np.full(len(dkey), -1, dtype=np.int64)
    has = n > 0
    if num_pairs:
        iou = _paired_iou(dboxes[pair_det], gboxes[pair_gt])
        seg = start[has]
        ovmax[has] = np.maximum.reduceat(iou, seg)
        first_max = np.where(iou == ovmax[pair_det], np.arange(num_pairs), num_pairs)
        jmax[has] = pair_gt[np.minimum.reduceat(first_max, seg)]
    difficult = np.zeros(len(dkey), bool)
    difficult[has] = gdiff[jmax[has]]

    over = ovmax[None, :] > thr[:, None]  # (T, D)
    cand = over & ~difficult[None, :]
    tp = np.zeros_like(over)
    for t in range(len(thr)):
        idx = np.flatnonzero(cand[t])
        _, first = np.unique(jmax[idx], return_index=True)  # highest-ranked per GT box
        tp[t, idx[first]] = True
    fp = ~over | (cand & ~tp)  # ignored (difficult) detections are neither

    npos = np.bincount(gt_class[~gt_difficult], minlength=k)
    bounds = np.searchsorted(dcls, np.arange(k + 1))
    ap = np.full((len(thr), k), np.nan)
    eps = np.finfo(np.float64).eps
    for c in np.flatnonzero(npos):
        tpc = np.cumsum(tp[:, bounds[c]:bounds[c + 1]], axis=1, dtype=np.float64)
        fpc = np.cumsum(fp[:, bounds[c]:bounds[c + 1]], axis=1, dtype=np.float64)
        rec = tpc / float(npos[c])
        prec = tpc / np.maximum(tpc + fpc, eps)
        ap[:, c] = [voc_ap(rec[t], prec[t], use_07_metric) for t in range(len(thr))]
        if curves is not None:
            ranked = det_scores[dorder][bounds[c]:bounds[c + 1]]
            for iou in curves:
                t = int(np.argmin(np.abs(thr - iou)))
                curves[iou][int(c)] = (ranked, rec[t], prec[t])
    return ap


def summarize_ap(ap: np.ndarray, class_names: Sequence[str], thresholds: np.ndarray
                 ) -> dict[str, Any]:
    """The results dict from AP[t, c]: mAP@.5, mAP@.75, mAP@[.5,.95], per_class (None for a
    class without ground truth, which is left out of the means)."""
    valid = ~np.isnan(ap).any(axis=0)
    t50 = int(np.argmin(np.abs(thresholds - 0.5)))
    t75 = int(np.argmin(np.abs(thresholds - 0.75)))
    if not valid.any():
        warnings.warn("no class has non-difficult ground truth: mAP is undefined", stacklevel=3)

    def mean(a: np.ndarray) -> float | None:
        return float(a.mean()) if a.size else None

    per_class = {
        name: ({"AP@.5": float(ap[t50, c]), "AP@.75": float(ap[t75, c]),
                "AP@[.5,.95]": float(ap[:, c].mean())} if valid[c]
               else {"AP@.5": None, "AP@.75": None, "AP@[.5,.95]": None})
        for c, name in enumerate(class_names)
    }
    return {"mAP@.5": mean(ap[t50, valid]), "mAP@[.5,.95]": mean(ap[:, valid]),
            "mAP@.75": mean(ap[t75, valid]), "per_class": per_class}


class VOCEvaluator(DetectionEvaluator):
    """VOC scoring of per-image predictions against ground-truth records.

    ``gt`` maps image id -> ``{"boxes": (M, 4) x1, y1, x2, y2 as in the XML (1-based),
    "labels" (or "classes"): class names or category ids, "difficult": (M,) flags}``.
    Prediction labels are category ids: ``category_ids[i]`` is ``class_names[i]``
    (default 1..K). ``use_07_metric`` defaults to ``year < 2010``. With
    ``boxes_zero_based`` predictions are taken to be in 0-based coordinates (a loader that
    subtracted 1 from the XML's xmin, ymin, as Detectron2's does) and get 1 added to x1, y1.
    """

    def __init__(
        self, *, gt: Mapping[Hashable, Mapping[str, Any]],
        class_names: Sequence[str] = VOC_CLASSES, category_ids: Sequence[int] | None = None,
        year: int | None = 2007, use_07_metric: bool | None = None,
        boxes_zero_based: bool = False,
    ) -> None:
        self.class_names = tuple(class_names)
        k = len(self.class_names)
        ids = np.arange(1, k + 1) if category_ids is None else np.asarray(category_ids, np.int64)
        if len(ids) != k or len(np.unique(ids)) != k:
            raise ValueError(f"category_ids {ids.tolist()} must be {k} distinct ids")
        self._id_order = np.argsort(ids)
        self._sorted_ids = ids[self._id_order]
        self._name_index = {n: i for i, n in enumerate(self.class_names)}
        self.use_07_metric = bool(year is not None and year < 2010) if use_07_metric is None \
            else bool(use_07_metric)
        self.boxes_zero_based = boxes_zero_based
        self.image_ids = list(gt)
        self.image_index = {i: n for n, i in enumerate(self.image_ids)}
        self._gt = self._flatten(gt)
        super().__init__()

    def class_index(self, labels: Any, where: str) -> np.ndarray:
        """Class indices for class names or category ids; ``where`` names the source in errors."""
        labels = np.asarray(labels)
        if labels.dtype.kind in "USO":
            out = [self._name_index.get(str(x), -1) for x in labels.tolist()]
            idx = np.asarray(out, np.int64)
            if (idx < 0).any():
                raise ValueError(f"{where}: unknown class {labels[idx < 0][0]!r}; "
                                 f"known: {', '.join(self.class_names)}")
            return idx
        ids = labels.astype(np.int64).reshape(-1)
        if not len(ids):
            return np.zeros(0, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self._sorted_ids) - 1)
        bad = self._sorted_ids[pos] != ids
        if bad.any():
            raise ValueError(f"{where}: unknown category id {int(ids[bad][0])}; "
                             f"known: {self._sorted_ids.tolist()}")
        return self._id_order[pos]

    def _flatten(self, gt: Mapping[Hashable, Mapping[str, Any]]) -> tuple[np.ndarray, ...]:
        img, cls, boxes, diff = [], [], [], []
        for n, (image_id, rec) in enumerate(gt.items()):
            b = to_numpy(rec["boxes"], np.float64).reshape(-1, 4)
            labels = rec["labels"] if "labels" in rec else rec["classes"]
            c = self.class_index(to_numpy(labels, None), f"ground truth of image {image_id!r}") \
                if len(b) else np.zeros(0, np.int64)
            d = to_numpy(rec.get("difficult", np.zeros(len(b))), bool).reshape(-1)
            if not len(b) == len(c) == len(d):
                raise ValueError(f"ground truth of image {image_id!r}: {len(b)} boxes, {len(c)} "
                                 f"labels, {len(d)} difficult flags (must be equal)")
            if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
                raise ValueError(f"ground truth of image {image_id!r} has a box with x2 < x1 or "
                                 "y2 < y1")
            img.append(np.full(len(b), n, np.int64))
            cls.append(c)
            boxes.append(b)
            diff.append(d)
        return (_cat(img, np.zeros(0, np.int64)), _cat(cls, np.zeros(0, np.int64)),
                _cat(boxes, np.zeros((0, 4))), _cat(diff, np.zeros(0, bool)))

    def score_predictions(self, predictions: list[Prediction]) -> dict[str, Any]:
        img, cls = [], []
        for p in predictions:
            if p["image_id"] not in self.image_index:
                raise ValueError(f"prediction for unknown image id {p['image_id']!r} "
                                 "(not in the ground truth)")
            img.append(np.full(len(p["scores"]), self.image_index[p["image_id"]], np.int64))
            cls.append(self.class_index(p["labels"], f"prediction for image {p['image_id']!r}"))
        boxes = _cat([p["boxes"] for p in predictions], np.zeros((0, 4)))
        if self.boxes_zero_based:
            boxes = boxes.copy()
            boxes[:, :2] += 1.0
        scores = _cat([p["scores"] for p in predictions], np.zeros(0))
        return self.score_arrays(_cat(img, np.zeros(0, np.int64)), _cat(cls, np.zeros(0, np.int64)),
                                 scores, boxes)

    def score_arrays(self, image_index: np.ndarray, class_index: np.ndarray, scores: np.ndarray,
                     boxes: np.ndarray) -> dict[str, Any]:
        """Results for flat detections: indices into ``image_ids`` and ``class_names``, boxes in
        devkit coordinates."""
        image_index = np.asarray(image_index, np.int64)
        if len(image_index) and (image_index.min() < 0 or image_index.max() >= len(self.image_ids)):
            raise ValueError(f"image index out of range [0, {len(self.image_ids)})")
        if len(scores) == 0:
            warnings.warn("VOC evaluation got no detections: every AP is 0", stacklevel=2)
        curves: dict[float, dict[int, Any]] = {iou: {} for iou in REPORT_IOUS}
        ap = voc_average_precisions(*self._gt, image_index, class_index, scores, boxes,
                                    num_classes=len(self.class_names),
                                    use_07_metric=self.use_07_metric, curves=curves)
        self._last = (curves, image_index, np.asarray(class_index, np.int64),
                      np.asarray(scores, np.float64), np.asarray(boxes, np.float64))
        out = summarize_ap(ap, self.class_names, IOU_THRESHOLDS)
        out["metric"] = "voc07" if self.use_07_metric else "area"
        return out


    def report(self) -> dict[str, Any]:
        """:func:`~detres.evaluation.analysis.build_report` of the last scoring: the devkit
        rules' own curves (``voc_ap`` of each gives the printed AP)."""
        curves, img, cls, scores, boxes = self._last
        names = list(self.class_names)
        by_iou = {iou: [None if c not in cs else ClassCurve(
            scores=cs[c][0], recall=cs[c][1], precision=cs[c][2],
            ap=voc_ap(cs[c][1], cs[c][2], self.use_07_metric)) for c in range(len(names))]
            for iou, cs in curves.items()}
        g_img, g_cls, g_box, g_diff = self._gt
        keep = ~np.asarray(g_diff, bool)
        gt = {i: (g_cls[keep][g_img[keep] == i], g_box[keep][g_img[keep] == i])
              for i in np.unique(g_img[keep]).tolist()}
        det = {i: (cls[img == i], scores[img == i], boxes[img == i])
               for i in np.unique(img).tolist()}
        image_ids = list(self.image_ids)
        self.last_pairs = (names, {image_ids[i]: v for i, v in gt.items()},
                           {image_ids[i]: v for i, v in det.items()})  # for pictures
        return build_report(by_iou, names, gt, det, source="VOC devkit rules "
                            f"({'11-point VOC07' if self.use_07_metric else 'area'} AP)")
