"""Each zoo config's recipe against its source. ``coco_r50_fpn.yaml`` against torchvision:
the model's training settings read from torchvision's own ``fasterrcnn_resnet50_fpn`` (its
RPN and RoI samplers, top-k, thresholds, box coders, resize, normalization) and the schedule
of its reference recipe (``references/detection/README.md``: 26 epochs, LR steps at 16 and
22, 0.02 at 16 images, SGD momentum 0.9, weight decay 1e-4, linear warm-up over 1000
iterations from 1/1000, horizontal flip 0.5)."""

from __future__ import annotations

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
