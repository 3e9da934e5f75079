"""tools/eval.py modes 2 (COCO results file) and 3 (VOC devkit files / JSON), and its errors."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detres.evaluation import (
    VOC_CLASSES,
    VOCEvaluator,
    evaluate_coco_results,
    load_voc_annotations,
)

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("detres_tools_eval", REPO / "tools" / "eval.py")
assert _spec is not None and _spec.loader is not None
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

# image -> (name, xmin, ymin, xmax, ymax, difficult)
OBJECTS = {
    "000001": [("dog", 10, 20, 110, 140, 0), ("person", 150, 30, 200, 180, 0)],
    "000002": [("dog", 5, 5, 60, 50, 0), ("dog", 70, 10, 160, 90, 1)],
    "000004": [("person", 40.5, 40, 90, 120, 0), ("cat", 100, 100, 180, 170, 0)],
}
# class -> lines "image_id score x1 y1 x2 y2"
DETS = {
    "dog": ["000001 0.9 12 22 108 138", "000002 0.8 70 10 160 90", "000002 0.7 6 4 61 52",
            "000001 0.75 12 22 108 140", "000004 0.3 0 0 30 30"],
    "person": ["000001 0.95 150 30 200 170", "000004 0.5 45 40 95 130"],
    "cat": ["000004 0.4 150 100 180 170"],
}


def write_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(OBJECTS) + "\n")
    for image, objs in OBJECTS.items():
        xml = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin>"
            f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
            for n, a, b, c, e, d in objs)
        (voc / "Annotations" / f"{image}.xml").write_text(
            f"<annotation><filename>{image}.jpg</filename>{xml}</annotation>")
    return voc


def write_dets(d: Path, dets: dict[str, list[str]]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for cls, lines in dets.items():
        (d / f"comp4_det_test_{cls}.txt").write_text("\n".join(lines) + "\n")
    return d


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = tool.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def expected(voc: Path, use07: bool) -> dict:
    """The same detections through the evaluator's process() path."""
    ids, recs = load_voc_annotations(voc, "test")
    ev = VOCEvaluator(gt=dict(zip(ids, recs, strict=True)), use_07_metric=use07)
    names = list(ev.class_names)
    by_image: dict[str, list] = {}
    for cls, lines in DETS.items():
        for ln in lines:
            image, s, *box = ln.split()
            by_image.setdefault(image, []).append((names.index(cls) + 1, float(s), box))
    ev.process([{"image_id": i, "labels": [x[0] for x in v], "scores": [x[1] for x in v],
                 "boxes": np.array([x[2] for x in v], float)} for i, v in by_image.items()])
    return ev.evaluate()


def test_voc_mode_devkit_files_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    voc = write_voc(tmp_path)
    res = write_dets(tmp_path / "results", DETS)
    rc, out, _ = run(capsys, "--voc-root", voc, "--split", "test", "--results", res,
                     "--out", tmp_path / "m.json", "--published", "mAP@.5=76.4")
    assert rc == 0 and "VOC07 11-point" in out and "76.4" in out and "dog" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert list(m)[:3] == ["mAP@.5", "mAP@[.5,.95]", "per_class"]
    assert set(m["per_class"]["dog"]) >= {"AP@.5", "AP@[.5,.95]"}
    assert m["per_class"]["aeroplane"]["AP@.5"] is None  # no ground truth: left out
    ref = expected(voc, use07=True)
    assert m["mAP@.5"] == pytest.approx(ref["mAP@.5"]) and 0 < m["mAP@.5"] < 1
    assert m["mAP@[.5,.95]"] == pytest.approx(ref["mAP@[.5,.95]"])
    assert m["per_class"]["dog"] == pytest.approx(ref["per_class"]["dog"])

    # The same detections as a JSON list (class names, 1-based category ids, xywh bbox).
    entries = []
    for k, (cls, lines) in enumerate(DETS.items()):
        for ln in lines:
            image, s, x1, y1, x2, y2 = ln.split()
            b = [float(v) for v in (x1, y1, x2, y2)]
            e = {"image_id": image, "score": float(s)}
            e |= {"category": cls} if k % 2 else {"category_id": VOC_CLASSES.index(cls) + 1}
            e |= {"box": b} if k % 2 else {"bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            entries.append(e)
    (tmp_path / "dets.json").write_text(json.dumps(entries))
    rc, _, _ = run(capsys, "--voc-root", voc, "--results", tmp_path / "dets.json",
                   "--out", tmp_path / "j.json")
    assert rc == 0 and json.loads((tmp_path / "j.json").read_text()) == m

    rc, out, _ = run(capsys, "--voc-root", voc, "--results", res, "--metric", "area",
                     "--out", tmp_path / "a.json")
    area = json.loads((tmp_path / "a.json").read_text())
    assert "area under" in out and area["mAP@.5"] == pytest.approx(
        expected(voc, use07=False)["mAP@.5"])


@pytest.mark.parametrize("cls,line,msg", [
    ("dog", "000001 0.5 1 2 3", r"comp4_det_test_dog.txt:6: expected 'image_id score x1 y1 x2 y2'"),
    ("dog", "000001 0.5 1 2 x 9", r"comp4_det_test_dog.txt:6: non-numeric"),
    ("cat", "000003 0.5 1 2 3 4", r"comp4_det_test_cat.txt:2: unknown image id '000003'"),
    ("cat", "000001 0.5 10 2 3 4", r"comp4_det_test_cat.txt:2: box .* x2 < x1"),
    ("zebra", "000001 0.5 1 2 3 4", r"comp4_det_test_zebra.txt: unknown class 'zebra'"),
])
def test_voc_mode_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str], cls: str,
                            line: str, msg: str) -> None:
    voc = write_voc(tmp_path)
    res = write_dets(tmp_path / "results", {**DETS, cls: DETS.get(cls, []) + [line]})
    rc, _, err = run(capsys, "--voc-root", voc, "--results", res)
    assert rc == 2
    assert err.startswith("eval.py: error: ") and err.count("\n") == 1
    assert re.search(msg, err), err


def test_voc_mode_bad_json_and_xml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = write_voc(tmp_path)
    j = tmp_path / "dets.json"
    for entry, msg in [({"image_id": "000001", "category": "dogg", "score": 1, "box": [1, 2, 3, 4]},
                        r"dets.json\[1\]: unknown class 'dogg'"),
                       ({"image_id": 1, "category_id": 3, "score": 1, "box": [1, 2, 3, 4]},
                        r"dets.json\[1\]: unknown image id '1'"),
                       ({"image_id": "000001", "category_id": 21, "score": 1, "box": [1, 2, 3, 4]},
                        r"dets.json\[1\]: unknown category_id 21"),
                       ({"image_id": "000001", "category_id": 3, "box": [1, 2, 3, 4]},
                        r"dets.json\[1\]: missing key 'score'")]:
        ok = {"image_id": "000002", "category": "dog", "score": 0.5, "box": [5, 5, 60, 50]}
        j.write_text(json.dumps([ok, entry]))
        rc, _, err = run(capsys, "--voc-root", voc, "--results", j)
        assert rc == 2 and re.search(msg, err), err
    (voc / "Annotations" / "000002.xml").write_text("<annotation><object>")
    rc, _, err = run(capsys, "--voc-root", voc, "--results", j)
    assert rc == 2 and "000002.xml" in err and "malformed XML" in err


def test_voc_mode_empty_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = write_voc(tmp_path)
    res = write_dets(tmp_path / "results", {"dog": []})
    with pytest.warns(UserWarning, match="no detections"):
        rc, _, _ = run(capsys, "--voc-root", voc, "--results", res, "--out", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert rc == 0 and m["mAP@.5"] == 0.0 and m["mAP@[.5,.95]"] == 0.0


def test_coco_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 80}],
          "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 30],
                           "area": 1200.0, "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 7, "bbox": [5, 5, 20, 20],
                           "area": 400.0, "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 3, "bbox": [11, 10, 40, 30], "score": 0.9},
            {"image_id": 2, "category_id": 7, "bbox": [50, 50, 20, 20], "score": 0.8}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    rc, out, _ = run(capsys, "--coco-gt", tmp_path / "gt.json", "--results",
                     tmp_path / "dets.json", "--out", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    ref = evaluate_coco_results(tmp_path / "gt.json", tmp_path / "dets.json")
    assert rc == 0 and "AP50" in out and m["mAP@.5"] == pytest.approx(0.5)
    assert m["mAP@[.5,.95]"] == pytest.approx(ref["AP"]) and m["APs"] == pytest.approx(ref["APs"])
    (tmp_path / "dets.json").write_text(json.dumps(dets + [dets[0] | {"image_id": 5}]))
    rc, _, err = run(capsys, "--coco-gt", tmp_path / "gt.json", "--results", tmp_path / "dets.json")
    assert rc == 2 and "dets.json[2]: unknown image_id 5" in err


def test_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, msg in [([], "choose one mode"), (["--coco-gt", "x.json"], "need --results"),
                      (["--cfg", "c"], "both --cfg and --weights"),
                      (["--voc-root", "v", "--results", "r", "a=1"], "only apply with --cfg"),
                      (["--voc-root", "v", "--results", "r", "--published", "x"], "KEY=PERCENT")]:
        with pytest.raises(SystemExit) as e:
            tool.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_detector_mode_wiring(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Mode 1 hands the config (weights and overrides applied) to the detector's scorer and
    prints the config's published figures beside ours."""
    import detres.engine.det as det

    seen: dict = {}

    def fake_evaluate_config(cfg: object, device: object, *, out_dir: Path | None = None) -> dict:
        seen.update(cfg=cfg, device=device, out_dir=out_dir)
        return {"mAP@.5": 0.5, "mAP@[.5,.95]": 0.25,
                "per_class": {"dog": {"AP@.5": 0.5, "AP@[.5,.95]": 0.25}}}

    monkeypatch.setattr(det, "evaluate_config", fake_evaluate_config)
    cfg = tmp_path / "det.yaml"
    cfg.write_text("task: det\nmodel:\n  arch: faster_rcnn_c4\npublished:\n  mAP@.5: 48.4\n"
                   "published_source: He et al. 2015, Table 8\npublished_on: coco_2014_val\n"
                   "data:\n  test: [{name: coco_2014_val}]\n")
    rc, out, _ = run(capsys, "--cfg", cfg, "--weights", tmp_path / "w.pth", "train.device=cpu",
                     "solver.base_lr=0.5", "--out", tmp_path / "o" / "m.json")
    c = seen["cfg"]
    assert rc == 0 and c.model.weights == str(tmp_path / "w.pth") and c.solver.base_lr == 0.5
    assert str(seen["device"]) == "cpu" and seen["out_dir"] == tmp_path / "o"
    assert "48.4" in out and "+1.6" in out and "He et al. 2015, Table 8" in out
    # the same recipe on another data set: nobody's published figures beside ours
    for other in ("data.test=[{name: coco_2017_val}]",
                  "data.test=[{name: custom, format: coco, path: val.json}]"):
        rc, out, _ = run(capsys, "--cfg", cfg, "--weights", tmp_path / "w.pth", other)
        assert rc == 0 and "48.4" not in out and "published" not in out
    assert json.loads((tmp_path / "o" / "m.json").read_text())["mAP@[.5,.95]"] == 0.25
    cfg.write_text("task: cls\n")
    rc, _, err = run(capsys, "--cfg", cfg, "--weights", "w.pth")
    assert rc == 2 and "not a detector config" in err


def test_voc_mode_classes_txt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = write_voc(tmp_path)
    (voc / "classes.txt").write_text("person\ndog\ncat\n")  # a custom set's class list
    res = write_dets(tmp_path / "results", DETS)
    rc, _, _ = run(capsys, "--voc-root", voc, "--results", res, "--out", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert rc == 0 and list(m["per_class"]) == ["person", "dog", "cat"]
    assert m["mAP@.5"] == pytest.approx(expected(voc, use07=True)["mAP@.5"])


def test_cli_runs_as_a_script(tmp_path: Path) -> None:
    voc = write_voc(tmp_path)
    res = write_dets(tmp_path / "results", DETS)
    p = subprocess.run([sys.executable, str(REPO / "tools" / "eval.py"), "--voc-root", str(voc),
                        "--results", str(res)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "mAP@[.5,.95]" in p.stdout


def test_report_json_and_table(tmp_path: Path) -> None:
    from detres.evaluation import format_table, write_metrics

    r = {"per_class": {"dog": {"AP@.5": np.float64(0.5), "AP@[.5,.95]": float("nan")}},
         "mAP@[.5,.95]": 0.25, "mAP@.5": 0.5, "inference_s_per_image": 0.125}
    m = json.loads(write_metrics(r, tmp_path / "m.json").read_text())
    assert list(m) == ["mAP@.5", "mAP@[.5,.95]", "per_class", "inference_s_per_image"]
    assert m["per_class"]["dog"] == {"AP@.5": 0.5, "AP@[.5,.95]": None}
    table = format_table(r, published={"mAP@.5": 48.4})
    assert "50.0" in table and "+1.6" in table and "0.125" in table and "12.5" not in table


TABLE9 = {"coco_r101": (48.4, 27.2, False, False, False),
          "coco_r101_refine": (49.9, 29.9, True, False, False),
          "coco_r101_context": (51.1, 30.0, True, True, False),
          "coco_r101_ms": (53.8, 32.5, True, True, True)}


@pytest.mark.parametrize("name", list(TABLE9))
def test_table9_configs_print_the_papers_rows(name: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's Table 9 rows as configs (cumulative switches), each printing its row."""
    import detres.engine.det as det

    seen: dict = {}

    def fake_evaluate_config(cfg: object, device: object, *, out_dir: Path | None = None) -> dict:
        seen["cfg"] = cfg
        return {"mAP@.5": 0.5, "mAP@[.5,.95]": 0.3, "per_class": {}}

    monkeypatch.setattr(det, "evaluate_config", fake_evaluate_config)
    rc, out, _ = run(capsys, "--cfg", name, "--weights", tmp_path / "w.pth", "train.device=cpu")
    ap50, ap, refine, context, ms = TABLE9[name]
    c = seen["cfg"]
    assert rc == 0 and f"{ap50}" in out and f"{ap}" in out
    assert (c.model.roi_heads.box_refinement, c.model.roi_heads.global_context,
            c.evaluation.multiscale.enabled) == (refine, context, ms)
    if ms:
        assert c.evaluation.multiscale.scales == [200, 400, 600, 800, 1000]
