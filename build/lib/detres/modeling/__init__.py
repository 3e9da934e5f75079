"""Models: classifiers and detectors built by name from the backbone registry.

* ``build_classifier("resnet50", num_classes=1000, stride_in_1x1=False)``: a classifier
  (a :class:`Backbone` whose ``forward`` returns logits); overrides go to the builder.
* ``build_backbone(cfg.model.backbone, num_classes=0)``: a trunk as configured, its first
  stages frozen.
* ``build_detector(cfg)``: a Faster R-CNN of ``cfg.model``.
* ``load_pretrained(model, cfg.model)`` / ``load_weights(model, path)``: weights, the one
  explicit step (builders read no files); see :mod:`detres.modeling.weights`.
* ``list_backbones()``: the registered names.
"""

from __future__ import annotations

from typing import Any

from detres.modeling.backbones import (
    BACKBONES,
    Backbone,
    ShapeSpec,
    build_backbone,
    build_by_name,
)
from detres.modeling.faster_rcnn import FasterRCNN, build_detector
from detres.modeling.weights import (
    WeightsError,
    load_pretrained,
    load_weights,
    read_weights,
    resolve_weights,
)


def list_backbones() -> list[str]:
    """Every registered backbone name, sorted."""
    return BACKBONES.names()


def build_classifier(name: str, num_classes: int = 1000, **overrides: Any) -> Backbone:
    """Backbone ``name`` with a ``num_classes``-way head (``0``: no head; ``forward`` then
    returns pooled features). ``overrides`` are the builder's keyword options, e.g.
    ``stride_in_1x1=False`` (torchvision v1.5), ``shortcut="A"``, ``width_per_group=16``."""
    return build_by_name(name, num_classes=num_classes, **overrides)


__all__ = [
    "BACKBONES",
    "Backbone",
    "FasterRCNN",
    "ShapeSpec",
    "WeightsError",
    "build_backbone",
    "build_classifier",
    "build_detector",
    "list_backbones",
    "load_pretrained",
    "load_weights",
    "read_weights",
    "resolve_weights",
]
