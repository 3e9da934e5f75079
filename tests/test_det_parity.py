"""detres Faster R-CNN R50-FPN vs torchvision's ``fasterrcnn_resnet50_fpn`` with converted
weights: the same detections on the same images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from detres.benchmark.reference import build_torchvision_frcnn
from detres.config import from_dict, load_config
from detres.modeling import build_detector, load_weights
from detres.modeling.weights import weights_from_dict
from detres.modeling.weights.torchvision import (
    TORCHVISION_R50_FPN_OVERRIDES,
    coco_layout,
    convert_torchvision_frcnn,
    torchvision_frcnn_checkpoint,
)

# Small inputs and RPN top-k on both sides keep this test at a few seconds of CPU.
SETTINGS = {"min_size": 160, "max_size": 256, "pre_nms": 300, "post_nms": 200}
OVERRIDES = TORCHVISION_R50_FPN_OVERRIDES + [
    f"model.input.min_size_test={SETTINGS['min_size']}",
    f"model.input.max_size_test={SETTINGS['max_size']}",
    f"model.rpn.pre_nms_topk_test={SETTINGS['pre_nms']}",
    f"model.rpn.post_nms_topk_test={SETTINGS['post_nms']}",
]


@pytest.fixture(scope="module")
def torchvision_model() -> torch.nn.Module:
    """Random weights, set up like the COCO_V1 release: FrozenBatchNorm2d with eps 0."""
    return build_torchvision_frcnn(load_config(None, OVERRIDES), seed=0).eval()


def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    sizes = [(192, 240), (120, 170)]  # scaled by 160/192 (down) and 160/120 (up)
    return [
        torch.nn.functional.interpolate(
            torch.rand(1, 3, 24, 30, generator=g), size=s, mode="bilinear"
        )[0]
        for s in sizes
    ]


def assert_same_detections(ref: dict, got: dict) -> None:
    n = len(ref["boxes"])
    assert len(got["boxes"]) == n > 0
    # Pair each reference detection with ours (same label, same box). Scores agree position by
    # position; the order may differ only among detections with near-equal scores.
    dist = (ref["boxes"][:, None, :] - got["boxes"][None, :, :]).abs().amax(dim=-1)
    same = (dist < 1e-3) & (ref["labels"][:, None] == got["labels"][None, :])
    j = same.float().argmax(dim=1)
    assert same[torch.arange(n), j].all(), "a torchvision detection has no counterpart"
    assert len(set(j.tolist())) == n
    torch.testing.assert_close(got["boxes"][j], ref["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(got["scores"][j], ref["scores"], rtol=0, atol=1e-4)
    torch.testing.assert_close(got["scores"], ref["scores"], rtol=0, atol=1e-5)


def test_predict_matches_torchvision(torchvision_model: torch.nn.Module) -> None:
    cfg = load_config(None, OVERRIDES)
    ckpt = torchvision_frcnn_checkpoint(torchvision_model.state_dict(), cfg, src_bn_eps=0.0)
    ours = build_detector(from_dict(ckpt["config"]))
    load_weights(ours, weights_from_dict(ckpt, source="converted"), policy="strict")
    assert ours.category_ids == coco_layout()[0]
    imgs = images()
    with torch.no_grad():
        ref = torchvision_model(imgs)
    got = ours.predict(imgs)
    for r, o, img in zip(ref, got, imgs, strict=True):
        assert_same_detections(r, o)
        assert o["boxes"][:, 2].max() <= img.shape[-1] + 1e-3
        assert o["boxes"][:, 3].max() <= img.shape[-2] + 1e-3
    assert len({int(x) for o in got for x in o["labels"]}) > 1  # several classes


def test_conversion_layout() -> None:
    ids, names = coco_layout()
    assert len(ids) == 80 and ids[:3] == [1, 2, 3] and ids[-1] == 90 and 12 not in ids
    assert names[0] == "person" and names[-1] == "toothbrush"
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    sd = tv.state_dict()
    out = convert_torchvision_frcnn(sd, src_bn_eps=1e-5)
    pred = "roi_heads.box_predictor."
    assert out[pred + "cls_score.weight"].shape[0] == 81
    assert out[pred + "bbox_pred.weight"].shape[0] == 320
    torch.testing.assert_close(out[pred + "cls_score.bias"][1:], sd[pred + "cls_score.bias"][ids])
    # class k's 4 deltas come from torchvision's rows 4*id .. 4*id+3
    k, cid = 11, ids[11]
    torch.testing.assert_close(
        out[pred + "bbox_pred.weight"][4 * k : 4 * k + 4],
        sd[pred + "bbox_pred.weight"][4 * cid : 4 * cid + 4],
    )
    assert "neck.inner_blocks.0.0.weight" in out and "backbone.layer4.2.bn3.running_var" in out
    assert not any("num_batches_tracked" in k for k in out)
    # eps folding: BN weights change only when the source eps differs
    torch.testing.assert_close(out["backbone.bn1.weight"], sd["backbone.body.bn1.weight"])
    folded = convert_torchvision_frcnn(sd, src_bn_eps=0.0)["backbone.bn1.weight"]
    assert not torch.equal(folded, sd["backbone.body.bn1.weight"])
    with pytest.raises(KeyError, match="roi_heads.mask_head"):
        convert_torchvision_frcnn({**sd, "roi_heads.mask_head.0.weight": torch.zeros(1)})


def test_convert_weights_tool(tmp_path: Path, torchvision_model: torch.nn.Module,
                              tool: Callable[[str], ModuleType],
                              capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "tv.pth", tmp_path / "detres_r50_fpn.pth"
    torch.save(torchvision_model.state_dict(), src)
    assert tool("convert_weights").main(["--src", str(src), "--out", str(out)]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "config", "class_names", "category_ids"}
    assert ckpt["category_ids"] == coco_layout()[0] and len(ckpt["class_names"]) == 80
    cfg = from_dict(ckpt["config"])
    assert cfg.model.arch == "faster_rcnn_fpn" and cfg.model.num_classes == 80
    capsys.readouterr()
    rc = tool("convert_weights").main(["--src", str(tmp_path / "missing.pth"), "--out", str(out)])
    assert rc == 2 and "no such file" in capsys.readouterr().err
