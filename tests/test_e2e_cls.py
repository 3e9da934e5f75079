"""Classification pretraining end to end with tools/pretrain_cls.py: a tiny run with exact
--resume, its checkpoint loading into a detector's trunk with no renaming, and the paper's
ImageNet / CIFAR-10 configs starting on data in the published layouts."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from detres.config import load_config
from detres.data.synthetic_cls import generate_synthetic_cls
from detres.modeling import build_detector, load_pretrained
from detres.utils.logging import read_jsonl


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tool: Callable[[str], ModuleType],
        tiny_cls: list[str], synthetic_data: Callable[[Path], list[str]]) -> dict[str, object]:
    """6 iterations straight, and 3 iterations then --resume to 6."""
    tmp = tmp_path_factory.mktemp("e2e_cls")
    generate_synthetic_cls(tmp / "data", spec="synthetic_cls", train_per_class=4,
                           val_per_class=2)
    ov = [*synthetic_data(tmp / "data"), *tiny_cls]
    main = tool("pretrain_cls").main
    full, part = tmp / "full", tmp / "part"
    cfg = "imagenet_resnet18.yaml"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--cfg", cfg, "--out-dir", str(full), *ov, "solver.max_iter=6"]) == 0
    assert main(["--cfg", cfg, "--out-dir", str(part), *ov, "solver.max_iter=3"]) == 0
    assert torch.load(part / "checkpoint_last.pth", weights_only=True)["iteration"] == 3
    assert main(["--cfg", cfg, "--out-dir", str(part), *ov, "solver.max_iter=6",
                 "--resume"]) == 0
    return {"tmp": tmp, "full": full, "part": part, "overrides": ov, "printed": printed.getvalue()}


def test_outputs_and_final_errors(run: dict[str, object]) -> None:
    out = run["full"]
    assert isinstance(out, Path)
    for name in ("metrics.jsonl", "curves.png", "config.yaml", "model_final.pth", "log.txt"):
        assert (out / name).is_file(), name
    rows = read_jsonl(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss_cls" in r]
    assert [r["iteration"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss_cls"]) and 0 <= r["train_top1_err"] <= 1
               for r in train_rows)
    (val,) = [r for r in rows if "val/top1_err" in r]
    assert val["iteration"] == 6 and val["val/num_images"] == 20  # 10 classes x 2
    assert 0 <= val["val/top5_err"] <= val["val/top1_err"] <= 1
    # the numbers are multiples of 1/20: errors over the whole val split
    assert val["val/top1_err"] * 20 == pytest.approx(round(val["val/top1_err"] * 20))
    ck = torch.load(out / "model_final.pth", weights_only=True)
    assert ck["iteration"] == 6 and len(ck["meta"]["class_names"]) == 10
    assert ck["model"]["fc.weight"].shape == (10, 8 * 8)  # resnet18 width 8: 64-d features


def test_summary_is_printed(run: dict[str, object], tool: Callable[[str], ModuleType],
                            capsys: pytest.CaptureFixture[str]) -> None:
    """The run ends by printing the final top-1/top-5 errors; --eval-only on its weights
    prints the same."""
    out = run["full"]
    assert isinstance(out, Path)
    (val,) = [r for r in read_jsonl(out / "metrics.jsonl") if "val/top1_err" in r]
    want = (f"top-1 error {100 * val['val/top1_err']:.2f}%  "
            f"top-5 error {100 * val['val/top5_err']:.2f}%")
    assert want in str(run["printed"]), run["printed"]
    capsys.readouterr()
    ov = [*run["overrides"], f"model.weights={out / 'model_final.pth'}"]  # type: ignore[misc]
    rc = tool("pretrain_cls").main(["--cfg", "imagenet_resnet18.yaml", "--out-dir",
                                    str(out.parent / "evalonly"), "--eval-only", *ov])
    assert rc == 0
    assert want in capsys.readouterr().out


def test_resume_reproduces_uninterrupted_run(run: dict[str, object]) -> None:
    full, part = run["full"], run["part"]
    assert isinstance(full, Path) and isinstance(part, Path)
    a = torch.load(full / "model_final.pth", weights_only=True)
    b = torch.load(part / "model_final.pth", weights_only=True)
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"{len(differ)} tensors differ after --resume, e.g. {differ[:3]}"
    keys = ("iteration", "loss_cls", "train_top1_err", "lr")
    logs = [[{k: r[k] for k in keys} for r in read_jsonl(d / "metrics.jsonl") if "loss_cls" in r]
            for d in (full, part)]
    assert logs[0] == logs[1]


@pytest.mark.parametrize("arch", ["faster_rcnn_fpn", "faster_rcnn_c4"])
def test_checkpoint_loads_into_detector_trunk(run: dict[str, object], arch: str) -> None:
    """``model.backbone.weights=<pretrain_cls checkpoint>``: every trunk tensor equals the
    classifier's (FrozenBN buffers included); only ``fc`` is left out."""
    out = run["full"]
    assert isinstance(out, Path)
    weights = out / "model_final.pth"
    ov = [f"model.arch={arch}", "model.backbone.width_per_group=8",
          f"model.backbone.weights={weights}"]
    if arch == "faster_rcnn_c4":  # the paper's fine-tuning set-up
        ov += ["model.backbone.norm=FrozenBN", "model.backbone.freeze_at=2",
               "model.anchors.sizes=[[32,64,128]]", "model.roi_heads.pooler_resolution=14"]
    cfg = load_config("demo.yaml", ov)
    model = build_detector(cfg)
    load_pretrained(model, cfg.model)
    cls_state = torch.load(weights, weights_only=True)["model"]
    state = model.state_dict()
    assert not any(k.startswith("fc.") for k in model.backbone.state_dict())
    body = {k: v for k, v in cls_state.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    # the whole trunk: the backbone, and for C4 res5 in the box head (roi_heads.box_head.res5)
    trunk = {k: model.trunk_keys[k] for k in body}
    assert set(trunk.values()) == {k for k in state if not k.endswith("num_batches_tracked")
                                   and (k.startswith("backbone.") or ".res5." in k)}
    if arch == "faster_rcnn_c4":
        assert trunk["layer4.0.conv1.weight"] == "roi_heads.box_head.res5.0.conv1.weight"
    differ = [k for k in body if not torch.equal(state[trunk[k]], body[k])]
    assert not differ, differ[:5]


def test_imagenet_config_on_published_layout(
    tmp_path: Path, tool: Callable[[str], ModuleType],
    imagefolder_writer: Callable[..., Path],
) -> None:
    classes = ["n01440764", "n01443537", "n01484850"]
    imagefolder_writer(tmp_path / "imagenet" / "train", classes, per_class=3, size=40)
    imagefolder_writer(tmp_path / "imagenet" / "val", classes, per_class=2, size=40, seed=1)
    out = tmp_path / "out"
    rc = tool("pretrain_cls").main([
        "--cfg", "imagenet_resnet18.yaml", "--out-dir", str(out), f"data.root={tmp_path}",
        "solver.max_iter=1", "solver.batch_size=2", "data.cls_aug.crop_size=32",
        "data.cls_aug.scale_min=36", "data.cls_aug.scale_max=40", "data.cls_aug.test_resize=36",
        "data.num_workers=0", "model.backbone.width_per_group=8", "train.device=cpu",
    ])
    assert rc == 0
    ck = torch.load(out / "model_final.pth", weights_only=True)
    assert ck["meta"]["class_names"] == classes
    assert ck["model"]["fc.weight"].shape[0] == 3  # num_classes taken from the data
    (val,) = [r for r in read_jsonl(out / "metrics.jsonl") if "val/num_images" in r]
    assert val["val/num_images"] == 6


def test_cifar_config_on_published_layout(
    tmp_path: Path, tool: Callable[[str], ModuleType], cifar10_writer: Callable[..., Path]
) -> None:
    cifar10_writer(tmp_path, per_batch=4)
    out = tmp_path / "out"
    rc = tool("pretrain_cls").main([
        "--cfg", "cifar_resnet56.yaml", "--out-dir", str(out), f"data.root={tmp_path}",
        "solver.max_iter=1", "solver.batch_size=4", "data.num_workers=0", "train.device=cpu",
        "model.backbone.width_per_group=4",
    ])
    assert rc == 0
    ck = torch.load(out / "model_final.pth", weights_only=True)
    assert ck["meta"]["class_names"][:2] == ["airplane", "automobile"]
    assert ck["config"]["model"]["backbone"]["name"] == "resnet56"
    # 6n+2 = 56: three stages of nine blocks
    assert {k.split(".")[1] for k in ck["model"] if k.startswith("layer3.")} == {
        str(i) for i in range(9)}
    (val,) = [r for r in read_jsonl(out / "metrics.jsonl") if "val/num_images" in r]
    assert val["val/num_images"] == 4  # test_batch
    assert json.loads(json.dumps(val))  # plain JSON
