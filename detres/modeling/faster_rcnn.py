"""Faster R-CNN (Ren et al. 2015): one meta-architecture, three families, wired explicitly.

* ``faster_rcnn_c4`` (the paper's ResNet detector): res1-res4 trunk at stride 16, RPN on
  res4, 14x14 RoI pooling, res5 per RoI (the backbone's own ``layer4``), average pool.
* ``faster_rcnn_vgg``: RPN and 7x7 RoI pooling on conv5_3, VGG-16's fc6/fc7 as box head.
* ``faster_rcnn_fpn``: ResNet + FPN, five anchor levels, multi-level RoIAlign 7x7 (the rules
  of ``MultiScaleRoIAlign``), two 1024-d fc layers: torchvision's ``fasterrcnn_resnet50_fpn``.

The module tree is ``backbone`` (the ResNet / VGG trunk with torchvision's names), ``neck``
(FPN or None), ``rpn`` and ``roi_heads``; C4's res5 and VGG's fc6/fc7 run per RoI and live
in ``roi_heads.box_head``, as in Detectron2. ``trunk_keys`` records where each parameter of
the full classification network went, so ImageNet weights and ``pretrain_cls.py``
checkpoints load with no renaming by the user (``detres.modeling.weights``). Builders build;
weights are loaded by ``detres.modeling.weights.load_pretrained``.

Explicit methods: ``losses(images, targets)`` (also ``forward``, for DDP), ``inference(images,
image_sizes)`` on a loader batch and ``predict(list of images)`` on raw images; both run the
one preprocessing path of :mod:`detres.preprocess`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detres.config import Config, ConfigError, ModelCfg
from detres.modeling.anchors import AnchorGenerator
from detres.modeling.backbones import Backbone, ShapeSpec, build_backbone
from detres.modeling.backbones.fpn import FPN
from detres.modeling.box_ops import image_sizes_tensor, nonempty, rois_from_flat, split_by_image
from detres.modeling.roi_heads import (
    ContextPredictor,
    FastRCNNPredictor,
    MultiLevelPooler,
    Res5Head,
    ROIHeads,
    SingleLevelPooler,
    TwoMLPHead,
    VGGFCHead,
)
from detres.modeling.rpn import RPN
from detres.preprocess import boxes_to_original, preprocess_images

ARCHS = ("faster_rcnn_c4", "faster_rcnn_vgg", "faster_rcnn_fpn")


def _sizes(image_sizes: Sequence[Any] | Tensor) -> list[tuple[int, int]]:
    return [(int(s[0]), int(s[1])) for s in image_sizes]


class RawImagePredictor:
    """``predict`` and ``to_original``, the raw-image interface that :class:`FasterRCNN` and an
    exported detector (``detres.export.OnnxDetector``) share, written once on top of what each
    provides: ``preprocess`` (raw images -> padded batch, resized sizes), ``inference`` (a
    batch -> detections in resized pixels, labels 1..K), ``category_ids`` and ``drop_empty``."""

    category_ids: list[int]
    drop_empty: bool

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detections on raw images: a list of RGB ``(3, H, W)`` tensors (uint8, or float in
        [0, 1]) of any sizes, resized and padded as the test loader does. Boxes come back in
        input-image pixels, labels as dataset category ids (``self.category_ids``)."""
        if len(images) == 0:
            return []
        batch, sizes = self.preprocess(images)  # type: ignore[attr-defined]
        dets = self.inference(batch, sizes)  # type: ignore[attr-defined]
        out = []
        for det, img, size in zip(dets, images, sizes, strict=True):
            det = self.to_original(det, size, (int(img.shape[-2]), int(img.shape[-1])))
            ids = torch.tensor(self.category_ids, device=det["labels"].device)
            det["labels"] = ids[det["labels"] - 1]
            out.append(det)
        return out

    def to_original(self, det: dict[str, Tensor], resized: tuple[int, int],
                    original: tuple[int, int]) -> dict[str, Tensor]:
        """One image's detections from resized-image to original-image pixels (``tools/eval.py``
        and ``predict`` alike); with ``drop_empty`` (Detectron2's ``detector_postprocess``) the
        boxes the rescale left empty go."""
        boxes = boxes_to_original(det["boxes"], resized, original)
        det = {**det, "boxes": boxes}
        if self.drop_empty:
            keep = nonempty(boxes, 0.0, strict=True)
            det = {k: v[keep] for k, v in det.items()}
        return det


class FasterRCNN(nn.Module, RawImagePredictor):
    """Backbone (+ neck) -> RPN -> ROI heads. Images enter as RGB floats in [0, 1]."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        neck: nn.Module | None,
        backbone_features: list[str],
        rpn: RPN,
        roi_heads: ROIHeads,
        num_classes: int,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        min_size_test: int = 800,
        max_size_test: int = 1333,
        size_divisibility: int = 32,
        resize_rule: str = "torchvision",
        trunk_keys: dict[str, str] | None = None,
        trunk_head: str = "fc",
        input_format: str = "RGB",
        pixel_range: float = 1.0,
        drop_empty: bool = False,
    ) -> None:
        super().__init__()
        self.backbone, self.neck, self.rpn, self.roi_heads = backbone, neck, rpn, roi_heads
        self.backbone_features = backbone_features
        self.num_classes = num_classes
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.min_size_test, self.max_size_test = min_size_test, max_size_test
        self.size_divisibility = size_divisibility
        self.resize_rule = resize_rule
        self.input_format, self.pixel_range = input_format, float(pixel_range)
        #: drop detections left empty by the final rescale (Detectron2's detector_postprocess)
        self.drop_empty = drop_empty
        #: classification-network key -> this model's key, for every trunk parameter/buffer
        self.trunk_keys = dict(trunk_keys or {})
        #: the classification head's name in a classifier's state dict (not in a detector)
        self.trunk_head = trunk_head
        self.class_names: list[str] = [f"class_{i}" for i in range(1, num_classes + 1)]
        #: the config's ``model.arch`` and ``model.backbone.name`` (set by ``build_detector``)
        self.arch, self.backbone_name = "", ""
        self.category_ids: list[int] = list(range(1, num_classes + 1))

    def set_classes(self, class_names: Sequence[str], category_ids: Sequence[int]) -> None:
        """Names and dataset category ids of labels 1..K (what ``predict`` reports)."""
        if len(class_names) != self.num_classes or len(category_ids) != self.num_classes:
            raise ValueError(
                f"model has {self.num_classes} classes but got {len(class_names)} class_names "
                f"and {len(category_ids)} category_ids"
            )
        self.class_names, self.category_ids = list(class_names), [int(c) for c in category_ids]

    # ------------------------------------------------------------------------ pieces

    def input_spec(self) -> dict[str, Any]:
        """What the network expects of its input (recorded in checkpoints)."""
        return {"format": self.input_format, "pixel_range": self.pixel_range,
                "pixel_mean": [float(v) for v in self.pixel_mean.flatten()],
                "pixel_std": [float(v) for v in self.pixel_std.flatten()]}

    def normalize(self, images: Tensor, image_sizes: list[tuple[int, int]] | Tensor) -> Tensor:
        """RGB images in [0, 1] (a loader batch) -> the network's input: channels reversed for
        a BGR network, scaled to ``pixel_range``, ``(x - mean) / std``; the bottom/right
        padding of each image kept at zero."""
        if self.input_format == "BGR":
            images = images.flip(1)
        if self.pixel_range != 1.0:
            images = images * self.pixel_range
        x = (images - self.pixel_mean) / self.pixel_std
        sizes = image_sizes_tensor(image_sizes, x.device)
        h, w = sizes[:, 0], sizes[:, 1]
        ys = torch.arange(x.shape[-2], device=x.device)
        xs = torch.arange(x.shape[-1], device=x.device)
        inside = (ys[None, :, None] < h[:, None, None]) & (xs[None, None, :] < w[:, None, None])
        return x * inside[:, None].to(x.dtype)  # (N, H, W) -> (N, 1, H, W)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Backbone stages (and FPN levels) from normalized images ``(N, 3, H, W)``."""
        feats = self.backbone.forward_features(x, self.backbone_features)
        return dict(self.neck(feats)) if self.neck is not None else feats

    def _check_targets(self, images: Tensor, targets: list[dict[str, Any]]) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        if len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            for key in ("gt_boxes", "gt_classes", "image_size"):
                if key not in t:
                    raise KeyError(f"targets[{i}] has no {key!r} (keys: {sorted(t)})")
            b, c = t["gt_boxes"], t["gt_classes"]
            if b.dim() != 2 or b.shape[1] != 4 or c.shape != (b.shape[0],):
                raise ValueError(
                    f"targets[{i}]: gt_boxes must be (M, 4) and gt_classes (M,), got "
                    f"{tuple(b.shape)} and {tuple(c.shape)}"
                )
        classes = torch.cat([t["gt_classes"].reshape(-1) for t in targets])
        if classes.numel() and (int(classes.min()) < 1 or int(classes.max()) > self.num_classes):
            raise ValueError(
                f"targets: gt_classes must be in 1..{self.num_classes} "
                f"(model.num_classes), got values in [{int(classes.min())}, {int(classes.max())}]"
            )

    # ------------------------------------------------------------------------ API

    def losses(self, images: Tensor, targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Training losses on a loader batch: ``loss_rpn_cls``, ``loss_rpn_box``, ``loss_cls``,
        ``loss_box``. Uses the train-time RPN top-k; BN/dropout follow ``self.training``."""
        self._check_targets(images, targets)
        sizes = _sizes([t["image_size"] for t in targets])
        feats = self.features(self.normalize(images, sizes))
        gt_boxes = [t["gt_boxes"].to(images.device, torch.float32) for t in targets]
        gt_classes = [t["gt_classes"].to(images.device, torch.int64) for t in targets]
        out = self.rpn([feats[k] for k in self.rpn_features], tuple(images.shape[-2:]))
        losses = self.rpn.losses(out, gt_boxes)
        proposals = self.rpn.proposals(out, sizes, training=True)
        losses.update(self.roi_heads.losses(feats, proposals, gt_boxes, gt_classes, sizes))
        return losses

    def forward(self, images: Tensor, targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Same as :meth:`losses` (so that DDP sees the training computation)."""
        return self.losses(images, targets)

    @property
    def channels_last(self) -> bool:
        """Whether the trunk's weights are channels-last (then so is its input)."""
        w = next(self.backbone.parameters())
        return w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) \
            and not w.is_contiguous()

    @property
    def rpn_features(self) -> list[str]:
        if self.neck is not None:
            return list(self.neck.output_shape())  # type: ignore[operator]
        return self.backbone_features

    @torch.no_grad()
    def _detect(self, x: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        modes = [(m, m.training) for m in self.modules()]  # eval mode, then restore each
        self.eval()
        try:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            boxes, scores, labels, img = self.detect(x, sizes)
        finally:
            for m, mode in modes:
                m.training = mode
        n = len(sizes)
        parts = [split_by_image(t, img, n) for t in (boxes, scores, labels)]
        return [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in zip(*parts, strict=True)]

    @torch.no_grad()
    def detect(self, x: Tensor, image_sizes: list[tuple[int, int]] | Tensor, *,
               probes: bool = False) -> tuple[Tensor, ...]:
        """Detections on a normalized batch, flat (what ``detres.export`` exports): ``boxes
        (D, 4)`` in resized-image pixels, ``scores (D,)``, ``labels (D,)`` in 1..K and the
        ``(D,)`` image index, grouped by image and by decreasing score within each.

        ``probes``: then also the raw tensors before each selection, for the export check:
        the RPN's ``objectness_logits (N, T)`` and ``pred_deltas (N, T, 4)`` over all T
        anchors, the ``rois (R, 5)`` it proposed, and the box head's ``pred_class_logits
        (R, K + 1)`` and ``pred_deltas (R, 4K)`` on them (no box refinement)."""
        feats = self.features(x)
        out = self.rpn([feats[k] for k in self.rpn_features], tuple(x.shape[-2:]))
        boxes, image_index = self.rpn.select_proposals(out, image_sizes, training=False)
        rois = rois_from_flat(boxes, image_index)
        if not probes:
            return self.roi_heads.detect(feats, rois, image_sizes, x.shape[0])
        if self.roi_heads.box_refinement:
            raise ValueError("detect(probes=True) has no box refinement")
        logits, deltas = self.roi_heads.predict_logits(feats, rois, image_sizes)
        det = self.roi_heads.detect(feats, rois, image_sizes, x.shape[0],
                                    logits_fn=lambda r: (logits, deltas))
        return (*det, torch.cat(out.objectness_logits, dim=1), torch.cat(out.pred_deltas, dim=1),
                rois, logits, deltas)

    def inference(
        self, images: Tensor, image_sizes: Sequence[Any] | Tensor
    ) -> list[dict[str, Tensor]]:
        """``detections`` per image of a loader batch (eval mode, no grad): ``boxes`` in
        resized-image pixels, ``scores``, ``labels`` in 1..K."""
        sizes = _sizes(image_sizes)
        return self._detect(self.normalize(images, sizes), sizes)

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Raw images -> the padded batch and the resized sizes (:mod:`detres.preprocess`:
        the loaders' resize rule, then zero padding to ``size_divisibility``)."""
        return preprocess_images(images, short=self.min_size_test, max_size=self.max_size_test,
                                 rule=self.resize_rule, size_divisibility=self.size_divisibility,
                                 device=self.pixel_mean.device)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device


# ---------------------------------------------------------------------------- build


def _need(m: ModelCfg, shapes: dict[str, ShapeSpec], *stages: str) -> None:
    missing = [s for s in stages if s not in shapes]
    if missing:
        raise ConfigError(
            f"key 'model.backbone.name': {m.backbone.name!r} has no stage(s) {missing} "
            f"needed by {m.arch} (stages: {list(shapes)})"
        )


# A family builder returns the pieces of its detector: ``neck``, the backbone ``features``
# it reads, ``rpn_channels``, ``pooler``, ``box_head`` and the box head's output ``head_dim``.


def _c4(m: ModelCfg, backbone: Backbone) -> dict[str, Any]:
    """The paper's C4: RPN and 14x14 pooling on res4; res5 (split off the trunk) per RoI."""
    shapes = backbone.output_shape()
    _need(m, shapes, "res4", "res5")
    pooler = SingleLevelPooler(feature="res4", kind=m.roi_heads.pooler,
                               output_size=m.roi_heads.pooler_resolution,
                               stride=shapes["res4"].stride,
                               sampling_ratio=m.roi_heads.sampling_ratio,
                               aligned=_aligned(m, True))
    return {"neck": None, "features": ["res4"], "rpn_channels": shapes["res4"].channels,
            "pooler": pooler, "box_head": Res5Head(backbone.split_last_stage()),
            "head_dim": shapes["res5"].channels}


def _vgg(m: ModelCfg, backbone: Backbone) -> dict[str, Any]:
    """VGG-16: RPN and 7x7 pooling on conv5_3; fc6/fc7 (split off the classifier) per RoI."""
    shapes = backbone.output_shape()
    _need(m, shapes, "conv5_3")
    if not hasattr(backbone, "split_fc_head"):
        raise ConfigError(f"key 'model.backbone.name': {m.backbone.name!r} has no fc6/fc7 head")
    if m.roi_heads.pooler_resolution != 7:
        raise ConfigError("key 'model.roi_heads.pooler_resolution': VGG-16's fc6 takes 7x7 "
                          f"RoIs, got {m.roi_heads.pooler_resolution}")
    pooler = SingleLevelPooler(feature="conv5_3", kind=m.roi_heads.pooler, output_size=7,
                               stride=shapes["conv5_3"].stride,
                               sampling_ratio=m.roi_heads.sampling_ratio,
                               aligned=_aligned(m, True))
    return {"neck": None, "features": ["conv5_3"], "rpn_channels": shapes["conv5_3"].channels,
            "pooler": pooler, "box_head": VGGFCHead(backbone.split_fc_head()),  # type: ignore[operator]
            "head_dim": int(backbone.num_features)}


def _fpn(m: ModelCfg, backbone: Backbone) -> dict[str, Any]:
    """ResNet + FPN: five RPN levels, multi-level RoIAlign on p2..p5, two fc layers."""
    shapes = backbone.output_shape()
    _need(m, shapes, *m.fpn.in_features)
    if m.roi_heads.pooler != "ROIAlign":
        raise ConfigError(
            f"key 'model.roi_heads.pooler': FPN pools with ROIAlign, got {m.roi_heads.pooler!r}"
        )
    feats = list(m.fpn.in_features)
    neck = FPN(input_shapes={k: shapes[k] for k in feats}, out_channels=m.fpn.out_channels)
    levels = list(neck.output_shape().items())[: len(feats)]  # p2..p5 (p6 is RPN-only)
    pooler = MultiLevelPooler(features=[name for name, _ in levels],
                              strides=[shape.stride for _, shape in levels],
                              output_size=m.roi_heads.pooler_resolution,
                              sampling_ratio=m.roi_heads.sampling_ratio,
                              aligned=_aligned(m, m.rules == "detectron2"),
                              level_rule=m.rules)
    box_head = TwoMLPHead(in_features=m.fpn.out_channels * m.roi_heads.pooler_resolution**2,
                          fc_dim=m.roi_heads.fc_dim)
    return {"neck": neck, "features": feats, "rpn_channels": m.fpn.out_channels,
            "pooler": pooler, "box_head": box_head, "head_dim": m.roi_heads.fc_dim,
            "rpn_strides": [s.stride for s in neck.output_shape().values()]}


def _aligned(m: ModelCfg, default: bool) -> bool:
    return default if m.roi_heads.pooler_aligned is None else bool(m.roi_heads.pooler_aligned)


FAMILIES: dict[str, Callable[[ModelCfg, Backbone], dict[str, Any]]] = {
    "faster_rcnn_c4": _c4, "faster_rcnn_vgg": _vgg, "faster_rcnn_fpn": _fpn,
}
ARCHS = tuple(FAMILIES)


def build_rpn(m: ModelCfg, in_channels: int, strides: list[int]) -> RPN:
    r, d2 = m.rpn, m.rules == "detectron2"
    return RPN(in_channels=in_channels,
               anchor_generator=AnchorGenerator(sizes=m.anchors.sizes,
                                                aspect_ratios=m.anchors.aspect_ratios,
                                                round_anchors=not d2,
                                                strides=strides if d2 else None),
               pre_nms_topk_train=r.pre_nms_topk_train, post_nms_topk_train=r.post_nms_topk_train,
               pre_nms_topk_test=r.pre_nms_topk_test, post_nms_topk_test=r.post_nms_topk_test,
               nms_thresh=r.nms_thresh, min_box_size=r.min_box_size,
               batch_size_per_image=r.batch_size_per_image,
               positive_fraction=r.positive_fraction, fg_iou_thresh=r.fg_iou_thresh,
               bg_iou_thresh=r.bg_iou_thresh, bbox_reg_weights=r.bbox_reg_weights,
               smooth_l1_beta=r.smooth_l1_beta, loss_weight=r.loss_weight,
               strict_min_size=d2, rank_by_logits=d2, normalize_by_batch_size=d2)


def build_roi_heads(m: ModelCfg, pooler: nn.Module, box_head: nn.Module,
                    head_dim: int) -> ROIHeads:
    rh = m.roi_heads
    return ROIHeads(pooler=pooler, box_head=box_head,
                    box_predictor=FastRCNNPredictor(in_features=head_dim,
                                                    num_classes=m.num_classes),
                    num_classes=m.num_classes, batch_size_per_image=rh.batch_size_per_image,
                    positive_fraction=rh.positive_fraction, fg_iou_thresh=rh.fg_iou_thresh,
                    bg_iou_thresh=rh.bg_iou_thresh, bg_iou_thresh_lo=rh.bg_iou_thresh_lo,
                    bbox_reg_weights=rh.bbox_reg_weights, smooth_l1_beta=rh.smooth_l1_beta,
                    score_thresh_test=rh.score_thresh_test, nms_thresh_test=rh.nms_thresh_test,
                    detections_per_image=rh.detections_per_image,
                    min_test_box_size=None if m.rules == "detectron2" else 1e-2,
                    box_refinement=rh.box_refinement, refine_nms_thresh=rh.refine_nms_thresh,
                    box_voting_thresh=rh.box_voting_thresh,
                    context_predictor=ContextPredictor(in_features=head_dim,
                                                       num_classes=m.num_classes)
                    if rh.global_context else None)


def build_detector(cfg: Config) -> FasterRCNN:
    """The detector of ``cfg.model`` (arch, backbone, anchors, rpn, roi_heads, fpn, input),
    randomly initialized; :func:`detres.modeling.weights.load_pretrained` loads weights."""
    m = cfg.model
    if m.arch not in FAMILIES:
        raise ConfigError(f"key 'model.arch': {m.arch!r} is not a detector, one of {list(ARCHS)}")
    if m.num_classes < 1:
        raise ConfigError(
            f"key 'model.num_classes': must be >= 1 (foreground classes), got {m.num_classes}"
        )
    backbone = build_backbone(m.backbone, num_classes=0)
    # where each tensor of the whole classification network lives before the family takes
    # its share (res5, fc6/fc7): the weight loader's classifier -> detector key table
    whole = {id(t): k for k, t in backbone.state_dict(keep_vars=True).items()}
    trunk_head = backbone.head_name
    shapes_before = backbone.output_shape()  # before a family splits the last stage off
    p = FAMILIES[m.arch](m, backbone)
    neck = p["neck"]
    num_levels = len(neck.output_shape()) if isinstance(neck, FPN) else 1
    if len(m.anchors.sizes) != num_levels:
        raise ConfigError(
            f"key 'model.anchors.sizes': {m.arch} has {num_levels} RPN level(s) but "
            f"{len(m.anchors.sizes)} size list(s) were given: {m.anchors.sizes}"
        )
    i = m.input
    strides = p.get("rpn_strides") or [shapes_before[f].stride for f in p["features"]]
    model = FasterRCNN(
        backbone=backbone, neck=neck, backbone_features=p["features"],
        rpn=build_rpn(m, p["rpn_channels"], strides),
        roi_heads=build_roi_heads(m, p["pooler"], p["box_head"], p["head_dim"]),
        num_classes=m.num_classes, pixel_mean=i.pixel_mean, pixel_std=i.pixel_std,
        min_size_test=i.min_size_test, max_size_test=i.max_size_test,
        size_divisibility=i.size_divisibility, resize_rule=i.resize_rule, trunk_head=trunk_head,
        input_format=i.format, pixel_range=i.pixel_range, drop_empty=m.rules == "detectron2",
    )
    model.trunk_keys = {whole[id(t)]: k for k, t in model.state_dict(keep_vars=True).items()
                        if id(t) in whole}
    model.arch, model.backbone_name = m.arch, m.backbone.name  # what an export records
    return model
