"""The evaluation report (detres.evaluation.analysis): its curves give the printed AP, for
COCO (both backends) and VOC scoring; F1 and its best threshold; the confusion matrix on a
hand-made case; the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detres.evaluation import EVALUATORS, write_report
from detres.evaluation.analysis import ClassCurve, confusion_matrix, f1_summary


def coco_case(path: Path, seed: int = 0) -> list[dict]:
    """A COCO ground truth of 3 classes on 12 images (one crowd box) and detections near
    it (some shifted, some of another class, some of nothing), as prediction dicts."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for i in range(1, 13):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 200, "width": 300})
        boxes, scores, labels = [], [], []
        for _ in range(rng.integers(1, 5)):
            x, y, w, h = rng.uniform(0, 150), rng.uniform(0, 100), *rng.uniform(20, 80, 2)
            c = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c,
                         "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(len(anns) == 3)})
            if rng.random() < 0.8:  # found, a little off, sometimes as another class
                dx, dy = rng.normal(0, 4, 2)
                boxes.append([x + dx, y + dy, x + dx + w, y + dy + h])
                labels.append(c if rng.random() < 0.8 else c % 3 + 1)
                scores.append(rng.uniform(0.3, 1.0))
        for _ in range(rng.integers(0, 3)):  # detections of nothing
            x, y = rng.uniform(0, 200, 2)
            boxes.append([x, y, x + 30, y + 30])
            labels.append(int(rng.integers(1, 4)))
            scores.append(rng.uniform(0.05, 0.6))
        preds.append({"image_id": i, "boxes": torch.tensor(boxes).reshape(-1, 4),
                      "scores": torch.tensor(scores, dtype=torch.float64),
                      "labels": torch.tensor(labels, dtype=torch.int64)})
    cats = [{"id": c, "name": n} for c, n in ((1, "cat"), (2, "dog"), (3, "fox"))]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return preds


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_coco_curves_give_the_printed_ap(tmp_path: Path, backend: str) -> None:
    gt_path = tmp_path / "instances.json"
    preds = coco_case(gt_path)
    ev = EVALUATORS.build("coco", gt=str(gt_path), backend=backend)
    ev.process(preds)
    metrics = ev.evaluate()
    assert 0.3 < metrics["mAP@.5"] < 0.95  # a case with misses, confusions and false alarms
    report = ev.report()
    for iou, key in (("0.5", "AP@.5"), ("0.75", "AP@.75")):
        for name, curve in report["pr_curves"][iou].items():
            printed = metrics["per_class"][name][key]
            if curve is None:
                assert printed is None
                continue
            assert curve["ap"] == printed, (name, iou)  # the same arrays, the same mean
            assert np.mean(curve["precision"]) == pytest.approx(printed, abs=1e-12)
    assert 0 <= report["f1"]["best_score_thresh"] <= 1
    cm = np.asarray(report["confusion_matrix"]["counts"])
    k = len(report["class_names"])
    assert cm.shape == (k + 1, k + 1)
    data = json.loads(gt_path.read_text())
    objects = sum(1 for a in data["annotations"] if not a.get("iscrowd", 0))
    assert cm[:, :k].sum() == objects  # every true object is in one column: found or missed


def _voc_evaluator():  # noqa: ANN202
    box = [10, 10, 50, 50]
    gt = {"A": {"boxes": [box, [60, 60, 90, 90]], "labels": ["cat", "dog"]},
          "B": {"boxes": [[5, 5, 30, 30]], "labels": ["dog"]}}
    ev = EVALUATORS.build("voc", gt=gt, class_names=["cat", "dog"], year=2012)
    ev.process([
        {"image_id": "A", "boxes": torch.tensor([box, [60, 60, 90, 90], [100, 5, 140, 40]]),
         "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 2])},
        {"image_id": "B", "boxes": torch.tensor([[5, 5, 30, 30]]),
         "scores": torch.tensor([0.6]), "labels": torch.tensor([2])},
    ])
    return ev


def test_voc_curves_give_the_printed_ap_and_the_confusion_is_as_drawn(tmp_path: Path) -> None:
    ev = _voc_evaluator()
    metrics = ev.evaluate()
    report = ev.report()
    for name in ("cat", "dog"):
        assert report["pr_curves"]["0.5"][name]["ap"] == pytest.approx(
            metrics["per_class"][name]["AP@.5"], abs=1e-12)
    cm = report["confusion_matrix"]
    assert cm["labels"] == ["cat", "dog", "background"]
    t = cm["score_thresh"]
    assert t <= 0.6  # the best threshold keeps B's dog
    # A: cat found; the dog taken for a cat; a dog where there is nothing. B: dog found.
    assert np.asarray(cm["counts"]).tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    written = write_report(report, tmp_path / "report")
    names = sorted(p.name for p in written)
    assert names == ["confusion_matrix.png", "confusion_matrix_normalized.png", "f1.png",
                     "pr_iou50.png", "pr_iou75.png", "report.json"]
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    back = json.loads((tmp_path / "report" / "report.json").read_text())
    assert back["confusion_matrix"]["counts"] == cm["counts"]


def test_f1_best_threshold_and_missed_objects() -> None:
    # one class: detections at scores .9 (tp) .8 (tp) .3 (fp) .2 (tp), 4 objects
    scores = np.array([0.9, 0.8, 0.3, 0.2])
    tp = np.array([1, 1, 0, 1])
    rec, prec = np.cumsum(tp) / 4, np.cumsum(tp) / np.arange(1, 5)
    curve = ClassCurve(scores=scores, precision=prec, recall=rec, ap=0.0)
    f1 = f1_summary([curve, None], ["a", "b"])
    # F1 at each cut: .4, .667, .571, .75 -> best at score .2
    assert f1["per_class"]["a"]["score_thresh"] == 0.2
    assert f1["per_class"]["a"]["f1"] == pytest.approx(0.75)
    assert f1["per_class"]["b"] is None
    assert f1["best_score_thresh"] <= 0.2 and f1["best_mean_f1"] == pytest.approx(0.75)
    # a missed object is background-row; a detection of nothing background-column
    cm = confusion_matrix({0: (np.array([0, 1]), np.array([[0, 0, 10, 10], [20, 20, 30, 30.]]))},
                          {0: (np.array([0, 0]), np.array([0.9, 0.1]),
                               np.array([[0, 0, 10, 10], [50, 50, 60, 60.]]))},
                          2, score_thresh=0.05)
    assert cm.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_coco_error_breakdown_steps(tmp_path: Path) -> None:
    """The COCO API's analyze(): C75 <= C50 <= Loc <= Sim <= Oth <= BG <= FN = 1, C75 and
    C50 equal the printed AP75 / AP50, and forgiving class confusions gains where the case
    has confusions (a supercategory holds two of the three classes)."""
    gt_path = tmp_path / "instances.json"
    preds = coco_case(gt_path, seed=1)
    data = json.loads(gt_path.read_text())
    for c in data["categories"]:
        c["supercategory"] = "pet" if c["name"] in ("cat", "dog") else "wild"
    gt_path.write_text(json.dumps(data))
    ev = EVALUATORS.build("coco", gt=str(gt_path), backend="pycocotools")
    ev.process(preds)
    metrics = ev.evaluate()
    report = ev.report()
    eb = report["error_breakdown"]
    steps = eb["by_area"]["all"]
    values = [steps[t] for t in eb["types"]]
    assert values == sorted(values) and values[-1] == 1.0
    assert steps["C75"] == pytest.approx(metrics["AP75"], abs=1e-12)
    assert steps["C50"] == pytest.approx(metrics["AP50"], abs=1e-12)
    assert steps["Oth"] > steps["Loc"]  # the case confuses classes: forgiving them pays
    assert set(eb["by_area"]) == {"all", "small", "medium", "large"}
    assert set(eb["per_class"]) == {"cat", "dog", "fox"}
    written = write_report(report, tmp_path / "r")
    assert (tmp_path / "r" / "error_breakdown.png") in written
