"""The reference detector: torchvision's ``fasterrcnn_resnet50_fpn`` set up like a detres
config, and detres' detector carrying the same weights (for ``--vs-torchvision`` and the
parity tests)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection._utils import overwrite_eps

from detres.config import Config, from_dict
from detres.modeling.backbones import convert_frozen_batchnorm
from detres.modeling.faster_rcnn import FasterRCNN, build_detector
from detres.modeling.weights import load_weights, read_weights, weights_from_dict
from detres.modeling.weights.torchvision import coco_layout, torchvision_frcnn_checkpoint


def torchvision_frcnn_kwargs(cfg: Config) -> dict[str, object]:
    """The arguments of torchvision's ``FasterRCNN`` that ``cfg`` sets: test sizes,
    normalization, RPN top-k, thresholds and sampling, RoI-head sampling, box weights,
    score/NMS/detections."""
    r, rh, i = cfg.model.rpn, cfg.model.roi_heads, cfg.model.input
    return dict(
        min_size=i.min_size_test,
        max_size=i.max_size_test,
        image_mean=list(i.pixel_mean),
        image_std=list(i.pixel_std),
        rpn_pre_nms_top_n_train=r.pre_nms_topk_train,
        rpn_post_nms_top_n_train=r.post_nms_topk_train,
        rpn_pre_nms_top_n_test=r.pre_nms_topk_test,
        rpn_post_nms_top_n_test=r.post_nms_topk_test,
        rpn_nms_thresh=r.nms_thresh,
        rpn_fg_iou_thresh=r.fg_iou_thresh,
        rpn_bg_iou_thresh=r.bg_iou_thresh,
        rpn_batch_size_per_image=r.batch_size_per_image,
        rpn_positive_fraction=r.positive_fraction,
        box_score_thresh=rh.score_thresh_test,
        box_nms_thresh=rh.nms_thresh_test,
        box_detections_per_img=rh.detections_per_image,
        box_fg_iou_thresh=rh.fg_iou_thresh,
        box_bg_iou_thresh=rh.bg_iou_thresh,
        box_batch_size_per_image=rh.batch_size_per_image,
        box_positive_fraction=rh.positive_fraction,
        bbox_reg_weights=tuple(rh.bbox_reg_weights),
    )


def build_torchvision_frcnn(cfg: Config, *, seed: int = 0, randomize: bool = True) -> nn.Module:
    """torchvision's ``fasterrcnn_resnet50_fpn`` (91 COCO classes) set up like ``cfg``
    (test and train sizes, RPN top-k and thresholds, sampling, score/NMS/detections) and like
    its COCO_V1 release: ``FrozenBatchNorm2d`` with eps 0, stem and res2 frozen
    (``trainable_backbone_layers=3``). Weights are random; with ``randomize`` the BN
    statistics are made non-trivial and the class scores spread (unused COCO ids at -1e4) so
    that random weights still give detections above the score threshold."""
    m = cfg.model
    if m.arch != "faster_rcnn_fpn" or m.backbone.name != "resnet50":
        raise ValueError(
            f"torchvision's reference is ResNet-50-FPN; the config has {m.arch} on "
            f"{m.backbone.name} (use a config like coco_r50_fpn.yaml)"
        )
    torch.manual_seed(seed)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                 **torchvision_frcnn_kwargs(cfg))
    body = tv.backbone.body
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for mod in body.modules():
                if isinstance(mod, nn.BatchNorm2d):  # non-trivial statistics
                    mod.weight.uniform_(0.2, 0.6, generator=g)
                    mod.bias.uniform_(-0.2, 0.2, generator=g)
                    mod.running_mean.uniform_(-0.2, 0.2, generator=g)
                    mod.running_var.uniform_(0.5, 2.0, generator=g)
            pred = tv.roi_heads.box_predictor
            pred.cls_score.weight.normal_(0, 0.2, generator=g)
            pred.cls_score.bias.normal_(0, 1.0, generator=g)
            pred.bbox_pred.weight.normal_(0, 0.05, generator=g)
            used = set(coco_layout()[0])  # trained weights never predict the "N/A" ids
            pred.cls_score.bias[[c for c in range(1, 91) if c not in used]] = -1e4
    tv.backbone.body = convert_frozen_batchnorm(body)
    for name, p in tv.backbone.body.named_parameters():  # trainable_backbone_layers=3
        if not name.startswith(("layer2", "layer3", "layer4")):
            p.requires_grad_(False)
    overwrite_eps(tv, 0.0)
    return tv


def torchvision_reference(cfg: Config, *, weights: str | None = None,
                          seed: int = 0) -> tuple[nn.Module, FasterRCNN]:
    """torchvision's ``fasterrcnn_resnet50_fpn`` with the settings of ``cfg`` (sizes, top-k,
    thresholds, frozen BN, frozen stem and res2) and detres' detector of ``cfg`` carrying the
    same weights through :func:`detres.modeling.weights.torchvision.torchvision_frcnn_checkpoint`.

    ``weights``: a torchvision COCO weight file; without it, random weights with spread class
    scores (see :func:`build_torchvision_frcnn`)."""
    tv = build_torchvision_frcnn(cfg, seed=seed, randomize=weights is None)
    if weights:
        tv.load_state_dict(read_weights(weights).state)
    ckpt = torchvision_frcnn_checkpoint(tv.state_dict(), cfg, src_bn_eps=0.0)
    ours = build_detector(from_dict(ckpt["config"]))
    load_weights(ours, weights_from_dict(ckpt, source="torchvision's converted weights"),
                 policy="strict")
    return tv.eval(), ours.eval()
