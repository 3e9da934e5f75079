"""VOC XML as labeling tools write it (LabelImg, CVAT, Roboflow): a folder of XML files and a
folder of images, no ImageSets/ and no classes.txt, with the quirks of real exports: file
names that disagree in case or extension, stale absolute <path>s, float coordinates, no
<difficult>, no <size>, reversed and zero-size boxes. A fixture in that layout, small real
images written by OpenCV; the raccoon set of ../shared has this layout (not used here)."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import yaml

from detres.config import DatasetCfg
from detres.data.catalog import build_source
from detres.data.voc import VocFormatError, load_voc


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No clipping warning (it comes with the sets that hold img_3, tested above)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _xml(filename: str, objects: list[tuple[str, list[float]]], *, size: tuple[int, int] | None,
         path: str = "", difficult: bool = True) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        + ("<difficult>0</difficult>" if difficult else "")
        + "<bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in
                               zip(("xmin", "ymin", "xmax", "ymax"), b, strict=True))
        + "</bndbox></object>" for n, b in objects)
    sz = (f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>"
          if size else "")
    return (f'<annotation verified="yes"><folder>images</folder><filename>{filename}'
            f"</filename><path>{path}</path>{sz}<segmented>0</segmented>{objs}</annotation>")


def labelimg_folder(root: Path, n: int = 12) -> Path:
    """``root/images/*.jpg|png`` and ``root/annotations/*.xml``: two classes, a textured
    square or disc per image, plus the quirks above on the first few files."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 96, 128
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        x, y = int(rng.integers(8, 60)), int(rng.integers(8, 40))
        kind = "raccoon" if i % 2 else "badger"
        if kind == "raccoon":
            cv2.rectangle(img, (x, y), (x + 40, y + 40), (200, 180, 90), -1)
        else:
            cv2.circle(img, (x + 20, y + 20), 20, (60, 200, 220), -1)
        name = f"img_{i}.jpg"
        if i == 0:
            name = "IMG_0.JPG"  # the XML says img_0.jpeg: other case, other extension
        if i == 1:
            name = "img_1.png"
        cv2.imwrite(str(root / "images" / name), img)
        box = [x + 0.5, y + 0.25, x + 40.5, y + 40.0]  # floats
        objs: list[tuple[str, list[float]]] = [(kind, box)]
        filename, path, size = f"img_{i}.jpg", "", (h, w)
        if i == 0:
            filename = "img_0.jpeg"
        if i == 1:
            filename, path = "wrong.jpg", "C:\\Users\\someone\\Desktop\\export\\img_1.png"
        if i == 2:
            size = None  # no <size>: read from the image
        if i == 3:
            objs += [(kind, [50, 10, 20, 30]), (kind, [5, 5, 5, 20])]  # reversed, 1 px wide
        (root / "annotations" / f"img_{i}.xml").write_text(
            _xml(filename, objs, size=size, path=path, difficult=i != 4))
    return root


def test_labelimg_folder_loads_as_it_is(tmp_path: Path) -> None:
    root = labelimg_folder(tmp_path / "pets")
    with pytest.warns(UserWarning, match=r"dropped 1 left empty or reversed.*img_3\.xml"):
        src = load_voc(root, "")
    assert src.class_names == ["badger", "raccoon"] and src.classes_inferred
    by_id = {r["image_id"]: r for r in src.records}
    assert len(by_id) == 12
    assert Path(by_id["img_0"]["file"]).name == "IMG_0.JPG"
    assert Path(by_id["img_1"]["file"]).name == "img_1.png"  # via the stale <path>
    assert (by_id["img_2"]["height"], by_id["img_2"]["width"]) == (96, 128)  # from the file
    # the reversed box dropped; xmin == xmax is one pixel wide in VOC's inclusive pixels
    assert by_id["img_3"]["boxes"][1].tolist() == [4, 4, 5, 20]
    assert by_id["img_4"]["difficult"].tolist() == [False]  # no <difficult>: 0
    x1, y1, x2, y2 = by_id["img_5"]["boxes"][0].tolist()  # floats kept: xmin - 1 = x - 0.5
    assert x1 % 1 == 0.5 and y1 % 1 == 0.25 and x2 % 1 == 0.5 and x2 - x1 == 41
    assert by_id["img_1"]["classes"].tolist() == [2]  # raccoon, in sorted order


def test_split_by_fraction_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    root = labelimg_folder(tmp_path / "pets")
    with quiet():
        parts = {s: build_source(DatasetCfg(format="voc", path=str(root), split=s,
                                            val_fraction=0.25, split_seed=3), tmp_path)
                 for s in ("train", "val")}
    train = {r["image_id"] for r in parts["train"].records}
    val = {r["image_id"] for r in parts["val"].records}
    assert len(val) == 3 and len(train) == 9 and not train & val
    with quiet():
        again = load_voc(root, "val", val_fraction=0.25, split_seed=3)
        other = load_voc(root, "val", val_fraction=0.25, split_seed=4)
    assert {r["image_id"] for r in again.records} == val
    assert {r["image_id"] for r in other.records} != val
    with pytest.raises(VocFormatError, match="val_fraction"):
        load_voc(root, "train")


def test_loose_folder_errors_name_the_fix(tmp_path: Path) -> None:
    root = labelimg_folder(tmp_path / "pets", n=4)
    with pytest.raises(VocFormatError, match=r"unknown class 'raccoon'.*classes\.txt"):
        load_voc(root, "", class_names=["badger"])
    (root / "images" / "img_2.jpg").unlink()
    with pytest.raises(VocFormatError, match=r"img_2\.xml: no image img_2\.jpg.*'images'"):
        load_voc(root, "")
    with pytest.raises(VocFormatError, match="reversed|xmax < xmin"):
        load_voc(labelimg_folder(tmp_path / "b", n=4), "", strict_boxes=True)


def test_train_on_a_labelimg_folder_records_classes_and_split(
        tmp_path: Path, tool: Callable[[str], ModuleType], tiny_det: list[str]) -> None:
    """train_det.py on the folder as exported: classes from the annotations and the split
    land in OUT/config.yaml, and eval.py on that config scores the same held-out images."""
    root = labelimg_folder(tmp_path / "pets")
    out = tmp_path / "out"
    sets = [f"data.train=[{{format: voc, path: {root}, split: train, val_fraction: 0.25}}]",
            f"data.test=[{{format: voc, path: {root}, split: val, val_fraction: 0.25}}]"]
    with quiet():
        assert tool("train_det").main(["--cfg", "demo.yaml", "--out-dir", str(out), *tiny_det,
                                       *sets, "solver.max_iter=2"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["num_classes"] == 2
    for key in ("train", "test"):
        (entry,) = cfg["data"][key]
        assert entry["classes"] == ["badger", "raccoon"] and entry["val_fraction"] == 0.25
    m = tmp_path / "eval" / "metrics.json"
    m.parent.mkdir()
    with quiet():
        assert tool("eval").main(["--cfg", str(out / "config.yaml"), "--weights",
                                  str(out / "model_final.pth"), "--out", str(m)]) == 0
    assert set(json.loads(m.read_text())["per_class"]) == {"badger", "raccoon"}
