"""Exports of labeling tools as users bring them: YOLO txt (Ultralytics' and Roboflow's
layouts) and COCO JSON as CVAT / Label Studio / Roboflow write it (no ``area`` or
``iscrowd``, float boxes, category ids from 0, images without annotations, file names with
sub-folders). Small fixtures written here, real image files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch

from detres.config import DatasetCfg
from detres.data.catalog import build_source
from detres.data.coco import load_coco_json
from detres.data.yolo import YoloFormatError, load_yolo
from detres.evaluation import EVALUATORS


def _image(path: Path, h: int = 80, w: int = 100, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 50, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(img, (20, 10), (60, 50), (220, 200, 40), -1)
    cv2.imwrite(str(path), img)


def roboflow_yolo(root: Path) -> Path:
    """Roboflow's YOLOv8 export: train/ valid/ with images/ and labels/, data.yaml naming
    '../train/images'."""
    (root).mkdir(parents=True)
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\n"
                                    "names: ['cat', 'dog']\n")
    for split, n in (("train", 6), ("valid", 3)):
        for i in range(n):
            _image(root / split / "images" / f"{split}_{i}.jpg", seed=i)
            if i == n - 1:
                continue  # an image without a label file: no objects
            lines = [f"{i % 2} 0.4 0.375 0.4 0.5"]  # the rectangle: (20, 10)-(60, 50) in 100x80
            if i == 0:
                lines.append("1 0.1 0.1 0.2 0.1 0.2 0.3 0.1 0.3")  # a polygon (segment export)
            if i == 1:
                lines.append("0 0.95 0.5 0.3 0.2")  # past the right border: clipped
            lf = root / split / "labels" / f"{split}_{i}.txt"
            lf.parent.mkdir(parents=True, exist_ok=True)
            lf.write_text("\n".join(lines) + "\n")
    return root


def test_roboflow_yolo_export_loads(tmp_path: Path) -> None:
    root = roboflow_yolo(tmp_path / "pets")
    with pytest.warns(UserWarning, match=r"clipped 1 box\(es\).*train_1\.txt"):
        train = build_source(DatasetCfg(format="yolo", path=str(root), split="train"), tmp_path)
    assert train.class_names == ["cat", "dog"] and train.category_ids == [0, 1]
    assert len(train.records) == 6
    r0, r1, r5 = train.records[0], train.records[1], train.records[5]
    assert (r0["height"], r0["width"]) == (80, 100)
    torch.testing.assert_close(r0["boxes"], torch.tensor([[20.0, 10, 60, 50], [10, 8, 20, 24]]))
    assert r0["classes"].tolist() == [1, 2]  # contiguous 1..K inside; ids 0, 1 outside
    torch.testing.assert_close(r1["boxes"][1], torch.tensor([80.0, 32, 100, 48]))
    assert len(r5["boxes"]) == 0  # no label file
    with pytest.warns(UserWarning, match="valid_1.txt"):
        val = load_yolo(root / "data.yaml", "val")  # 'valid' folder, the yaml file given
    assert len(val.records) == 3 and Path(val.records[0]["file"]).parent.name == "images"
    # scoring is COCO's on an in-memory ground truth: the ground truth itself scores 1
    ev = EVALUATORS.build("coco", gt=val.coco)
    ev.process([{"image_id": r["image_id"], "boxes": r["boxes"], "scores": torch.ones(len(
        r["boxes"])), "labels": val.to_category_ids(r["classes"])} for r in val.records])
    m = ev.evaluate()
    assert m["mAP@.5"] == pytest.approx(1.0) and m["mAP@[.5,.95]"] == pytest.approx(1.0)


def test_ultralytics_layout_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "u"
    (root / "images" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\n"
                                    "names:\n  0: person\n  1: bike\n")
    _image(root / "images" / "train" / "a.png")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    src = load_yolo(root, "train")
    assert src.class_names == ["person", "bike"] and src.records[0]["classes"].tolist() == [2]
    for text, msg in (("2 0.5 0.5 0.1 0.1", r"a\.txt:1: class 2 is not in 0\.\.1"),
                      ("1 0.5 0.5 0.1", r"a\.txt:1: expected 'class cx cy w h'"),
                      ("x 0.5 0.5 0.1 0.1", r"a\.txt:1: expected 'class cx cy w h' \(numbers")):
        (root / "labels" / "train" / "a.txt").write_text(text + "\n")
        with pytest.raises(YoloFormatError, match=msg):
            load_yolo(root, "train")
    with pytest.raises(FileNotFoundError, match="no images for split 'val'"):
        load_yolo(root, "val")
    (root / "data.yaml").write_text("nc: 3\nnames: [a, b]\n")
    with pytest.raises(YoloFormatError, match="nc is 3"):
        load_yolo(root, "train")


def cvat_coco(root: Path) -> Path:
    """COCO JSON as CVAT / Label Studio write it: no area / iscrowd, float boxes, category
    ids from 0, an image without annotations, file names with a sub-folder."""
    imgs = []
    for i in range(3):
        _image(root / "images" / "batch1" / f"{i}.jpg", seed=i)
        imgs.append({"id": i + 1, "file_name": f"batch1/{i}.jpg", "height": 80, "width": 100})
    anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [20.0, 10.5, 40.25, 39.5]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5.5, 5.0, 30.0, 20.0]}]
    f = root / "annotations.json"
    f.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": [
        {"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}))
    return f


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_cvat_coco_export_loads_and_scores(tmp_path: Path, backend: str) -> None:
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    f = cvat_coco(tmp_path)
    src = load_coco_json(f, tmp_path / "images")
    assert src.category_ids == [0, 1] and [len(r["boxes"]) for r in src.records] == [1, 1, 0]
    assert Path(src.records[0]["file"]).is_file()
    ev = EVALUATORS.build("coco", gt=src.coco, backend=backend)
    ev.process([{"image_id": r["image_id"], "boxes": r["boxes"], "scores": torch.ones(len(
        r["boxes"])), "labels": src.to_category_ids(r["classes"])} for r in src.records])
    m = ev.evaluate()
    assert m["mAP@.5"] == pytest.approx(1.0) and m["mAP@[.5,.95]"] == pytest.approx(1.0)


def test_train_and_eval_on_a_yolo_export(tmp_path: Path, tool: Callable[[str], ModuleType],
                                         tiny_det: list[str]) -> None:
    root = roboflow_yolo(tmp_path / "pets")
    out = tmp_path / "out"
    sets = [f"data.train=[{{format: yolo, path: {root}, split: train}}]",
            f"data.test=[{{format: yolo, path: {root}, split: val}}]"]
    assert tool("train_det").main(["--cfg", "demo.yaml", "--out-dir", str(out), *tiny_det,
                                   *sets, "solver.max_iter=2"]) == 0
    assert "clipped 1 box(es)" in (out / "log.txt").read_text()  # the warning, logged
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"cat", "dog"}
    results = json.loads(next(out.glob("coco_results_*.json")).read_text())
    assert {r["category_id"] for r in results} <= {0, 1}
