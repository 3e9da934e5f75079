"""faster-coco-eval (the default COCO scorer) against pycocotools (the reference) on cases
built to be hard: every summary number, the precision and recall arrays and every
per-category AP must be equal (to 1e-12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from detres.evaluation import EVALUATORS, evaluate_coco_results
from detres.evaluation.coco import (
    COCO_STAT_NAMES,
    faster_coco_eval,
    resolve_backend,
    run_cocoeval,
)

pytestmark = pytest.mark.skipif(faster_coco_eval is None, reason="faster-coco-eval not installed")

CATS = [3, 17, 42, 90, 91]  # non-contiguous ids; 91 never detected


def hard_case(seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, 41):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 480))
        images.append({"id": i * 7, "width": w, "height": h, "file_name": f"{i}.jpg"})
        n_gt = 0 if i % 9 == 0 else int(rng.integers(1, 12))  # some images have no GT
        gts = []
        for _ in range(n_gt):
            kind = rng.random()
            if kind < 0.15:  # tiny
                bw, bh = rng.uniform(0.5, 6, 2)
            elif kind < 0.25:  # huge: about the whole image
                bw, bh = w * rng.uniform(0.8, 1.0), h * rng.uniform(0.8, 1.0)
            else:
                bw, bh = rng.uniform(8, 0.5 * w), rng.uniform(8, 0.5 * h)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            c = int(rng.choice(CATS))
            crowd = int(rng.random() < 0.08)
            anns.append({"id": len(anns) + 1, "image_id": i * 7, "category_id": c,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": crowd})
            gts.append((x, y, bw, bh, c))
        if i % 7 == 0:
            continue  # no detections for this image
        n_det = int(rng.integers(1, 160)) if i % 5 else 150  # more than 100 per image too
        for k in range(n_det):
            if gts and rng.random() < 0.6:
                x, y, bw, bh, c = gts[int(rng.integers(len(gts)))]
                jit = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
                box = [x + jit[0], y + jit[1], max(bw + jit[2], 0.3), max(bh + jit[3], 0.3)]
                if c == CATS[-1] or rng.random() < 0.15:  # wrong class; 91 never detected
                    c = int(rng.choice(CATS[:-1]))
            else:
                bw, bh = rng.uniform(2, w / 2), rng.uniform(2, h / 2)
                box = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]
                c = int(rng.choice(CATS[:-1]))
            # tied scores: a coarse grid of values
            score = float(np.round(rng.uniform(0.01, 1.0), 1 if k % 3 == 0 else 6))
            dets.append({"image_id": i * 7, "category_id": c, "bbox": [float(v) for v in box],
                         "score": score})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in CATS]}
    return gt, dets


def _coco(gt: dict[str, Any]) -> COCO:
    c = COCO()
    c.dataset = json.loads(json.dumps(gt))
    c.createIndex()
    return c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_equals_pycocotools(seed: int) -> None:
    gt, dets = hard_case(seed)
    assert any(a["iscrowd"] for a in gt["annotations"])
    ref = run_cocoeval(_coco(gt), dets, backend="pycocotools")
    fast = run_cocoeval(_coco(gt), dets, backend="faster_coco_eval")
    assert type(fast).__module__.startswith("faster_coco_eval")
    np.testing.assert_allclose(np.asarray(fast.stats)[:12], ref.stats, rtol=0, atol=1e-12)
    for key in ("precision", "recall"):
        np.testing.assert_allclose(fast.eval[key], ref.eval[key], rtol=0, atol=1e-12)
    a = evaluate_coco_results(_coco(gt), dets, backend="pycocotools")
    b = evaluate_coco_results(_coco(gt), dets, backend="faster_coco_eval")
    for name in COCO_STAT_NAMES:
        assert (a[name] is None) == (b[name] is None), name
        if a[name] is not None:
            assert abs(a[name] - b[name]) <= 1e-12, name
    assert a["per_class"].keys() == b["per_class"].keys()
    for cls, row in a["per_class"].items():
        for k, v in row.items():
            w = b["per_class"][cls][k]
            assert (v is None and w is None) or abs(v - w) <= 1e-12, (cls, k)
    assert a["per_class"]["c91"]["AP@.5"] == 0.0  # the class nobody detected


def test_empty_results_and_the_evaluator_switch(tmp_path: Path) -> None:
    gt, dets = hard_case(3)
    with pytest.warns(UserWarning, match="no detections"):
        a = evaluate_coco_results(_coco(gt), [], backend="pycocotools")
    with pytest.warns(UserWarning, match="no detections"):
        b = evaluate_coco_results(_coco(gt), [], backend="faster_coco_eval")
    assert a["AP"] == b["AP"] == 0.0
    assert resolve_backend("auto") == "faster_coco_eval"
    assert resolve_backend("faster_coco_eval", (1, 10, 300)) == "pycocotools"  # the reference
    with pytest.raises(ValueError, match="coco_backend"):
        resolve_backend("fast")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    for backend in ("pycocotools", "faster_coco_eval"):
        ev = EVALUATORS.build("coco", gt=str(path), backend=backend)
        assert ev.backend == backend
    # bad results keep their clear errors, whatever the backend
    with pytest.raises(ValueError, match=r"results\[0\]: unknown image_id 99999"):
        evaluate_coco_results(_coco(gt), [{**dets[0], "image_id": 99999}],
                              backend="faster_coco_eval")
