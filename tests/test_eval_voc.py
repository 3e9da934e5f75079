"""VOC AP: hand-worked cases, and parity with a plain-loop rendering of the devkit's voc_eval.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detres.evaluation import EVALUATORS, VOCEvaluator, voc_ap, voc_average_precisions

# ----------------------------------------------------------------------------------------
# Reference: the devkit's voc_eval.py / voc_ap (py-faster-rcnn), written as plain loops.


def devkit_voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def devkit_voc_eval(gt: dict, dets: list, classname: str, ovthresh: float, use_07: bool) -> float:
    """gt: image -> list of (name, bbox, difficult); dets: (image, class, score, bbox)."""
    class_recs, npos = {}, 0
    for image, objs in gt.items():
        r = [o for o in objs if o[0] == classname]
        bbox = np.array([o[1] for o in r], dtype=float).reshape(-1, 4)
        difficult = np.array([o[2] for o in r], dtype=bool)
        npos += int(np.sum(~difficult))
        class_recs[image] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(r)}
    mine = [d for d in dets if d[1] == classname]
    image_ids = [d[0] for d in mine]
    confidence = np.array([d[2] for d in mine], dtype=float)
    bb_all = np.array([d[3] for d in mine], dtype=float).reshape(-1, 4)
    order = np.argsort(-confidence, kind="stable")
    bb_all = bb_all[order]
    image_ids = [image_ids[x] for x in order]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        rr = class_recs[image_ids[d]]
        bb = bb_all[d]
        ovmax = -np.inf
        bbgt = rr["bbox"]
        if bbgt.size > 0:
            ixmin = np.maximum(bbgt[:, 0], bb[0])
            iymin = np.maximum(bbgt[:, 1], bb[1])
            ixmax = np.minimum(bbgt[:, 2], bb[2])
            iymax = np.minimum(bbgt[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not rr["difficult"][jmax]:
                if not rr["det"][jmax]:
                    tp[d] = 1.0
                    rr["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, use_07)


# ----------------------------------------------------------------------------------------


def score(gt: dict, dets: list, classes: list[str], thr: list[float], use_07: bool) -> np.ndarray:
    """Our vectorized AP[t, c] on the reference's input form."""
    images = {k: i for i, k in enumerate(gt)}
    g = [(images[im], classes.index(o[0]), o[1], o[2]) for im, objs in gt.items() for o in objs]
    return voc_average_precisions(
        [x[0] for x in g], [x[1] for x in g], np.array([x[2] for x in g]).reshape(-1, 4),
        [x[3] for x in g], [images[d[0]] for d in dets], [classes.index(d[1]) for d in dets],
        [d[2] for d in dets], np.array([d[3] for d in dets], dtype=float).reshape(-1, 4),
        num_classes=len(classes), iou_thresholds=thr, use_07_metric=use_07)


def hand(dets: list, gt: dict | None = None) -> tuple[float, float]:
    gt = gt or {"A": [("cat", [1, 1, 10, 10], False)], "B": [("cat", [1, 1, 10, 10], False)]}
    return (score(gt, dets, ["cat"], [0.5], True)[0, 0],
            score(gt, dets, ["cat"], [0.5], False)[0, 0])


BOX = [1, 1, 10, 10]
FAR = [50, 50, 60, 60]


def test_hand_worked_two_gt_three_dets() -> None:
    # 2 GT (A, B). Ranked dets: A exact (TP), A far (FP), B exact (TP).
    # tp 1,1,2  fp 0,1,1  rec .5,.5,1  prec 1,.5,2/3.
    # 11-point: t in 0..0.5 -> max prec = 1 (6 points); t in .6..1 -> 2/3 (5 points):
    #   (6 + 5 * 2/3) / 11 = 28/33.  Area: .5 * 1 + .5 * 2/3 = 5/6.
    ap07, ap = hand([("A", "cat", 0.9, BOX), ("A", "cat", 0.8, FAR), ("B", "cat", 0.7, BOX)])
    assert ap07 == pytest.approx(28 / 33, abs=1e-12)
    assert ap == pytest.approx(5 / 6, abs=1e-12)
    # Only one of the two found: rec .5, prec 1 -> 11-point 6/11, area .5.
    assert hand([("A", "cat", 0.9, BOX)]) == pytest.approx((6 / 11, 0.5), abs=1e-12)
    assert hand([]) == (0.0, 0.0)


def test_duplicate_detection_is_false_positive() -> None:
    # A second detection of A's box ranked before B's is a FP: the same numbers as above.
    dup = [("A", "cat", 0.9, BOX), ("A", "cat", 0.8, [1, 1, 10, 11]), ("B", "cat", 0.7, BOX)]
    assert hand(dup) == pytest.approx((28 / 33, 5 / 6), abs=1e-12)
    assert hand([dup[0], dup[2]]) == pytest.approx((1.0, 1.0))


def test_difficult_objects_are_ignored() -> None:
    gt = {"A": [("cat", BOX, False)], "B": [("cat", BOX, False)], "C": [("cat", BOX, True)]}
    # The top-ranked detection hits C's difficult box: neither TP nor FP, npos stays 2.
    dets = [("C", "cat", 0.95, BOX), ("A", "cat", 0.9, BOX), ("A", "cat", 0.8, FAR),
            ("B", "cat", 0.7, BOX)]
    assert hand(dets, gt) == pytest.approx((28 / 33, 5 / 6), abs=1e-12)
    # Not difficult: npos 3, tp 1,2,2,3  fp 0,0,1,1 -> area 1/3 + 1/3 + 1/3 * 3/4 = 11/12.
    gt["C"] = [("cat", BOX, False)]
    assert hand(dets, gt)[1] == pytest.approx(11 / 12, abs=1e-12)


def test_iou_at_threshold_is_not_a_match_inclusive_pixels() -> None:
    # Inclusive convention: [1,1,10,10] is 10x10 = 100 px; [1,1,10,20] is 10x20 = 200 px, so
    # IoU = 100/200 = .5 exactly -> not > .5 -> FP. [1,1,10,19]: 100/190 > .5 -> TP.
    # (Exclusive widths would give 81/171 and 81/162 = .5: neither would match.)
    gt = {"A": [("cat", BOX, False)]}
    assert hand([("A", "cat", 0.9, [1, 1, 10, 20])], gt) == (0.0, 0.0)
    assert hand([("A", "cat", 0.9, [1, 1, 10, 19])], gt) == (1.0, 1.0)


def test_best_overlap_taken_means_false_positive() -> None:
    # Devkit rule: a detection only competes for its best-overlapping GT box. d2's best is g1
    # (IoU .9), already taken by d1, so d2 is a FP although g2 overlaps it by .73.
    gt = {"A": [("cat", BOX, False), ("cat", [3, 1, 12, 10], False)]}
    dets = [("A", "cat", 0.9, BOX), ("A", "cat", 0.8, [2, 1, 10, 10])]
    # rec .5,.5  prec 1,.5 -> 11-point 6/11, area .5
    assert hand(dets, gt) == pytest.approx((6 / 11, 0.5), abs=1e-12)


def test_voc_ap_matches_devkit_on_curves() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(0, 30))
        rec = np.sort(rng.random(n))
        prec = rng.random(n)
        for use07 in (True, False):
            assert voc_ap(rec, prec, use07) == pytest.approx(devkit_voc_ap(rec, prec, use07),
                                                             abs=1e-12)


def random_case(seed: int, integer: bool) -> tuple[dict, list, list[str]]:
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d", "e"]
    gt: dict = {}
    dets: list = []
    for i in range(40):
        objs = []
        for _ in range(int(rng.integers(0, 7))):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(4, 40, 2)
            box = np.array([x, y, x + w, y + h])
            objs.append((classes[int(rng.integers(0, 5))],
                         np.round(box) if integer else box, bool(rng.random() < 0.2)))
        gt[f"im{i}"] = objs
        for name, box, _ in objs:  # near-misses and duplicates around each object
            for _ in range(int(rng.integers(0, 4))):
                b = box + rng.normal(0, 3, 4)
                b[2:] = np.maximum(b[2:], b[:2])
                dets.append((f"im{i}", name, float(rng.random()), np.round(b) if integer else b))
        for _ in range(int(rng.integers(0, 5))):  # clutter, any class
            x, y = rng.uniform(0, 80, 2)
            b = np.array([x, y, x + rng.uniform(2, 40), y + rng.uniform(2, 40)])
            dets.append((f"im{i}", classes[int(rng.integers(0, 5))], float(rng.random()),
                         np.round(b) if integer else b))
    return gt, dets, classes


@pytest.mark.parametrize("seed,integer", [(1, False), (2, True), (3, False), (4, True)])
def test_parity_with_devkit_on_random_cases(seed: int, integer: bool) -> None:
    gt, dets, classes = random_case(seed, integer)
    thr = [0.1, 0.5, 0.55, 0.7, 0.85, 0.95]
    for use07 in (True, False):
        ours = score(gt, dets, classes, thr, use07)
        for c, name in enumerate(classes):
            has_pos = any(o[0] == name and not o[2] for objs in gt.values() for o in objs)
            for t, th in enumerate(thr):
                if not has_pos:
                    assert np.isnan(ours[t, c])
                    continue
                ref = devkit_voc_eval(gt, dets, name, th, use07)
                assert ours[t, c] == pytest.approx(ref, abs=1e-12), (seed, name, th, use07)
    assert ours[1].mean() > 0.2  # the case is not degenerate


def make_evaluator(**kw: object) -> VOCEvaluator:
    gt = {"A": {"boxes": torch.tensor([BOX], dtype=torch.float), "labels": ["cat"],
                "difficult": torch.tensor([False])},
          "B": {"boxes": [BOX, [20, 20, 40, 40]], "classes": [1, 2]}}  # ids, no difficult key
    return EVALUATORS.build("voc", gt=gt, class_names=["cat", "dog"], **kw)


def test_evaluator_results_and_errors() -> None:
    ev = make_evaluator()
    assert ev.use_07_metric
    ev.process([{"image_id": "A", "boxes": torch.tensor([BOX, FAR]),
                 "scores": torch.tensor([.9, .8]), "labels": torch.tensor([1, 1])}])
    ev.process([{"image_id": "B", "boxes": torch.tensor([BOX, [20, 20, 40, 40]]),
                 "scores": torch.tensor([.7, .6]), "labels": torch.tensor([1, 2])},
                {"image_id": "A", "boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                 "labels": torch.zeros(0, dtype=torch.long)}])  # a repeat of A: dropped
    r = ev.evaluate()
    assert r["per_class"]["cat"]["AP@.5"] == pytest.approx(28 / 33)
    assert r["per_class"]["dog"]["AP@[.5,.95]"] == pytest.approx(1.0)
    assert r["mAP@.5"] == pytest.approx((28 / 33 + 1) / 2)
    assert r["metric"] == "voc07" and set(r) >= {"mAP@.5", "mAP@[.5,.95]", "per_class"}
    assert make_evaluator(year=2012).use_07_metric is False
    assert make_evaluator(year=2012, use_07_metric=True).use_07_metric is True

    ev = make_evaluator(boxes_zero_based=True)  # 0-based boxes get +1 on x1, y1
    ev.process([{"image_id": "A", "boxes": torch.tensor([[0.0, 0.0, 10, 10]]),
                 "scores": torch.tensor([.9]), "labels": torch.tensor([1])}])
    # cat: A found at every threshold (IoU 1 after the shift), B missed -> 11-point 6/11
    assert ev.evaluate()["per_class"]["cat"]["AP@[.5,.95]"] == pytest.approx(6 / 11)

    for pred, msg in [({"image_id": "Z"}, "unknown image id 'Z'"),
                      ({"labels": [7]}, "category id 7"), ({"boxes": [[5.0, 1, 4, 9]]}, "x2 < x1")]:
        ev = make_evaluator()
        with pytest.raises(ValueError, match=msg):
            ev.process([{"image_id": "A", "boxes": [BOX], "scores": [0.5], "labels": [1]} | pred])
            ev.evaluate()


def test_evaluator_empty_results_warn_and_score_zero() -> None:
    ev = make_evaluator()
    with pytest.warns(UserWarning, match="no detections"):
        r = ev.evaluate()
    assert r["mAP@.5"] == 0.0 and r["mAP@[.5,.95]"] == 0.0
