"""Inference on several versions of each image: test-time augmentation and the paper's
multi-scale testing. Both start from the raw image (they resize it themselves) and return
detections in its pixels.

* **TTA** (``evaluation.tta``), Detectron2's ``GeneralizedRCNNWithTTA`` for boxes: for each
  shorter side in ``min_sizes`` the image is resized by the model's rule (and, with ``flip``,
  also flipped after the resize); the detector runs on each version as usual (score
  threshold, NMS, top-k); every version's boxes are mapped back to the original image
  (un-flipped in the resized frame, then scaled), clipped, and all of them NMSed per class at
  ``model.roi_heads.nms_thresh_test``, keeping the ``detections_per_image`` best. A version
  and its flip have one size and run as one batch.
* **Multi-scale testing** (``evaluation.multiscale``), He et al. 2015 appendix A after
  SPPnet and Fast R-CNN: backbone features on an image pyramid (shorter sides ``scales``);
  proposals from the model's test scale (or from every scale, merged by NMS, with
  ``pyramid_proposals``); each RoI is pooled at the two adjacent scales whose scaled RoI side
  (``sqrt`` of its area) brackets ``target_size`` (the end pair when none does), each pooled
  feature runs the box head, and the two head features are merged by maxout (elementwise
  max) before the predictor. Box refinement and global context apply on top, per scale.

Exported graphs do not carry either (``tools/export.py`` refuses them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detres.config import ConfigError, EvaluationCfg, MultiScaleCfg, TTACfg
from detres.modeling.box_ops import batched_nms, nonempty, rois_from_flat
from detres.modeling.faster_rcnn import FasterRCNN, RawImagePredictor
from detres.preprocess import boxes_to_original, pad_batch, resize_image, resized_hw


def scale_pairs(sides: Tensor, target: float) -> tuple[Tensor, Tensor]:
    """For RoI sides ``(R, S)`` at S increasing scales: the pair ``(j, j + 1)`` of adjacent
    scales with ``side_j < target <= side_{j+1}``, clamped to the first or last pair when the
    target is outside; with one scale, ``(0, 0)``."""
    s = sides.shape[1]
    if s == 1:
        zero = torch.zeros(len(sides), dtype=torch.long, device=sides.device)
        return zero, zero
    first_at_or_above = (sides < target).sum(dim=1)  # sides increase with the scale
    lo = (first_at_or_above - 1).clamp(0, s - 2)
    return lo, lo + 1


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes of a horizontally flipped ``width``-wide image, in the unflipped image."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def with_test_time(model: FasterRCNN, evaluation: EvaluationCfg) -> FasterRCNN | TestTimeDetector:
    """``model`` wrapped for ``evaluation``'s test-time switch (``tta`` or ``multiscale``)
    when one is on, else ``model`` itself."""
    if evaluation.tta.enabled or evaluation.multiscale.enabled:
        return TestTimeDetector(model, tta=evaluation.tta, multiscale=evaluation.multiscale)
    return model


class TestTimeDetector(RawImagePredictor):
    """A :class:`FasterRCNN` with TTA or multi-scale testing: ``predict`` on raw images (the
    :class:`RawImagePredictor` interface) and ``detect_original`` (labels 1..K)."""

    __test__ = False  # not a pytest class

    def __init__(self, model: FasterRCNN, *, tta: TTACfg | None = None,
                 multiscale: MultiScaleCfg | None = None) -> None:
        tta = tta if tta is not None and tta.enabled else None
        multiscale = multiscale if multiscale is not None and multiscale.enabled else None
        if tta is not None and multiscale is not None:
            raise ConfigError("keys 'evaluation.tta.enabled' and 'evaluation.multiscale."
                              "enabled': choose one (TTA already runs several scales)")
        if tta is None and multiscale is None:
            raise ConfigError("TestTimeDetector: neither evaluation.tta nor "
                              "evaluation.multiscale is enabled")
        for key, sizes in (("evaluation.tta.min_sizes", tta.min_sizes if tta else [1]),
                           ("evaluation.multiscale.scales",
                            multiscale.scales if multiscale else [1])):
            if not sizes or any(int(s) <= 0 for s in sizes):
                raise ConfigError(f"key {key!r}: give one or more positive sizes, got {sizes}")
        self.model, self.tta, self.multiscale = model, tta, multiscale

    # the raw-image interface of the wrapped model
    @property
    def category_ids(self) -> list[int]:  # type: ignore[override]
        return self.model.category_ids

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def drop_empty(self) -> bool:  # type: ignore[override]
        return self.model.drop_empty

    @property
    def device(self) -> torch.device:
        return self.model.device

    def eval(self) -> TestTimeDetector:
        self.model.eval()
        return self

    def describe(self) -> str:
        if self.tta is not None:
            return (f"TTA: shorter sides {list(self.tta.min_sizes)} (max {self.tta.max_size})"
                    f"{' + flip' if self.tta.flip else ''}")
        ms = self.multiscale
        assert ms is not None
        return (f"multi-scale testing: scales {list(ms.scales)} (max {ms.max_size}), maxout "
                f"around {ms.target_size} px, proposals "
                f"{'from every scale' if ms.pyramid_proposals else 'at the test scale'}")

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detections on raw RGB ``(3, H, W)`` images (uint8, or float in [0, 1]): boxes in
        their pixels, labels as dataset category ids."""
        out = []
        ids = torch.tensor(self.category_ids)
        for det in self.detect_original(images):
            det["labels"] = ids.to(det["labels"].device)[det["labels"] - 1]
            out.append(det)
        return out

    @torch.no_grad()
    def detect_original(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Per image ``boxes`` in its pixels, ``scores``, ``labels`` in 1..K."""
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            run = self._tta if self.tta is not None else self._multiscale
            return [run(img.to(self.device)) for img in images]
        finally:
            for m, mode in modes:
                m.training = mode

    # ------------------------------------------------------------------------ TTA

    def _tta(self, image: Tensor) -> dict[str, Tensor]:
        m, t = self.model, self.tta
        assert t is not None
        h, w = int(image.shape[-2]), int(image.shape[-1])
        boxes, scores, labels = [], [], []
        for short in t.min_sizes:
            hw = resized_hw(h, w, short=int(short), max_size=t.max_size, rule=m.resize_rule)
            x = resize_image(image, hw, m.resize_rule)
            versions = [x, x.flip(-1)] if t.flip else [x]
            batch = pad_batch(versions, m.size_divisibility)
            for flipped, det in zip((False, True), m.inference(batch, [hw] * len(versions)),
                                    strict=False):
                b = flip_boxes(det["boxes"].float(), hw[1]) if flipped else det["boxes"].float()
                boxes.append(boxes_to_original(b, hw, (h, w)))
                scores.append(det["scores"].float())
                labels.append(det["labels"])
        return self._merge(torch.cat(boxes), torch.cat(scores), torch.cat(labels),
                           m.roi_heads.nms_thresh)

    def _merge(self, boxes: Tensor, scores: Tensor, labels: Tensor,
               nms_thresh: float) -> dict[str, Tensor]:
        keep = batched_nms(boxes, scores, labels, nms_thresh)[
            : self.model.roi_heads.detections_per_image]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    # ------------------------------------------------------------------ multi-scale

    def _multiscale(self, image: Tensor) -> dict[str, Tensor]:
        m, ms = self.model, self.multiscale
        assert ms is not None
        h, w = int(image.shape[-2]), int(image.shape[-1])
        rule = m.resize_rule
        hws = sorted({resized_hw(h, w, short=int(s), max_size=ms.max_size, rule=rule)
                      for s in ms.scales})  # increasing
        feats = [self._features(image, hw) for hw in hws]
        base = resized_hw(h, w, short=m.min_size_test, max_size=m.max_size_test, rule=rule)
        if ms.pyramid_proposals:
            props = [self._proposals(f, hw, (h, w)) for f, hw in zip(feats, hws, strict=True)]
            boxes = torch.cat([p[0] for p in props])
            scores = torch.cat([p[1] for p in props])
            keep = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long),
                               m.rpn.nms_thresh)[: m.rpn.topk[False][1]]
            boxes = boxes[keep]
        else:
            f = feats[hws.index(base)] if base in hws else self._features(image, base)
            boxes = self._proposals(f, base, (h, w))[0]
        # per scale: (sx, sy) from original to resized pixels
        ratios = torch.tensor([[hw[1] / w, hw[0] / h] for hw in hws], device=boxes.device)
        target = float(ms.target_size)

        def logits_fn(rois: Tensor) -> tuple[Tensor, Tensor]:
            b = rois[:, 1:].float()
            area = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0))
            sides = (area[:, None] * ratios[:, 0] * ratios[:, 1]).sqrt()  # (R, S)
            lo, hi = scale_pairs(sides, target)
            merged: Tensor | None = None
            for pick in (lo, hi):
                x: Tensor | None = None
                for i, (f, hw) in enumerate(zip(feats, hws, strict=True)):
                    sel = (pick == i).nonzero(as_tuple=True)[0]
                    if len(sel) == 0:
                        continue
                    scaled = b[sel] * ratios[i].repeat(2)
                    xi = m.roi_heads.box_features(f, rois_from_flat(scaled, rois[sel, 0].long()),
                                                  [hw])
                    if x is None:
                        x = xi.new_zeros((len(rois), xi.shape[1]))
                    x[sel] = xi
                assert x is not None
                merged = x if merged is None else torch.maximum(merged, x)  # maxout
            assert merged is not None
            return m.roi_heads.predict_from_features(merged)

        rois = rois_from_flat(boxes, torch.zeros(len(boxes), dtype=torch.long,
                                                 device=boxes.device))
        if len(rois) == 0:
            empty = boxes.new_zeros((0, 4))
            return {"boxes": empty, "scores": empty[:, 0],
                    "labels": torch.zeros(0, dtype=torch.long, device=boxes.device)}
        b, s, lb, _ = m.roi_heads.detect({}, rois, [(h, w)], 1, logits_fn=logits_fn)
        det = {"boxes": b, "scores": s, "labels": lb}
        if m.drop_empty:
            keep = nonempty(b, 0.0, strict=True)
            det = {k: v[keep] for k, v in det.items()}
        return det

    def _features(self, image: Tensor, hw: tuple[int, int]) -> dict[str, Tensor]:
        """Backbone (and FPN) features of ``image`` resized to ``hw``, as the model's own
        inference computes them (normalized after padding, in the trunk's memory format)."""
        m = self.model
        x = pad_batch([resize_image(image, hw, m.resize_rule)], m.size_divisibility)
        x = m.normalize(x, [hw])
        if m.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return m.features(x)

    def _proposals(self, feats: dict[str, Tensor], hw: tuple[int, int],
                   original: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The RPN's test-time proposals on one scale's features, in original pixels, and
        their ranking scores."""
        m = self.model
        d = max(int(m.size_divisibility), 1)
        padded_hw = (math.ceil(hw[0] / d) * d, math.ceil(hw[1] / d) * d)  # pad_batch's size
        out = m.rpn([feats[k] for k in m.rpn_features], padded_hw)
        boxes, _, scores = m.rpn.select_proposals(out, [hw], training=False, with_scores=True)
        return boxes_to_original(boxes, hw, original), scores
