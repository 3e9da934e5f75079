"""tools/inspect_data.py on a LabelImg-style folder (no ImageSets/, no classes.txt): the
summary's counts and box sides at the train and test scales, the anchor warning, the PNGs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest


def labelimg_set(root: Path) -> Path:
    """Six 100x200 photos: a 20x20 'cell' in each, a 40x10 'dot' in every other one,
    the sixth image unlabeled (an empty <annotation>)."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(root / "images" / f"p{i}.jpg"),
                    rng.integers(0, 255, (100, 200, 3), dtype=np.uint8))
        objs = [] if i == 5 else [("cell", (11, 11, 30, 30))]  # VOC pixels: 20 wide
        if i % 2 == 0 and i != 5:
            objs.append(("dot", (101, 51, 140, 60)))  # 40 x 10
        body = "".join(
            f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objs)
        (root / "annotations" / f"p{i}.xml").write_text(
            f"<annotation><filename>p{i}.jpg</filename><size><width>200</width>"
            f"<height>100</height><depth>3</depth></size>{body}</annotation>")
    return root


def run(tool: Callable[[str], ModuleType], root: Path, out: Path, capsys: pytest.CaptureFixture,
        *extra: str) -> tuple[dict, str]:
    args = ["--cfg", "demo.yaml", "--sets", "train", "--out", str(out),
            f"data.train=[{{format: voc, path: {root}}}]",
            "model.input.min_size_train=[200]", "model.input.max_size_train=1000",
            "model.input.min_size_test=100", "model.input.max_size_test=1000", *extra]
    assert tool("inspect_data").main(args) == 0
    (summary,) = json.loads((out / "summary.json").read_text())
    return summary, capsys.readouterr().out


def test_summary_sizes_and_pictures(tmp_path: Path, tool: Callable[[str], ModuleType],
                                    capsys: pytest.CaptureFixture) -> None:
    root = labelimg_set(tmp_path / "cells")
    s, printed = run(tool, root, tmp_path / "look", capsys, "model.anchors.sizes=[[16]]")
    assert s["images"] == 6 and s["objects"] == 8 and s["images_without_objects"] == 1
    assert s["objects_per_class"] == {"cell": 5, "dot": 3}
    assert s["objects_per_image"] == {"mean": 1.33, "max": 2}
    # shorter side 100 -> 200 doubles every side: cells 40 px, dots sqrt(80 * 20) = 40 px;
    # at the test scale (100) they stay 20 px
    assert s["box_side_px"]["train"]["p5"] == s["box_side_px"]["train"]["p95"] == 40.0
    assert s["box_side_px"]["test"]["p50"] == 20.0
    assert s["below_smallest_anchor"] == {"train": 0.0, "test": 0.0} and not s["warnings"]
    assert "warning" not in printed
    for key in ("grid", "sizes"):
        img = cv2.imread(s[key])
        assert img is not None and img.std() > 0, s[key]  # a real picture, not blank
    assert cv2.imread(s["grid"]).shape == (2 * 320, 3 * 320, 3)  # 6 images: 3 by 2 cells


def test_objects_below_the_smallest_anchor_are_warned(
        tmp_path: Path, tool: Callable[[str], ModuleType], capsys: pytest.CaptureFixture) -> None:
    root = labelimg_set(tmp_path / "cells")
    s, printed = run(tool, root, tmp_path / "look", capsys, "model.anchors.sizes=[[32], [64]]")
    # 40 px at the train scale is above 32; 20 px at the test scale is below it
    assert s["below_smallest_anchor"] == {"train": 0.0, "test": 1.0}
    (w,) = s["warnings"]
    assert "100% of the objects are smaller than the smallest anchor (32 px) at the test" in w
    assert "model.input.min_size_test" in w and "warning: " + w in printed
