"""Each zoo config's recipe against its source. ``coco_r50_fpn.yaml`` against torchvision:
the model's training settings read from torchvision's own ``fasterrcnn_resnet50_fpn`` (its
RPN and RoI samplers, top-k, thresholds, box coders, resize, normalization) and the schedule
of its reference recipe (``references/detection/README.md``: 26 epochs, LR steps at 16 and
22, 0.02 at 16 images, SGD momentum 0.9, weight decay 1e-4, linear warm-up over 1000
iterations from 1/1000, horizontal flip 0.5)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from detres.config import load_config

#: references/detection/README.md (Faster R-CNN ResNet-50 FPN) and train.py's defaults
TV_RECIPE = {"epochs": 26, "lr_steps": (16, 22), "lr": 0.02, "images_per_batch": 2 * 8,
             "momentum": 0.9, "weight_decay": 1e-4, "warmup_iters": 1000,
             "warmup_factor": 1.0 / 1000, "hflip": 0.5, "trainable_backbone_layers": 3}
#: COCO train2017 images with at least one annotation (train.py drops the others)
COCO_TRAIN_IMAGES = 117_266


@pytest.fixture(scope="module")
def tv() -> object:
    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)


def test_coco_r50_fpn_model_is_torchvisions(tv: object) -> None:
    m = load_config("coco_r50_fpn.yaml").model
    rpn, roi = tv.rpn, tv.roi_heads  # type: ignore[attr-defined]
    assert (m.rpn.pre_nms_topk_train, m.rpn.pre_nms_topk_test) == (
        rpn._pre_nms_top_n["training"], rpn._pre_nms_top_n["testing"])
    assert (m.rpn.post_nms_topk_train, m.rpn.post_nms_topk_test) == (
        rpn._post_nms_top_n["training"], rpn._post_nms_top_n["testing"])
    assert m.rpn.nms_thresh == rpn.nms_thresh
    assert (m.rpn.batch_size_per_image, m.rpn.positive_fraction) == (
        rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction)
    assert (m.rpn.fg_iou_thresh, m.rpn.bg_iou_thresh) == (
        rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold)
    assert tuple(m.rpn.bbox_reg_weights) == rpn.box_coder.weights
    assert m.rpn.smooth_l1_beta == pytest.approx(1 / 9)  # torchvision's rpn.compute_loss
    assert (m.roi_heads.batch_size_per_image, m.roi_heads.positive_fraction) == (
        roi.fg_bg_sampler.batch_size_per_image, roi.fg_bg_sampler.positive_fraction)
    assert m.roi_heads.fg_iou_thresh == roi.proposal_matcher.high_threshold
    assert tuple(m.roi_heads.bbox_reg_weights) == roi.box_coder.weights
    assert m.roi_heads.smooth_l1_beta == pytest.approx(1 / 9)  # fastrcnn_loss
    assert (m.roi_heads.score_thresh_test, m.roi_heads.nms_thresh_test,
            m.roi_heads.detections_per_image) == (roi.score_thresh, roi.nms_thresh,
                                                   roi.detections_per_img)
    t = tv.transform  # type: ignore[attr-defined]
    assert (m.input.min_size_train, m.input.max_size_train) == (list(t.min_size), t.max_size)
    assert (m.input.min_size_test, m.input.max_size_test) == (t.min_size[-1], t.max_size)
    assert (m.input.pixel_mean, m.input.pixel_std) == (t.image_mean, t.image_std)
    assert m.input.hflip_prob == TV_RECIPE["hflip"]
    assert m.backbone.norm == "FrozenBN" and not m.backbone.stride_in_1x1
    assert m.backbone.freeze_at == 5 - TV_RECIPE["trainable_backbone_layers"]


def test_coco_r50_fpn_schedule_is_torchvisions() -> None:
    s = load_config("coco_r50_fpn.yaml").solver
    per_epoch = -(-COCO_TRAIN_IMAGES // TV_RECIPE["images_per_batch"])  # ceil
    assert s.batch_size == TV_RECIPE["images_per_batch"] and s.base_lr == TV_RECIPE["lr"]
    assert s.max_iter == TV_RECIPE["epochs"] * per_epoch
    assert s.steps == [e * per_epoch for e in TV_RECIPE["lr_steps"]]
    assert (s.momentum, s.weight_decay, s.weight_decay_norm) == (
        TV_RECIPE["momentum"], TV_RECIPE["weight_decay"], 0.0)  # FrozenBN: no norm params
    assert (s.warmup_iters, s.warmup_factor, s.warmup_method) == (
        TV_RECIPE["warmup_iters"], TV_RECIPE["warmup_factor"], "linear")


# ------------------------------------------------------------------------------ Detectron2

RECIPES = json.loads((Path(__file__).parent / "goldens" / "detectron2" / "recipes.json")
                     .read_text())["models"]
#: Detectron2 key -> (detres key, how Detectron2's value reads in detres)
D2_KEYS: dict[str, tuple[str, Any]] = {
    "SOLVER.MAX_ITER": ("solver.max_iter", None),
    "SOLVER.STEPS": ("solver.steps", list),
    "SOLVER.GAMMA": ("solver.gamma", None),
    "SOLVER.BASE_LR": ("solver.base_lr", None),
    "SOLVER.IMS_PER_BATCH": ("solver.batch_size", None),
    "SOLVER.MOMENTUM": ("solver.momentum", None),
    "SOLVER.NESTEROV": ("solver.nesterov", None),
    "SOLVER.WEIGHT_DECAY": ("solver.weight_decay", None),
    "SOLVER.WEIGHT_DECAY_NORM": ("solver.weight_decay_norm", None),
    "SOLVER.WARMUP_ITERS": ("solver.warmup_iters", None),
    "SOLVER.WARMUP_FACTOR": ("solver.warmup_factor", None),
    "SOLVER.WARMUP_METHOD": ("solver.warmup_method", None),
    "SOLVER.CLIP_GRADIENTS.ENABLED": ("solver.clip_grad_norm", lambda v: 0.0 if not v else v),
    "INPUT.MIN_SIZE_TRAIN": ("model.input.min_size_train", list),
    "INPUT.MAX_SIZE_TRAIN": ("model.input.max_size_train", None),
    "INPUT.MIN_SIZE_TEST": ("model.input.min_size_test", None),
    "INPUT.MAX_SIZE_TEST": ("model.input.max_size_test", None),
    "INPUT.RANDOM_FLIP": ("model.input.hflip_prob", {"horizontal": 0.5, "none": 0.0}.get),
    "INPUT.FORMAT": ("model.input.format", None),
    "MODEL.PIXEL_MEAN": ("model.input.pixel_mean", list),
    "MODEL.PIXEL_STD": ("model.input.pixel_std", list),
    "MODEL.BACKBONE.FREEZE_AT": ("model.backbone.freeze_at", None),
    "MODEL.RESNETS.DEPTH": ("model.backbone.name", lambda d: f"resnet{d}"),
    "MODEL.RESNETS.NORM": ("model.backbone.norm", None),
    "MODEL.RESNETS.STRIDE_IN_1X1": ("model.backbone.stride_in_1x1", None),
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": ("model.rpn.batch_size_per_image", None),
    "MODEL.RPN.POSITIVE_FRACTION": ("model.rpn.positive_fraction", None),
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": ("model.rpn.pre_nms_topk_train", None),
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": ("model.rpn.post_nms_topk_train", None),
    "MODEL.RPN.PRE_NMS_TOPK_TEST": ("model.rpn.pre_nms_topk_test", None),
    "MODEL.RPN.POST_NMS_TOPK_TEST": ("model.rpn.post_nms_topk_test", None),
    "MODEL.RPN.NMS_THRESH": ("model.rpn.nms_thresh", None),
    "MODEL.RPN.IOU_THRESHOLDS": (("model.rpn.bg_iou_thresh", "model.rpn.fg_iou_thresh"), list),
    "MODEL.RPN.SMOOTH_L1_BETA": ("model.rpn.smooth_l1_beta", None),
    "MODEL.RPN.BBOX_REG_WEIGHTS": ("model.rpn.bbox_reg_weights", list),
    "MODEL.RPN.LOSS_WEIGHT": ("model.rpn.loss_weight", None),
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": ("model.roi_heads.batch_size_per_image", None),
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": ("model.roi_heads.positive_fraction", None),
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": ("model.roi_heads.fg_iou_thresh", lambda v: v[0]),
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": ("model.roi_heads.score_thresh_test", None),
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": ("model.roi_heads.nms_thresh_test", None),
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": ("model.roi_heads.smooth_l1_beta", None),
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": ("model.roi_heads.bbox_reg_weights", list),
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": ("model.roi_heads.sampling_ratio", None),
    "TEST.DETECTIONS_PER_IMAGE": ("model.roi_heads.detections_per_image", None),
    "DATASETS.TRAIN": ("data.train", lambda v: [{"name": n} for n in v]),
    "DATASETS.TEST": ("data.test", lambda v: [{"name": n} for n in v]),
}
#: what detres implements once, not as a key: asserted to be Detectron2's setting
D2_FIXED = {"SOLVER.WEIGHT_DECAY_BIAS": None,  # biases decayed like weights
            "SOLVER.REFERENCE_WORLD_SIZE": 0, "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
            "MODEL.RPN.BBOX_REG_LOSS_TYPE": "smooth_l1",
            "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "smooth_l1",
            "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": True,
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return a == b


def _get(cfg: object, key: str) -> Any:
    v = dataclasses.asdict(cfg)  # type: ignore[call-overload]
    for part in key.split("."):
        v = v[part]
    return v


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_detectron2_configs_are_its_recipes(name: str) -> None:
    """Each coco_*_3x config resolves to the recipe Detectron2's own config loader gives its
    model-zoo YAML (tests/goldens/detectron2/recipes.json, tools/dev/d2_goldens.py)."""
    d2 = RECIPES[name]["values"]
    cfg = load_config(f"{name}.yaml")
    assert cfg.model.rules == "detectron2" and cfg.model.roi_heads.pooler == "ROIAlign"
    assert cfg.model.roi_heads.pooler_aligned is True  # ROIAlignV2
    wrong = []
    for d2_key, (ours, read) in D2_KEYS.items():
        want = read(d2[d2_key]) if read else d2[d2_key]
        keys = ours if isinstance(ours, tuple) else (ours,)
        got = [_get(cfg, k) for k in keys]
        got = got if isinstance(ours, tuple) else got[0]
        if isinstance(want, list) and want and isinstance(want[0], dict):
            got = [{"name": d["name"]} for d in got]
        if not _same(got, want):
            wrong.append(f"{d2_key}={d2[d2_key]!r}: {ours} is {got!r}")
    for d2_key, value in D2_FIXED.items():
        if d2[d2_key] != value:
            wrong.append(f"{d2_key}={d2[d2_key]!r}, detres implements {value!r}")
    assert not wrong, wrong
