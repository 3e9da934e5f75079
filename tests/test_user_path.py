"""A new user's own COCO set, trained by copying the demo recipe as the README says: boxes
past the image border, a class count that differs from the recipe's, result files, published
figures, errors, the non-finite loss message, readable drawings and the data set summary."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from detres.config import load_config
from detres.data.coco import CocoFormatError, load_coco_json
from detres.data.voc import VocFormatError, load_voc
from detres.engine.predict import draw_detections
from detres.engine.trainer import NonFiniteLossError, Trainer
from detres.utils.visualizer import label_style


def custom(root: Path) -> list[str]:
    """The README's "train on your own data" overrides for the shapes set."""
    return [f"data.root={root}",
            "data.train=[{format: coco, path: train.json, images: train/}]",
            "data.test=[{format: coco, path: val.json, images: val/}]"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory, shapes_writer: Callable[..., Path]) -> Path:
    return shapes_writer(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def trained(shapes: Path, tool: Callable[[str], ModuleType], tiny_det: list[str],
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("shapes_run") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the clipping warning: checked below
        rc = tool("train_det").main(["--cfg", "demo.yaml", "--out-dir", str(out), *tiny_det,
                                     *custom(shapes), "solver.max_iter=3"])
    assert rc == 0
    return {"out": out, "printed": printed.getvalue()}


# 1 ---------------------------------------------------------------- boxes past the border


def test_boxes_past_the_border_are_clipped_with_one_warning(shapes: Path) -> None:
    raw = json.loads((shapes / "train.json").read_text())["annotations"]
    past = [a for a in raw if a["bbox"][0] < -1 or a["bbox"][1] < -1
            or a["bbox"][0] + a["bbox"][2] > 257 or a["bbox"][1] + a["bbox"][3] > 193]
    assert past, "the generated set must have boxes past the border"
    with pytest.warns(UserWarning, match=rf"train\.json: clipped {len(past)} box\(es\).*"
                                         rf"annotation ids {past[0]['id']}") as rec:
        src = load_coco_json(shapes / "train.json", shapes / "train")
    assert len([w for w in rec if "train.json" in str(w.message)]) == 1  # one per file
    assert src.clipped == len(past) and src.dropped == 0
    boxes = torch.cat([r["boxes"] for r in src.records])
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= 256
    assert boxes[:, 1::2].min() >= 0 and boxes[:, 1::2].max() <= 192
    # today's error on request, and malformed values stay errors
    with pytest.raises(CocoFormatError, match=rf"annotation id {past[0]['id']} .*outside"):
        load_coco_json(shapes / "train.json", shapes / "train", strict_boxes=True)
    bad = json.loads((shapes / "train.json").read_text())
    bad["annotations"][0]["bbox"][2] = float("nan")
    (shapes / "nan.json").write_text(json.dumps(bad))
    with pytest.raises(CocoFormatError, match="non-finite"):
        load_coco_json(shapes / "nan.json", shapes / "train")


def test_voc_boxes_past_the_border_are_clipped(tmp_path: Path) -> None:
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    obj = "<object><name>dog</name><bndbox><xmin>{}</xmin><ymin>1</ymin><xmax>{}</xmax>" \
          "<ymax>10</ymax></bndbox></object>"
    for name, objs in (("a", obj.format(1, 36)), ("b", obj.format(32, 40) + obj.format(2, 9))):
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>30</width><height>20</height></size>{objs}</annotation>")
    with pytest.warns(UserWarning, match=r"clipped 1 box\(es\).*dropped 1 left empty.*a\.xml"):
        src = load_voc(root, "train", class_names=["dog"])
    assert src.records[0]["boxes"].tolist() == [[0, 0, 30, 10]]
    assert src.records[1]["boxes"].tolist() == [[1, 0, 9, 10]]  # the empty one dropped
    with pytest.raises(VocFormatError, match=r"a\.xml.*outside the 30x20 image"):
        load_voc(root, "train", class_names=["dog"], strict_boxes=True)


# 2, 3, 4 ------------------------------------------------ the run on a 4-class custom set


def test_saved_config_and_checkpoint_describe_the_trained_model(
    trained: dict[str, object], tool: Callable[[str], ModuleType], shapes: Path
) -> None:
    """demo.yaml says 6 classes, the set has 4: OUT/config.yaml and the checkpoint say 4,
    and the README's predict and eval commands work on the run's own files."""
    out = trained["out"]
    assert isinstance(out, Path)
    cfg_text = (out / "config.yaml").read_text()
    assert "num_classes: 4" in cfg_text
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert ckpt["config"]["model"]["num_classes"] == 4
    assert ckpt["meta"]["class_names"] == ["rectangle", "circle", "triangle", "ellipse"]
    pred = out.parent / "pred"
    rc = tool("predict").main(["--cfg", str(out / "config.yaml"), "--weights",
                               str(out / "model_final.pth"), "--input", str(shapes / "val"),
                               "--out", str(pred), "--score-thresh", "0.0"])
    assert rc == 0 and len(json.loads((pred / "predictions.json").read_text())) == 6
    rc = tool("eval").main(["--cfg", str(out / "config.yaml"), "--weights",
                            str(out / "model_final.pth"), "--out", str(out.parent / "m.json")])
    assert rc == 0


def test_result_files_named_from_a_safe_label(trained: dict[str, object]) -> None:
    out = trained["out"]
    assert isinstance(out, Path)
    assert (out / "coco_results_val.json").is_file()
    # no folders made from a path: only the run's own (the report, TensorBoard's events)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) in (
        ["report"], ["report", "tensorboard"])


def test_no_published_targets_beside_a_custom_set(trained: dict[str, object]) -> None:
    printed = trained["printed"]
    assert isinstance(printed, str) and "mAP@.5" in printed
    assert "published" not in printed and "demo targets" not in printed


def test_data_set_summary_at_start(trained: dict[str, object]) -> None:
    out = trained["out"]
    assert isinstance(out, Path)
    log = (out / "log.txt").read_text()
    line = next(ln for ln in log.splitlines() if "train set train (coco)" in ln)
    assert "12 images" in line and "rectangle" in line and "images without objects" in line
    assert "boxes clipped to their image" in line
    assert "test set val (coco): 6 images" in log


# 5 ---------------------------------------------------------------- one line, exit code 2


def _det_errors(root: Path, shapes: Path) -> list[tuple[list[str], str]]:
    (root / "broken.yaml").write_text("model: [unclosed\n")
    bad = json.loads((shapes / "train.json").read_text())
    bad["annotations"][0]["bbox"] = [1, 2, 3]
    (shapes / "bad_ann.json").write_text(json.dumps(bad))
    img_dir = root / "imgs"
    img_dir.mkdir(exist_ok=True)
    for f in (shapes / "train").iterdir():  # every image broken: the first batch meets one
        (img_dir / f.name).write_bytes(b"not a png")
    evil = root / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": print}, f, protocol=2)
    data = custom(shapes)
    return [
        (["--cfg", "demo.yaml", *data, "model.no_such_key=1"], "no_such_key"),
        (["--cfg", "demo.yaml", *data, "solver.momentum=fast"], "solver.momentum"),
        (["--cfg", str(root / "missing.yaml")], "missing.yaml"),
        (["--cfg", str(root / "broken.yaml")], "broken.yaml"),
        (["--cfg", "demo.yaml", *data[:2],
          "data.train=[{format: coco, path: bad_ann.json, images: train/}]"], "bad_ann.json"),
        (["--cfg", "demo.yaml", *data[:1], f"data.train=[{{format: coco, path: train.json, "
          f"images: {img_dir}}}]", data[2]], "could not be decoded"),
        (["--cfg", "demo.yaml", *data, f"model.weights={evil}"], "evil.pth"),
    ]


def test_training_tools_report_user_errors_in_one_line(
    tmp_path: Path, shapes: Path, tool: Callable[[str], ModuleType], tiny_det: list[str],
    capsys: pytest.CaptureFixture[str], imagefolder_writer: Callable[..., Path]
) -> None:
    for argv, needle in _det_errors(tmp_path, shapes):
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = tool("train_det").main([*argv, *tiny_det, "solver.max_iter=1",
                                         "--out-dir", str(tmp_path / "o")])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "train_det.py: error:" in ln]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], (needle, err[-300:])
        assert "Traceback" not in err
    # the classification trainer: the same behaviour
    imagefolder_writer(tmp_path / "cls" / "train", ["a", "b"], per_class=2, size=16)
    (tmp_path / "cls" / "train" / "a" / "000.jpg").write_bytes(b"broken")
    cls_data = ["data.train=[{format: imagefolder, path: " + str(tmp_path / "cls" / "train")
                + "}]", "data.test=[{format: imagefolder, path: " + str(tmp_path / "cls" / "train")
                + "}]", "data.num_workers=0", "solver.max_iter=1", "solver.batch_size=4",
                "train.eval_period=0", "--out-dir", str(tmp_path / "oc")]
    for argv, needle in [(["model.nope=1"], "model.nope"), (["solver.max_iter=x"], "max_iter"),
                         (["--cfg", str(tmp_path / "broken.yaml")], "broken.yaml"),
                         ([f"model.weights={tmp_path / 'evil.pth'}"], "evil.pth"),
                         ([], "000.jpg")]:
        capsys.readouterr()
        rc = tool("pretrain_cls").main([*cls_data, *argv])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "pretrain_cls.py: error:" in ln]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], (needle, err[-300:])
        assert "Traceback" not in err
    with pytest.raises(Exception, match="no_such_key"):  # --debug: the traceback
        tool("train_det").main(["--cfg", "demo.yaml", "model.no_such_key=1", "--debug"])


# 7 --------------------------------------------------------------------- readable labels


def test_labels_drawn_on_a_filled_box_sized_to_the_image() -> None:
    class Model:
        class_names, category_ids = ["cat"], [3]

    heights = []
    for scale in (1, 4):
        det = {"boxes": torch.tensor([[40.0, 60.0, 200.0, 180.0]]) * scale,
               "scores": torch.tensor([0.9]), "labels": torch.tensor([3])}
        img = draw_detections(torch.zeros(3, 240 * scale, 320 * scale), det,
                              Model())  # type: ignore[arg-type]
        colour = img[:, 120 * scale, 40 * scale]  # the box's left edge: the class colour
        assert colour.sum() > 0
        # the label box right above the detection, filled with the class colour: most of its
        # pixels (all but the text's) have exactly that colour
        above = img[:, : 60 * scale, 40 * scale: 70 * scale]
        filled = (above == colour[:, None, None]).all(0)
        rows = filled.any(1)
        assert filled[rows].float().mean() > 0.5
        heights.append(int(rows.sum()))
        assert label_style(240 * scale, 320 * scale)[0] >= 0.35
    assert heights[1] >= 3 * heights[0] > 0  # sized to the image


# 6 ------------------------------------------------------------- the non-finite message


def test_non_finite_loss_names_what_exists(tmp_path: Path) -> None:
    cfg = load_config(None, ["solver.max_iter=3", "train.checkpoint_period=2",
                             "solver.batch_size=4", "train.log_period=1"])
    model = nn.Linear(2, 1)
    calls = {"n": 0}

    def step(m: nn.Module, batch: object) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        loss = m(torch.ones(4, 2)).mean()
        return {"loss": loss * (float("nan") if calls["n"] == first_bad else 1.0)}

    first_bad = 1
    t = Trainer(cfg, model, lambda s: iter(lambda: None, 0), step, None, tmp_path / "a",
                device=torch.device("cpu"))
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written before it"):
        t.train()
    assert not (tmp_path / "a" / "checkpoint_last.pth").exists()
    first_bad, calls["n"] = 3, 0
    t = Trainer(cfg, nn.Linear(2, 1), lambda s: iter(lambda: None, 0), step, None,
                tmp_path / "b", device=torch.device("cpu"))
    with pytest.raises(NonFiniteLossError,
                       match=r"last good checkpoint is .*checkpoint_last.pth \(iteration 2\)"):
        t.train()
    assert (tmp_path / "b" / "checkpoint_last.pth").exists()
