"""The paper's COCO appendix as switches (box refinement, global context, multi-scale
testing) and test-time augmentation: TTA against Detectron2's ``GeneralizedRCNNWithTTA``
(goldens from tools/dev/d2_goldens.py), the others pinned to their definitions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
import torch
from torchvision.ops import box_iou

from detres.config import ConfigError, load_config
from detres.modeling import FasterRCNN, build_detector, load_weights
from detres.modeling.box_ops import rois_from_flat
from detres.modeling.roi_heads import ROIHeads, box_voting
from detres.modeling.test_time import TestTimeDetector, scale_pairs
from detres.modeling.weights import WeightsError

if TYPE_CHECKING:
    from conftest import D2Goldens

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ["r101_c4", "r50_fpn"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)
    torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-6)
    assert torch.equal(a["labels"], b["labels"])


# ------------------------------------------------------------------------------- TTA


@pytest.mark.parametrize("name", NAMES)
def test_tta_gives_detectron2_tta_detections(d2: D2Goldens, name: str, tmp_path: Path) -> None:
    model, cfg = d2.detector(name, tmp_path, "evaluation.tta.enabled=true",
                           f"evaluation.tta.min_sizes={d2.golden['tta']['min_sizes']}",
                           f"evaluation.tta.max_size={d2.golden['tta']['max_size']}",
                           f"evaluation.tta.flip={str(d2.golden['tta']['flip']).lower()}")
    tta = TestTimeDetector(model, tta=cfg.evaluation.tta)  # type: ignore[attr-defined]
    det = tta.predict([d2.image()])[0]
    ref = d2.reference(d2.golden["tta"][name])
    assert len(ref[0]) > 20
    found = d2.matched(ref, det)
    assert found >= 0.99, f"{name}: {found:.1%} of Detectron2's TTA detections found"
    assert abs(len(det["boxes"]) - len(ref[0])) <= max(1, len(ref[0]) // 100)
    # and TTA is not the single-scale answer (else this test would not test the merge)
    plain = model.predict([d2.image()])[0]
    assert d2.matched(ref, plain) < 0.9


def test_tta_at_the_test_scale_without_flip_is_plain_inference(d2: D2Goldens,
                                                               tmp_path: Path) -> None:
    model, cfg = d2.detector("r50_fpn", tmp_path, "evaluation.tta.enabled=true",
                           "evaluation.tta.min_sizes=[160]", "evaluation.tta.max_size=256",
                           "evaluation.tta.flip=false", "model.rules=torchvision")
    tta = TestTimeDetector(model, tta=cfg.evaluation.tta)  # type: ignore[attr-defined]
    _same(tta.predict([d2.image()])[0], model.predict([d2.image()])[0])


def test_flip_tta_of_a_mirrored_image_is_mirrored(d2: D2Goldens, tmp_path: Path) -> None:
    model, cfg = d2.detector("r101_c4", tmp_path, "evaluation.tta.enabled=true",
                           "evaluation.tta.min_sizes=[160]", "evaluation.tta.max_size=256")
    tta = TestTimeDetector(model, tta=cfg.evaluation.tta)  # type: ignore[attr-defined]
    img = d2.image()
    a, b = tta.predict([img, img.flip(-1)])
    w = img.shape[-1]
    mirrored = torch.stack([w - b["boxes"][:, 2], b["boxes"][:, 1], w - b["boxes"][:, 0],
                            b["boxes"][:, 3]], 1)
    iou = box_iou(a["boxes"], mirrored)
    same = (a["labels"][:, None] == b["labels"][None, :]) & (iou > 0.999) & (
        (a["scores"][:, None] - b["scores"][None, :]).abs() < 1e-4)
    assert float(same.any(dim=1).float().mean()) >= 0.95


def test_test_time_switches_are_checked(d2: D2Goldens) -> None:
    model = build_detector(load_config(d2.configs["r50_fpn"], d2.small))
    cfg = load_config(d2.configs["r50_fpn"], [*d2.small, "evaluation.tta.enabled=true",
                                           "evaluation.multiscale.enabled=true"])
    with pytest.raises(ConfigError, match="choose one"):
        TestTimeDetector(model, tta=cfg.evaluation.tta, multiscale=cfg.evaluation.multiscale)
    cfg = load_config(d2.configs["r50_fpn"], [*d2.small, "evaluation.tta.enabled=true",
                                           "evaluation.tta.min_sizes=[]"])
    with pytest.raises(ConfigError, match="evaluation.tta.min_sizes"):
        TestTimeDetector(model, tta=cfg.evaluation.tta)


# ------------------------------------------------------------------- multi-scale testing


def test_scale_pairs_bracket_the_target() -> None:
    # RoI sides at scales 1..4 (increasing); target 224
    sides = torch.tensor([[100.0, 200.0, 300.0, 400.0],   # 224 between scales 1 and 2
                          [10.0, 20.0, 30.0, 40.0],       # all below: the last pair
                          [500.0, 600.0, 700.0, 800.0],   # all above: the first pair
                          [50.0, 224.0, 400.0, 800.0]])   # exactly at scale 1: pair (0, 1)
    lo, hi = scale_pairs(sides, 224.0)
    assert lo.tolist() == [1, 2, 0, 0] and hi.tolist() == [2, 3, 1, 1]
    lo, hi = scale_pairs(sides[:, :1], 224.0)
    assert lo.tolist() == hi.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("name", NAMES)
def test_multiscale_on_the_test_scale_alone_is_plain_inference(d2: D2Goldens, name: str,
                                                                tmp_path: Path) -> None:
    """One scale, the test scale: maxout of a feature with itself; the same detections."""
    model, cfg = d2.detector(name, tmp_path, "evaluation.multiscale.enabled=true",
                           "evaluation.multiscale.scales=[160]",
                           "evaluation.multiscale.max_size=256")
    ms = TestTimeDetector(model, multiscale=cfg.evaluation.multiscale)  # type: ignore[attr-defined]
    _same(ms.predict([d2.image()])[0], model.predict([d2.image()])[0])


def test_pyramid_proposals_of_one_scale_are_the_test_scale_proposals(d2: D2Goldens,
                                                                      tmp_path: Path) -> None:
    """C4 (one RPN level, NMSed at the RPN's threshold): proposals merged over a one-scale
    pyramid are that scale's own, so the detections are plain inference's."""
    model, cfg = d2.detector("r101_c4", tmp_path, "evaluation.multiscale.enabled=true",
                             "evaluation.multiscale.scales=[160]",
                             "evaluation.multiscale.max_size=256",
                             "evaluation.multiscale.pyramid_proposals=true")
    ms = TestTimeDetector(model, multiscale=cfg.evaluation.multiscale)  # type: ignore[attr-defined]
    _same(ms.predict([d2.image()])[0], model.predict([d2.image()])[0])


def test_multiscale_pools_the_pair_the_rule_picks(d2: D2Goldens, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Three scales: every RoI is pooled at exactly two adjacent scales, the pair whose scaled
    side brackets the target (recomputed here by hand), and the predictor reads the
    elementwise max of the two box-head features."""
    model, cfg = d2.detector("r101_c4", tmp_path, "evaluation.multiscale.enabled=true",
                           "evaluation.multiscale.scales=[80,160,320]",
                           "evaluation.multiscale.max_size=1000",
                           "evaluation.multiscale.target_size=48")
    ms = TestTimeDetector(model, multiscale=cfg.evaluation.multiscale)  # type: ignore[attr-defined]
    heads = model.roi_heads
    calls: list[tuple[tuple[int, int], torch.Tensor, torch.Tensor]] = []
    merged: list[torch.Tensor] = []
    first: list[torch.Tensor] = []
    box_features, predict, detect = heads.box_features, heads.predict_from_features, heads.detect

    def spy_features(features, rois, image_sizes=None):  # noqa: ANN001, ANN202
        out = box_features(features, rois, image_sizes)
        calls.append((tuple(image_sizes[0]), rois.clone(), out.clone()))
        return out

    def spy_predict(x):  # noqa: ANN001, ANN202
        merged.append(x.clone())
        return predict(x)

    def spy_detect(features, rois, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        first.append(rois.clone())
        return detect(features, rois, *args, **kwargs)

    monkeypatch.setattr(heads, "box_features", spy_features)
    monkeypatch.setattr(heads, "predict_from_features", spy_predict)
    monkeypatch.setattr(heads, "detect", spy_detect)
    assert len(ms.predict([d2.image()])[0]["boxes"]) > 0
    rois = first[0][:, 1:]  # the proposals, original pixels
    n = len(rois)
    hws = sorted({c[0] for c in calls})
    assert len(hws) == 3 and n > 20
    h, w = d2.image().shape[-2:]
    ratio = torch.tensor([[hw[1] / w, hw[0] / h] for hw in hws])  # (3, 2) sx, sy
    at = torch.full((n, 3, merged[0].shape[1]), float("nan"))
    seen = torch.zeros(n, dtype=torch.long)
    for hw, r, out in calls:
        i = hws.index(hw)
        back = r[:, 1:] / ratio[i].repeat(2)
        idx = torch.cdist(back, rois).argmin(dim=1)
        assert torch.allclose(rois[idx], back, atol=1e-3)
        at[idx, i] = out
        seen[idx] += 1
        if int(seen.sum()) == 2 * n:  # the first pass done
            break
    assert torch.all(seen == 2)  # two scales per RoI
    area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
    pairs = set()
    for k in range(n):
        sides = [float((area[k] * ratio[i, 0] * ratio[i, 1]).sqrt()) for i in range(3)]
        j = 0 if sides[1] >= 48 else 1  # the pair (j, j + 1) around 48 (clamped)
        pooled = [i for i in range(3) if not torch.isnan(at[k, i, 0])]
        assert pooled == [j, j + 1], (sides, pooled)
        pairs.add(j)
        torch.testing.assert_close(merged[0][k], torch.maximum(at[k, j], at[k, j + 1]))
    assert pairs == {0, 1}  # both pairs occur: the rule is exercised


# -------------------------------------------------------------------- box refinement


def test_box_voting_on_hand_made_boxes() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 12.0, 10.0],
                          [100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 10.0, 11.0]])
    scores = torch.tensor([0.9, 0.3, 0.8, 0.6])
    groups = torch.tensor([1, 1, 1, 2])  # box 3 overlaps box 0 but is another class
    kept = boxes[[0, 2]]
    out = box_voting(kept, groups[[0, 2]], boxes, scores, groups, 0.5)
    want0 = (0.9 * boxes[0] + 0.3 * boxes[1]) / 1.2  # IoU(0, 1) = 100 / 120 >= 0.5
    torch.testing.assert_close(out[0], want0)
    torch.testing.assert_close(out[1], boxes[2])  # alone: itself
    out = box_voting(kept, groups[[0, 2]], boxes, scores, groups, 0.9)  # IoU 0.83 < 0.9
    torch.testing.assert_close(out, kept)


def test_refined_boxes_are_a_second_pass_of_the_box_head(d2: D2Goldens, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The union that refinement NMSes is the first pass's predictions and, for each RoI, the
    box head run again on its regressed box of its best class."""
    model, _ = d2.detector("r101_c4", tmp_path, "model.roi_heads.box_refinement=true")
    heads = model.roi_heads
    seen: dict[str, torch.Tensor] = {}
    select = heads.select

    def spy(boxes, scores, img, num_images, nms_thresh, voting_thresh=None):  # noqa: ANN001, ANN202
        seen.update(boxes=boxes, scores=scores, img=img)
        seen["nms"], seen["vote"] = torch.tensor(nms_thresh), torch.tensor(voting_thresh)
        return select(boxes, scores, img, num_images, nms_thresh, voting_thresh)

    monkeypatch.setattr(heads, "select", spy)
    x, sizes = model.preprocess([d2.image()])
    with torch.no_grad():
        det = model.inference(x, sizes)[0]
        feats = model.features(model.normalize(x, sizes))
        out = model.rpn([feats[k] for k in model.rpn_features], tuple(x.shape[-2:]))
        boxes, idx = model.rpn.select_proposals(out, sizes, training=False)
        rois = rois_from_flat(boxes, idx)
        s1, b1 = heads.decode(*heads.predict_logits(feats, rois, sizes), rois, sizes)
        best = b1[torch.arange(len(rois)), s1.argmax(1)]
        rois2 = rois_from_flat(best, idx)
        s2, b2 = heads.decode(*heads.predict_logits(feats, rois2, sizes), rois2, sizes)
    r = len(rois)
    assert seen["boxes"].shape == (2 * r, model.num_classes, 4)
    torch.testing.assert_close(seen["boxes"][:r], b1)
    torch.testing.assert_close(seen["scores"][r:], s2)
    torch.testing.assert_close(seen["boxes"][r:], b2)
    assert float(seen["nms"]) == pytest.approx(0.3) and float(seen["vote"]) == pytest.approx(0.5)
    assert len(det["boxes"]) > 0
    # every output box is a vote: inside the hull of the candidates of its class
    assert torch.isfinite(det["boxes"]).all()


def test_refinement_changes_detections_and_export_refuses_it(d2: D2Goldens, tmp_path: Path) -> None:
    from detres.export import ExportError, export_onnx

    plain, _ = d2.detector("r50_fpn", tmp_path)
    refined, _ = d2.detector("r50_fpn", tmp_path, "model.roi_heads.box_refinement=true")
    a, b = plain.predict([d2.image()])[0], refined.predict([d2.image()])[0]
    assert not (len(a["boxes"]) == len(b["boxes"]) and torch.allclose(a["boxes"], b["boxes"]))
    with pytest.raises(ExportError, match="box_refinement"):
        export_onnx(refined, tmp_path / "m.onnx")


# -------------------------------------------------------------------- global context


def test_global_context_pools_exactly_the_image_box(tiny_detector: Callable[..., FasterRCNN],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_detector("c4", "model.roi_heads.global_context=true").eval()
    pooled: list[torch.Tensor] = []
    pooler = model.roi_heads.box_pooler
    forward = pooler.forward

    def spy(features, rois):  # noqa: ANN001, ANN202
        pooled.append(rois.clone())
        return forward(features, rois)

    monkeypatch.setattr(pooler, "forward", spy)
    images = [torch.rand(3, 96, 120), torch.rand(3, 80, 128)]
    x, sizes = model.preprocess(images)
    model.inference(x, sizes)
    whole = pooled[0]  # inference pools the image boxes first, then the regions
    want = torch.tensor([[0, 0, 0, sizes[0][1], sizes[0][0]],
                         [1, 0, 0, sizes[1][1], sizes[1][0]]], dtype=torch.float32)
    assert torch.equal(whole, want)
    # training: regions and image boxes through the head in one batch
    pooled.clear()
    model.train()
    targets = [{"gt_boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]),
                "gt_classes": torch.tensor([1]), "image_size": s} for s in sizes]
    losses = model.losses(x, targets)
    assert torch.equal(pooled[0][-2:], want)
    sum(losses.values()).backward()
    ctx = model.roi_heads.context_predictor
    assert ctx is not None and float(ctx.cls_score.weight.grad.abs().sum()) > 0


def test_global_context_loads_a_detector_without_it(d2: D2Goldens, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Only the new layers are re-initialized (zero), with one log line; the detector then
    predicts what the one without context did. Scoring (strict) refuses the file."""
    plain, _ = d2.detector("r101_c4", tmp_path)
    cfg = load_config(d2.configs["r101_c4"], [*d2.small, "model.roi_heads.global_context=true"])
    ctx = build_detector(cfg)
    with caplog.at_level(logging.INFO):
        report = load_weights(ctx, tmp_path / "r101_c4.pth", policy="trunk")
    assert report.reinitialized == ["roi_heads.context_predictor"]
    assert any("global context" in r.getMessage() for r in caplog.records)
    _same(ctx.eval().predict([d2.image()])[0], plain.predict([d2.image()])[0])
    with pytest.raises(WeightsError, match="context_predictor"):
        load_weights(build_detector(cfg), tmp_path / "r101_c4.pth", policy="strict")


def test_global_context_detects_with_every_family(tiny_detector: Callable[..., FasterRCNN]
                                                  ) -> None:
    for family in ("c4", "vgg", "fpn"):
        model = tiny_detector(family, "model.roi_heads.global_context=true").eval()
        heads: ROIHeads = model.roi_heads
        assert heads.context_predictor is not None
        torch.nn.init.normal_(heads.context_predictor.cls_score.weight, std=0.5)
        det = model.predict([torch.rand(3, 96, 128)])[0]
        assert det["boxes"].shape[1] == 4


# ------------------------------------------------------------------ eval and predict


def test_eval_and_predict_take_the_switches(d2: D2Goldens, tmp_path: Path,
                                            tool: Callable[[str], ModuleType],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """tools/predict.py with TTA, multi-scale and refinement on a converted Detectron2 file;
    tools/export.py refuses TTA with a clear line."""
    d2.detector("r50_fpn", tmp_path)
    weights = str(tmp_path / "r50_fpn.pth")
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    (img_dir / "a.png").write_bytes((d2.gold / "det_image.png").read_bytes())
    base = ["--cfg", d2.configs["r50_fpn"], "--weights", weights, "--input", str(img_dir),
            "--score-thresh", "0.05", *d2.small]
    counts = {}
    for label, extra in {
        "plain": [],
        "tta": ["evaluation.tta.enabled=true", "evaluation.tta.min_sizes=[128,160]",
                "evaluation.tta.max_size=256"],
        "ms": ["evaluation.multiscale.enabled=true", "evaluation.multiscale.scales=[128,208]",
               "evaluation.multiscale.max_size=400"],
        "refine": ["model.roi_heads.box_refinement=true"],
    }.items():
        out = tmp_path / label
        assert tool("predict").main([*base, "--out", str(out), *extra]) == 0
        import json
        rec = json.loads((out / "predictions.json").read_text())[0]
        counts[label] = (len(rec["boxes"]), rec["boxes"][:1])
        assert all(0 <= b[0] <= b[2] <= 224 and 0 <= b[1] <= b[3] <= 160 for b in rec["boxes"])
    assert len({str(v) for v in counts.values()}) == 4, counts  # each switch changes the output
    rc = tool("export").main(["--cfg", d2.configs["r50_fpn"], "--weights", weights, "--out",
                              str(tmp_path / "m.onnx"), *d2.small, "evaluation.tta.enabled=true"])
    assert rc == 2 and "evaluation.tta.enabled" in capsys.readouterr().err
