"""A tiny real detection run end to end: tools/train_det.py on a generated demo set, exact
--resume, tools/eval.py reproducing the run's metrics, and tools/predict.py."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from detres.config import load_config
from detres.data.demo_det import DEMO_CATEGORY_IDS, DEMO_CLASSES, generate_demo_det
from detres.engine.predict import (
    build_predictor,
    draw_detections,
    keep_scores,
    list_images,
    read_image,
)
from detres.utils.device import autocast_context
from detres.utils.logging import read_jsonl


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tool: Callable[[str], ModuleType],
        tiny_det: list[str], demo_data: Callable[[Path], list[str]]) -> dict[str, Path]:
    """A 6-iteration run, and the same run stopped at 3 iterations then resumed to 6."""
    tmp = tmp_path_factory.mktemp("e2e_det")
    generate_demo_det(tmp / "data", num_train=16, num_val=8)
    ov = [*demo_data(tmp / "data"), *tiny_det]
    train = tool("train_det").main
    full, part = tmp / "full", tmp / "part"
    assert train(["--cfg", "demo.yaml", "--out-dir", str(full), *ov, "solver.max_iter=6"]) == 0
    assert train(["--cfg", "demo.yaml", "--out-dir", str(part), *ov, "solver.max_iter=3"]) == 0
    stopped = torch.load(part / "checkpoint_last.pth", weights_only=True)
    assert stopped["iteration"] == 3
    assert train(["--cfg", "demo.yaml", "--out-dir", str(part), *ov, "solver.max_iter=6",
                  "--resume"]) == 0
    return {"tmp": tmp, "data": tmp / "data", "full": full, "part": part}


def _in_unit(v: float) -> bool:
    return isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0


def test_training_writes_outputs(run: dict[str, Path]) -> None:
    out = run["full"]
    for name in ("metrics.jsonl", "curves.png", "config.yaml", "model_final.pth",
                 "checkpoint_last.pth", "metrics.json", "log.txt"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert _in_unit(m["mAP@.5"]) and _in_unit(m["mAP@[.5,.95]"])
    assert m["mAP@[.5,.95]"] <= m["mAP@.5"]
    assert sorted(m["per_class"]) == sorted(DEMO_CLASSES)
    for v in m["per_class"].values():
        assert _in_unit(v["AP@.5"]) and _in_unit(v["AP@[.5,.95]"])
    rows = read_jsonl(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    for r in train_rows:
        for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "lr"):
            assert math.isfinite(r[k]) and r[k] >= 0, (k, r)
    # warm-up over 2 iterations, then 0.01, x0.1 from iteration 4 (0-based) on
    np.testing.assert_allclose([r["lr"] for r in train_rows],
                               [0.01 * 0.001, 0.01 * 0.5005, 0.01, 0.01, 0.001, 0.001])
    val = [r for r in rows if "val/mAP@.5" in r]
    assert [r["iteration"] for r in val] == [6] and val[0]["val/mAP@.5"] == m["mAP@.5"]
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 6 and final["meta"]["class_names"] == list(DEMO_CLASSES)
    assert final["config"]["model"]["num_classes"] == len(DEMO_CLASSES)


def test_resume_reproduces_uninterrupted_run(run: dict[str, Path]) -> None:
    a = torch.load(run["full"] / "model_final.pth", weights_only=True)
    b = torch.load(run["part"] / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 6
    assert a["model"].keys() == b["model"].keys()
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"{len(differ)} tensors differ after --resume, e.g. {differ[:3]}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # the resumed log is one run: the same losses at the same iterations
    keys = ("iteration", "loss", "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "lr")
    rows = [[{k: r[k] for k in keys} for r in read_jsonl(run[x] / "metrics.jsonl") if "loss" in r]
            for x in ("full", "part")]
    assert rows[0] == rows[1]
    ma = json.loads((run["full"] / "metrics.json").read_text())
    mb = json.loads((run["part"] / "metrics.json").read_text())
    assert ma["mAP@.5"] == mb["mAP@.5"] and ma["per_class"] == mb["per_class"]


def test_eval_tool_reproduces_training_metrics(
    run: dict[str, Path], tool: Callable[[str], ModuleType]
) -> None:
    out = run["full"]
    m_json = run["tmp"] / "eval" / "m.json"
    m_json.parent.mkdir()
    rc = tool("eval").main(["--cfg", str(out / "config.yaml"),
                            "--weights", str(out / "model_final.pth"), "--out", str(m_json)])
    assert rc == 0
    got = json.loads(m_json.read_text())
    want = json.loads((out / "metrics.json").read_text())
    for key in ("mAP@.5", "mAP@[.5,.95]", "per_class"):
        assert got[key] == want[key], key


def test_trainer_evaluates_with_the_test_time_switch(
    run: dict[str, Path], tool: Callable[[str], ModuleType], tiny_det: list[str],
    demo_data: Callable[[Path], list[str]]
) -> None:
    """The trainer's evaluation runs the config's TTA: its detections are tools/eval.py's
    with TTA, and not those without it."""
    out = run["tmp"] / "tta_train"
    tta = ["evaluation.tta.enabled=true", "evaluation.tta.min_sizes=[96,128]",
           "evaluation.tta.max_size=192"]
    assert tool("train_det").main(["--cfg", "demo.yaml", "--out-dir", str(out),
                                   *demo_data(run["data"]), *tiny_det, *tta,
                                   "solver.max_iter=2"]) == 0
    ev = tool("eval").main
    weights = ["--weights", str(out / "model_final.pth")]
    dets = {}
    for name, extra in (("tta", []), ("plain", ["evaluation.tta.enabled=false"])):
        d = run["tmp"] / f"tta_eval_{name}"
        d.mkdir()
        assert ev(["--cfg", str(out / "config.yaml"), *weights, "--out", str(d / "m.json"),
                   *extra]) == 0
        (dets[name],) = (json.loads(f.read_text()) for f in d.glob("coco_results_*.json"))
    (trained,) = (json.loads(f.read_text()) for f in out.glob("coco_results_*.json"))
    assert trained and trained == dets["tta"]
    assert trained != dets["plain"]


def test_predict_tool_writes_images_and_json(
    run: dict[str, Path], tool: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    out, images = run["full"], run["data"] / "demo_det" / "images"
    inputs = [images / "val_00000.jpg", images / "val_00001.jpg"]
    pred = run["tmp"] / "pred"
    cfg = str(out / "config.yaml")
    weights = str(out / "model_final.pth")
    rc = tool("predict").main(["--cfg", cfg, "--weights", weights, "--input", *map(str, inputs),
                               "--out", str(pred), "--score-thresh", "0.0", "--batch-size", "2"])
    assert rc == 0
    for f in inputs:
        drawn = read_image(pred / f.name)
        assert drawn.shape == read_image(f).shape
    records = json.loads((pred / "predictions.json").read_text())
    assert [r["file"] for r in records] == [str(f) for f in inputs]

    # the same detections as model.predict; names and category ids from the checkpoint's meta
    config = load_config(cfg)
    model = build_predictor(config, weights, torch.device("cpu"))
    assert model.class_names == list(DEMO_CLASSES)
    assert model.category_ids == list(DEMO_CATEGORY_IDS)
    with autocast_context(torch.device("cpu"), config.evaluation.amp):  # the tool's precision
        dets = model.predict([read_image(f) for f in inputs])
    name_of = dict(zip(DEMO_CATEGORY_IDS, DEMO_CLASSES, strict=True))
    for r, d, f in zip(records, dets, inputs, strict=True):
        h, w = read_image(f).shape[-2:]
        assert (r["height"], r["width"]) == (h, w)
        assert len(r["boxes"]) == len(d["boxes"]) > 0
        np.testing.assert_allclose(r["boxes"], d["boxes"].numpy(), atol=0.01)
        np.testing.assert_allclose(r["scores"], d["scores"].numpy(), atol=1e-4)
        assert r["labels"] == d["labels"].tolist()
        assert set(r["labels"]) <= set(DEMO_CATEGORY_IDS)
        assert r["class_names"] == [name_of[c] for c in r["labels"]]
        b = np.asarray(r["boxes"])
        assert (b[:, 0] >= -0.01).all() and (b[:, 2] <= w + 0.01).all()
        assert (b[:, 1] >= -0.01).all() and (b[:, 3] <= h + 0.01).all()

    # a score threshold above every score keeps nothing; a directory input reads all images
    rc = tool("predict").main(["--cfg", cfg, "--weights", weights, "--input", str(images),
                               "--out", str(run["tmp"] / "pred_all"), "--score-thresh", "1.01"])
    assert rc == 0
    records = json.loads((run["tmp"] / "pred_all" / "predictions.json").read_text())
    assert len(records) == 24 and all(r["boxes"] == [] for r in records)

    # missing and broken inputs: exit code 2 and a message naming the file
    broken = run["tmp"] / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    capsys.readouterr()
    for bad in (run["tmp"] / "missing.jpg", broken):
        rc = tool("predict").main(["--cfg", cfg, "--weights", weights, "--input", str(bad),
                                   "--out", str(run["tmp"] / "pred_bad")])
        assert rc == 2
        assert str(bad) in capsys.readouterr().err


def test_list_images_and_drawing(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "notes.txt", "c.webp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images([tmp_path])] == ["a.JPG", "b.png", "c.webp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        list_images([tmp_path / "empty"])

    class Model:  # what drawing needs from a detector
        class_names, category_ids = ["cat", "dog"], [3, 7]

    image = torch.zeros(3, 40, 60)
    det = {"boxes": torch.tensor([[5.0, 6.0, 30.0, 35.0], [1.0, 1.0, 2.0, 2.0]]),
           "scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([7, 3])}
    kept = keep_scores(det, 0.5)
    assert kept["labels"].tolist() == [7]
    drawn = draw_detections(image, kept, Model(), width=1)  # type: ignore[arg-type]
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 40, 60)
    assert drawn[:, 34, 5:31].sum() > 0 and drawn[:, 30, 10:25].sum() == 0  # edge, not inside
    empty = keep_scores(det, 0.95)
    assert torch.equal(draw_detections(image, empty, Model()), image.byte())  # type: ignore[arg-type]


SWITCHES = {"plain": [],
            "tta": ["evaluation.tta.enabled=true", "evaluation.tta.min_sizes=[96,128]",
                    "evaluation.tta.max_size=192"],
            "multiscale": ["evaluation.multiscale.enabled=true",
                           "evaluation.multiscale.scales=[96,128,160]",
                           "evaluation.multiscale.max_size=240",
                           "evaluation.multiscale.target_size=32",
                           "model.roi_heads.box_refinement=true"]}


@pytest.mark.parametrize("bf16", ["0", "1"])
@pytest.mark.parametrize("switch", list(SWITCHES))
def test_eval_and_predict_see_the_same_image(
    run: dict[str, Path], tool: Callable[[str], ModuleType], bf16: str,
    monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    """One preprocessing path in every precision: an image scored by tools/eval.py (the test
    loader, in a DataLoader worker) and run through tools/predict.py (in this process, on
    more threads) gives the same detections, to the rounding of the JSON files, under
    ``amp: auto`` picking fp32 (``DETRES_CPU_BF16=0``) and bf16 (``=1``). Before the resize ran
    on one thread everywhere, the worker's image differed by 1 ulp and bf16 made that 0 of
    100 detections alike on R50-FPN. The same with TTA, and with multi-scale testing plus box
    refinement (the raw-image paths: the loader then does not resize)."""
    monkeypatch.setenv("DETRES_CPU_BF16", bf16)
    out, tmp = run["full"], run["tmp"]
    cfg, weights = str(out / "config.yaml"), str(out / "model_final.pth")
    amp = ["evaluation.amp=auto", *SWITCHES[switch]]
    m_json = tmp / f"same{bf16}{switch}" / "m.json"
    m_json.parent.mkdir()
    assert tool("eval").main(["--cfg", cfg, "--weights", weights, "--out", str(m_json), *amp,
                              "data.num_workers=1"]) == 0
    results = json.loads((m_json.parent / "coco_results_tiny_val.json").read_text())
    ann = json.loads((run["data"] / "demo_det/annotations/instances_val.json").read_text())
    checked = 0
    for im in ann["images"][:3]:
        pred = m_json.parent / f"pred_{im['id']}"
        image = run["data"] / "demo_det" / "images" / im["file_name"]
        assert tool("predict").main(["--cfg", cfg, "--weights", weights, "--input", str(image),
                                     "--out", str(pred), "--score-thresh", "0.0", *amp]) == 0
        (rec,) = json.loads((pred / "predictions.json").read_text())
        ours = sorted(zip(rec["scores"], rec["labels"], rec["boxes"], strict=True), reverse=True)
        theirs = sorted(((r["score"], r["category_id"],
                          [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                           r["bbox"][1] + r["bbox"][3]]) for r in results
                         if r["image_id"] == im["id"]), reverse=True)
        assert len(ours) == len(theirs)
        unused = list(theirs)  # one to one, up to the files' rounding (near-equal scores of
        for s1, c1, b1 in ours:  # a barely trained net may swap places when sorted)
            hit = next((t for t in unused if t[1] == c1 and abs(t[0] - s1) <= 1e-6
                        and np.allclose(t[2], b1, atol=2e-4, rtol=0)), None)
            assert hit is not None, (s1, c1, b1)
            unused.remove(hit)
        checked += len(ours)
    assert checked > 0


def test_onnx_export_predict_and_eval(run: dict[str, Path], tool: Callable[[str], ModuleType],
                                      capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """tools/export.py on the trained run, then tools/eval.py --onnx gives the PyTorch path's
    mAP (float32 both) and tools/predict.py --onnx its drawings and JSON; a config of another
    detector is refused, naming the key."""
    pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("onnxscript", reason="needs the [export] extra")
    out, tmp = run["full"], run["tmp"] / "onnx"
    tmp.mkdir()
    cfg, weights, model = str(out / "config.yaml"), str(out / "model_final.pth"), tmp / "m.onnx"
    with monkeypatch.context() as m:  # amp: auto picking bf16 must not upset the fp32 check
        m.setenv("DETRES_CPU_BF16", "1")
        assert tool("export").main(["--cfg", cfg, "--weights", weights, "--out", str(model),
                                    "--dynamic", "train.amp=auto", "evaluation.amp=auto"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\b(\d+) paired of \1 PyTorch / \1 onnxruntime", printed), printed
    assert "checked, onnxruntime vs PyTorch" in printed and "raw tensors" in printed
    m_pt, m_onnx = tmp / "pt" / "m.json", tmp / "ort" / "m.json"
    for d in (m_pt, m_onnx):
        d.parent.mkdir()
    assert tool("eval").main(["--cfg", cfg, "--weights", weights, "--out", str(m_pt),
                              "evaluation.amp=none"]) == 0
    assert tool("eval").main(["--cfg", cfg, "--onnx", str(model), "--out", str(m_onnx)]) == 0
    a, b = json.loads(m_pt.read_text()), json.loads(m_onnx.read_text())
    for key in ("mAP@.5", "mAP@[.5,.95]"):
        assert abs(a[key] - b[key]) <= 1e-3, (key, a[key], b[key])  # 0.1 point
    image = run["data"] / "demo_det" / "images" / "val_00000.jpg"
    recs = []
    for name, args in (("pt", ["--cfg", cfg, "--weights", weights, "evaluation.amp=none"]),
                       ("ort", ["--onnx", str(model)])):
        assert tool("predict").main([*args, "--input", str(image), "--out", str(tmp / name),
                                     "--score-thresh", "0.0"]) == 0
        recs.append(json.loads((tmp / name / "predictions.json").read_text())[0])
        assert (tmp / name / image.name).is_file()
    assert recs[0]["labels"] == recs[1]["labels"] and recs[0]["class_names"] == recs[1][
        "class_names"] and len(recs[0]["boxes"]) > 0
    np.testing.assert_allclose(recs[0]["boxes"], recs[1]["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(recs[0]["scores"], recs[1]["scores"], atol=1e-4, rtol=0)
    capsys.readouterr()
    assert tool("eval").main(["--cfg", cfg, "--onnx", str(model),
                              "model.input.min_size_test=64"]) == 2
    assert "model.input.min_size_test: file 128, the config 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool("predict").main(["--onnx", str(model), "--cfg", cfg, "--input", str(image),
                              "--out", str(tmp / "x")])
    # the weights of another model than the config's: one line, nothing written
    assert tool("export").main(["--cfg", "demo.yaml", "--weights", weights, "--out",
                                str(tmp / "wrong.onnx")]) == 2
    assert "shape mismatches" in capsys.readouterr().err and not (tmp / "wrong.onnx").exists()


def test_predict_checks_its_inputs_first(run: dict[str, Path], tool: Callable[[str], ModuleType],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A broken input is one error naming it before any image is run (or left out with
    --bad-images skip); a truncated JPEG is read as imread reads it."""
    out, images = run["full"], run["data"] / "demo_det" / "images"
    folder = run["tmp"] / "pred_inputs"
    folder.mkdir()
    good = folder / "good.jpg"
    good.write_bytes((images / "val_00002.jpg").read_bytes())
    data = (images / "val_00003.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) * 6 // 10])
    (folder / "broken.jpg").write_bytes(b"\x00" * 64)
    args = ["--cfg", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
            "--input", str(folder), "--score-thresh", "0.0"]
    capsys.readouterr()
    assert tool("predict").main([*args, "--out", str(run["tmp"] / "p1")]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 input files cannot be used" in err and "broken.jpg" in err
    assert not (run["tmp"] / "p1").exists()
    assert tool("predict").main([*args, "--out", str(run["tmp"] / "p2"),
                                 "--bad-images", "skip"]) == 0
    recs = json.loads((run["tmp"] / "p2" / "predictions.json").read_text())
    assert sorted(Path(r["file"]).name for r in recs) == ["cut.jpg", "good.jpg"]


def test_run_folder_has_the_evaluation_report(run: dict[str, Path],
                                              tool: Callable[[str], ModuleType],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """train_det.py's final evaluation writes report/ (PR curves, F1, confusion matrix) whose
    curves give metrics.json's per-class AP; predict.py --score-thresh best reads it."""
    out = run["full"]
    report = json.loads((out / "report" / "report.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    for name, curve in report["pr_curves"]["0.5"].items():
        printed = metrics["per_class"][name]["AP@.5"]
        assert (curve is None and printed is None) or curve["ap"] == pytest.approx(printed), name
    pngs = ("pr_iou50", "pr_iou75", "f1", "confusion_matrix", "confusion_matrix_normalized",
            "error_breakdown")  # the demo set is scored with COCO's metrics
    # the data as the model saw it, and val images with the ground truth beside detections
    for jpg in (out / "train_batch0.jpg", out / "train_batch2.jpg",
                out / "report" / "val_examples.jpg"):
        assert jpg.read_bytes()[:2] == b"\xff\xd8", jpg
    for png in pngs:
        assert (out / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    if importlib.util.find_spec("tensorboard") is not None:  # the test extra installs it
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(out / "tensorboard"))
        acc.Reload()
        assert sorted(acc.Tags()["images"]) == sorted(
            [*(f"report/{p}" for p in pngs), "report/val_examples",
             *(f"train_batch{i}" for i in range(3))])
        assert "loss" in acc.Tags()["scalars"] and "val/mAP@.5" in acc.Tags()["scalars"]
    image = run["data"] / "demo_det" / "images" / "val_00000.jpg"
    capsys.readouterr()
    assert tool("predict").main(["--cfg", str(out / "config.yaml"), "--weights",
                                 str(out / "model_final.pth"), "--input", str(image), "--out",
                                 str(run["tmp"] / "best"), "--score-thresh", "best"]) == 0
    thresh = report["f1"]["best_score_thresh"]
    assert f"score threshold {thresh:.2f}: the best F1 of" in capsys.readouterr().out


def test_predict_video_recursive_folders_and_globs(run: dict[str, Path],
                                                   tool: Callable[[str], ModuleType]) -> None:
    """--input clip.mp4 writes an annotated video and one JSON line per frame; a folder is
    searched recursively (outputs keep the sub-folder); a glob is expanded."""
    import cv2

    out, images = run["full"], run["data"] / "demo_det" / "images"
    tmp = run["tmp"] / "media"
    (tmp / "a" / "b").mkdir(parents=True)
    frames = [cv2.imread(str(images / f"val_0000{i}.jpg")) for i in range(5)]
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (w, h))
    for f in frames:
        writer.write(cv2.resize(f, (w, h)))
    writer.release()
    (tmp / "a" / "b" / "deep.jpg").write_bytes((images / "val_00001.jpg").read_bytes())
    (tmp / "top.jpg").write_bytes((images / "val_00002.jpg").read_bytes())
    args = ["--cfg", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
            "--score-thresh", "0.0", "--batch-size", "2"]
    pred = run["tmp"] / "pred_media"
    assert tool("predict").main([*args, "--input", str(tmp), "--out", str(pred)]) == 0
    lines = [json.loads(x) for x in (pred / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(5))
    assert lines[1]["time_s"] == pytest.approx(0.2) and "boxes" in lines[0]
    cap = cv2.VideoCapture(str(pred / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    assert (pred / "a" / "b" / "deep.jpg").is_file() and (pred / "top.jpg").is_file()
    recs = json.loads((pred / "predictions.json").read_text())
    assert sorted(Path(r["file"]).name for r in recs) == ["deep.jpg", "top.jpg"]
    pred2 = run["tmp"] / "pred_glob"
    assert tool("predict").main([*args, "--input", str(tmp / "**" / "*.jpg"), "--out",
                                 str(pred2)]) == 0
    recs = json.loads((pred2 / "predictions.json").read_text())
    assert sorted(Path(r["file"]).name for r in recs) == ["deep.jpg", "top.jpg"]
