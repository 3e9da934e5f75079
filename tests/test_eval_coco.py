"""COCO evaluator: the numbers equal pycocotools' COCOeval run directly on the same files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detres.evaluation import EVALUATORS, evaluate_coco_results
from detres.evaluation.coco import COCO_STAT_NAMES

CATS = {1: "cat", 5: "dog", 9: "bird", 13: "never"}  # non-contiguous ids; 13 has no GT


def make_gt(path: Path, seed: int = 0) -> list[dict]:
    """A few images with small / medium / large boxes (multiples of .25, exact in float) and
    one crowd box; returns the annotations."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 320, "height": 240, "file_name": f"{i}.jpg"}
              for i in (3, 7, 8, 11)]
    anns = []
    for img in images:
        for size in (12, 20, 48, 64, 150):  # area < 32^2 small, < 96^2 medium, else large
            x, y = (rng.integers(0, 600, 2) / 4).tolist()
            w, h = size + rng.integers(0, 20) / 4, size + rng.integers(0, 20) / 4
            anns.append({"image_id": img["id"], "category_id": int(rng.choice([1, 5, 9])),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    anns.append({"image_id": 7, "category_id": 1, "bbox": [150.0, 100.0, 120.0, 100.0],
                 "area": 12000.0, "iscrowd": 1, "segmentation": [[150, 100, 270, 100, 270, 200]]})
    for i, a in enumerate(anns):
        a["id"] = i + 1
    cats = [{"id": k, "name": v, "supercategory": "x"} for k, v in CATS.items()]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return anns


def make_dets(anns: list[dict], seed: int = 1) -> list[dict]:
    """COCO results (x, y, w, h): jittered copies, duplicates, misses and false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for a in anns:
        for _ in range(int(rng.integers(0, 3))):
            x, y, w, h = (np.asarray(a["bbox"]) + rng.integers(-12, 13, 4) / 4).tolist()
            cat = a["category_id"] if rng.random() < 0.85 else int(rng.choice([1, 5, 9, 13]))
            out.append({"image_id": a["image_id"], "category_id": cat,
                        "bbox": [x, y, max(w, 1.0), max(h, 1.0)], "score": float(rng.random())})
    for img in (3, 7, 8, 11):
        for _ in range(3):
            x, y, w, h = (rng.integers(0, 600, 4) / 4).tolist()
            out.append({"image_id": img, "category_id": int(rng.choice([1, 5, 9, 13])),
                        "bbox": [x, y, w + 1, h + 1], "score": float(rng.random())})
    return out


def pycocotools_stats(gt_path: Path, dets_path: Path, cat_ids: list[int] | None = None
                      ) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def to_predictions(dets: list[dict]) -> list[dict]:
    """COCO results -> per-image xyxy prediction dicts (tensors), as a detector returns."""
    by_image: dict[int, list[dict]] = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    preds = []
    for img, ds in by_image.items():
        b = torch.tensor([d["bbox"] for d in ds], dtype=torch.float64)
        preds.append({"image_id": img, "boxes": torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1),
                      "scores": torch.tensor([d["score"] for d in ds], dtype=torch.float64),
                      "labels": torch.tensor([d["category_id"] for d in ds])})
    return preds


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    gt_path = tmp_path / "instances.json"
    dets = make_dets(make_gt(gt_path))
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(dets))
    return gt_path, dets_path, dets


def test_matches_pycocotools(case: tuple[Path, Path, list[dict]], tmp_path: Path) -> None:
    gt_path, dets_path, dets = case
    ref = pycocotools_stats(gt_path, dets_path)
    ev = EVALUATORS.build("coco", gt=str(gt_path), results_file=tmp_path / "out" / "res.json")
    preds = to_predictions(dets)
    ev.process(preds[:2])
    ev.process(preds[2:])
    r = ev.evaluate()
    for name, v in zip(COCO_STAT_NAMES, ref, strict=True):
        assert r[name] == (None if v == -1 else pytest.approx(v, abs=1e-12)), name
    assert r["mAP@[.5,.95]"] == r["AP"] and r["mAP@.5"] == r["AP50"]
    assert 0.2 < r["AP"] < 0.9  # a non-trivial case
    # The dumped results are the official format and score the same.
    assert pycocotools_stats(gt_path, tmp_path / "out" / "res.json") == pytest.approx(ref)
    assert set(json.loads((tmp_path / "out" / "res.json").read_text())[0]) == {
        "image_id", "category_id", "bbox", "score"}
    # Scoring the results file directly gives the same numbers.
    assert evaluate_coco_results(gt_path, dets_path)["AP"] == r["AP"]


def test_per_class_table(case: tuple[Path, Path, list[dict]]) -> None:
    gt_path, dets_path, _ = case
    r = evaluate_coco_results(gt_path, dets_path)
    assert list(r["per_class"]) == ["cat", "dog", "bird", "never"]
    assert r["per_class"]["never"] == {"AP@.5": None, "AP@.75": None, "AP@[.5,.95]": None}
    for cid, name in CATS.items():
        if name == "never":
            continue
        ref = pycocotools_stats(gt_path, dets_path, [cid])  # COCOeval on that category alone
        assert r["per_class"][name]["AP@[.5,.95]"] == pytest.approx(ref[0], abs=1e-12)
        assert r["per_class"][name]["AP@.5"] == pytest.approx(ref[1], abs=1e-12)
        assert r["per_class"][name]["AP@.75"] == pytest.approx(ref[2], abs=1e-12)
    valid = [v for v in r["per_class"].values() if v["AP@.5"] is not None]
    assert np.mean([v["AP@[.5,.95]"] for v in valid]) == pytest.approx(r["AP"], abs=1e-12)
    assert np.mean([v["AP@.5"] for v in valid]) == pytest.approx(r["AP50"], abs=1e-12)


def test_empty_results_score_zero_with_warning(case: tuple[Path, Path, list[dict]]) -> None:
    gt_path, _, _ = case
    ev = EVALUATORS.build("coco", gt=COCO(str(gt_path)))
    with pytest.warns(UserWarning, match="no detections"):
        r = ev.evaluate()
    assert r["mAP@.5"] == 0.0 and r["mAP@[.5,.95]"] == 0.0 and r["AR100"] == 0.0
    assert r["per_class"]["cat"]["AP@.5"] == 0.0


def test_unknown_ids_are_named(case: tuple[Path, Path, list[dict]], tmp_path: Path) -> None:
    gt_path, _, dets = case
    for change, msg in [({"image_id": 999}, "unknown image_id 999"),
                        ({"category_id": 4}, "unknown category_id 4")]:
        ev = EVALUATORS.build("coco", gt=gt_path)
        ev.process(to_predictions([dets[0] | change]))
        with pytest.raises(ValueError, match=msg):
            ev.evaluate()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dets[:3] + [dets[3] | {"bbox": [1, 2, -3, 4]}]))
    with pytest.raises(ValueError, match=r"bad\.json\[3\].*negative width"):
        evaluate_coco_results(gt_path, bad)
    bad.write_text(json.dumps([{"image_id": 3, "bbox": [1, 2, 3, 4], "score": 1.0}]))
    with pytest.raises(ValueError, match=r"bad\.json\[0\]: expected an object with keys"):
        evaluate_coco_results(gt_path, bad)
