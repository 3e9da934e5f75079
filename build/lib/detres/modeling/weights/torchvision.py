"""Import torchvision's ``fasterrcnn_resnet50_fpn`` weights into a detres detector.

Names: ``backbone.body.*`` -> ``backbone.*`` (the plain ResNet), ``backbone.fpn.*`` ->
``neck.*``, ``rpn.head.{conv.0.0, cls_logits, bbox_pred}`` -> ``rpn.head.{conv,
objectness_logits, anchor_deltas}``, ``roi_heads.box_head.fc6/fc7`` unchanged.

Classes: torchvision's COCO predictor has 91 outputs indexed by COCO category id (0 is
background, 10 ids are unused "N/A"). detres keeps background + the 80 used ids as
contiguous labels 1..80 (``category_ids`` maps them back to COCO ids) and class-specific
deltas for the foreground only, so rows of unused ids and background deltas are dropped.
Scores then match torchvision's to within the softmax mass of the unused ids, which their
training pushes to ~0 (exactly 0 when their logits are -inf).

BatchNorm eps: torchvision's COCO_V1 weights run their FrozenBatchNorm2d with eps 0
(``overwrite_eps(model, 0.0)``) while detres uses 1e-5; the converter folds the difference
into the BN weights so that the outputs are unchanged.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.models._meta import _COCO_CATEGORIES

from detres.config import Config, load_config, to_dict
from detres.modeling.faster_rcnn import build_detector

#: The detres config of torchvision's ``fasterrcnn_resnet50_fpn`` (torchvision's defaults):
#: ``load_config(None, TORCHVISION_R50_FPN_OVERRIDES)``.
TORCHVISION_R50_FPN_OVERRIDES: list[str] = [
    "task=det",
    "model.arch=faster_rcnn_fpn",
    "model.backbone.name=resnet50",
    "model.backbone.stride_in_1x1=false",  # torchvision's ResNet v1.5
    "model.backbone.norm=FrozenBN",
    "model.backbone.freeze_at=2",  # trainable_backbone_layers=3
    "model.num_classes=80",
    "model.anchors.sizes=[[32],[64],[128],[256],[512]]",
    "model.rpn.pre_nms_topk_train=2000",  # per level
    "model.rpn.post_nms_topk_train=2000",
    "model.rpn.pre_nms_topk_test=1000",
    "model.rpn.post_nms_topk_test=1000",
    "model.rpn.smooth_l1_beta=0.1111111111111111",
    "model.roi_heads.pooler_resolution=7",
    "model.roi_heads.sampling_ratio=2",
    "model.roi_heads.smooth_l1_beta=0.1111111111111111",
]

_RENAMES = [
    ("backbone.body.", "backbone."),
    ("backbone.fpn.", "neck."),
    ("rpn.head.conv.0.0.", "rpn.head.conv."),
    ("rpn.head.conv.", "rpn.head.conv."),  # torchvision < 0.13 layout
    ("rpn.head.cls_logits.", "rpn.head.objectness_logits."),
    ("rpn.head.bbox_pred.", "rpn.head.anchor_deltas."),
    ("roi_heads.box_head.", "roi_heads.box_head."),
]
_OLD_FPN = re.compile(r"^(neck\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")


def coco_layout() -> tuple[list[int], list[str]]:
    """The 80 used COCO category ids (torchvision's class indices) and their names."""
    pairs = [(i, n) for i, n in enumerate(_COCO_CATEGORIES) if i > 0 and n != "N/A"]
    return [i for i, _ in pairs], [n for _, n in pairs]


def _fold_bn_eps(state: dict[str, Tensor], src_eps: float, dst_eps: float) -> None:
    """Rescale BN weights so that ``w / sqrt(var + dst_eps)`` equals ``w / sqrt(var + src_eps)``."""
    if src_eps == dst_eps:
        return
    for key in [k for k in state if k.endswith(".running_var")]:
        prefix = key[: -len("running_var")]
        var = state[key].double()
        w = state[prefix + "weight"].double()
        state[prefix + "weight"] = (w * torch.sqrt((var + dst_eps) / (var + src_eps))).to(
            state[prefix + "weight"].dtype
        )


def convert_torchvision_frcnn(
    state_dict: Mapping[str, Tensor],
    *,
    keep_classes: Sequence[int] | None = None,
    src_bn_eps: float = 0.0,
    dst_bn_eps: float = 1e-5,
) -> dict[str, Tensor]:
    """A ``fasterrcnn_resnet50_fpn`` state dict -> the state dict of the detres detector built
    from :data:`TORCHVISION_R50_FPN_OVERRIDES`.

    ``keep_classes``: torchvision class indices kept as labels 1..K, in order (default: the 80
    used COCO ids). ``src_bn_eps``: the eps the weights were trained with (0.0 for
    torchvision's COCO_V1 weights; 1e-5 for a model built with plain BatchNorm2d).
    """
    keep = list(keep_classes) if keep_classes is not None else coco_layout()[0]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("roi_heads.box_predictor."):
            out[key] = value
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                name = new + key[len(old) :]
                break
        else:
            raise KeyError(
                f"unexpected key {key!r}: not part of torchvision's fasterrcnn_resnet50_fpn "
                "(a Mask/Keypoint R-CNN or another model?)"
            )
        m = _OLD_FPN.match(name)
        out[m.group(1) + ".0." + m.group(2) if m else name] = value
    pred = "roi_heads.box_predictor."
    for k in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"):
        if pred + k not in out:
            raise KeyError(f"torchvision state dict has no {pred + k!r}")
    num_tv = out[pred + "cls_score.bias"].shape[0]
    if keep and (min(keep) < 1 or max(keep) >= num_tv):
        raise ValueError(f"keep_classes must be in 1..{num_tv - 1}, got {keep}")
    rows = torch.tensor([0, *keep])
    out[pred + "cls_score.weight"] = out[pred + "cls_score.weight"][rows].clone()
    out[pred + "cls_score.bias"] = out[pred + "cls_score.bias"][rows].clone()
    idx = torch.tensor(keep)
    w = out[pred + "bbox_pred.weight"]
    out[pred + "bbox_pred.weight"] = w.view(num_tv, 4, -1)[idx].reshape(-1, w.shape[1]).clone()
    out[pred + "bbox_pred.bias"] = (
        out[pred + "bbox_pred.bias"].view(num_tv, 4)[idx].reshape(-1).clone()
    )
    _fold_bn_eps(out, src_bn_eps, dst_bn_eps)
    return out


def torchvision_frcnn_checkpoint(
    state_dict: Mapping[str, Tensor], cfg: Config | None = None, *, src_bn_eps: float = 0.0
) -> dict[str, Any]:
    """A detres checkpoint ``{"model", "config", "class_names", "category_ids"}`` from
    torchvision's COCO ``fasterrcnn_resnet50_fpn`` weights, checked by loading it strictly
    into the detector of ``cfg`` (default: :data:`TORCHVISION_R50_FPN_OVERRIDES`)."""
    if cfg is None:
        cfg = load_config(None, TORCHVISION_R50_FPN_OVERRIDES)
    cfg = copy.deepcopy(cfg)
    cfg.model.weights = cfg.model.backbone.weights = ""  # the checkpoint holds every weight
    ids, names = coco_layout()
    if cfg.model.num_classes != len(ids):
        raise ValueError(
            f"model.num_classes is {cfg.model.num_classes}; COCO weights have {len(ids)}"
        )
    state = convert_torchvision_frcnn(state_dict, src_bn_eps=src_bn_eps)
    model = build_detector(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"converted weights do not fit the configured detector: {e}") from None
    return {"model": state, "config": to_dict(cfg), "class_names": names, "category_ids": ids}
