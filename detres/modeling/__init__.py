"""Models: classifiers and detector trunks built by name from the backbone registry.

* ``build_classifier("resnet50", num_classes=1000, stride_in_1x1=False)``: a classifier
  (a :class:`Backbone` whose ``forward`` returns logits); overrides go to the builder.
* ``build_backbone(cfg.model.backbone, num_classes=0)``: a trunk as configured, with its
  weights loaded and its first stages frozen.
* ``list_backbones()``: the registered names.
"""

from __future__ import annotations

from typing import Any

from detres.config import BackboneCfg
from detres.modeling.backbones import BACKBONES, Backbone, ShapeSpec, build_by_name
from detres.modeling.backbones.weights import load_weights
from detres.modeling.faster_rcnn import build_detector


def list_backbones() -> list[str]:
    """Every registered backbone name, sorted."""
    return BACKBONES.names()


def build_classifier(name: str, num_classes: int = 1000, **overrides: Any) -> Backbone:
    """Backbone ``name`` with a ``num_classes``-way head (``0``: no head; ``forward`` then
    returns pooled features). ``overrides`` are the builder's keyword options, e.g.
    ``stride_in_1x1=False`` (torchvision v1.5), ``shortcut="A"``, ``width_per_group=16``."""
    return build_by_name(name, num_classes=num_classes, **overrides)


def build_backbone(cfg_backbone: BackboneCfg, num_classes: int = 0) -> Backbone:
    """The backbone described by a :class:`detres.config.BackboneCfg`: built (options left at
    ``None`` keep the registry entry's default), then ``weights`` loaded, then the first
    ``freeze_at`` stages frozen (their BN layers become FrozenBatchNorm2d)."""
    c = cfg_backbone
    options: dict[str, Any] = {"num_classes": num_classes}
    # Only options that differ from "keep the default" are passed, so a backbone without
    # such a switch (e.g. VGG-16 has no shortcuts) is only an error when one is asked for.
    if c.stride_in_1x1 is not None:
        options["stride_in_1x1"] = c.stride_in_1x1
    if c.shortcut is not None:
        options["shortcut"] = c.shortcut
    if c.width_per_group is not None:
        options["width_per_group"] = c.width_per_group
    if c.zero_init_residual:
        options["zero_init_residual"] = True
    if c.norm != "BN":
        options["norm"] = c.norm
    model = build_by_name(c.name, **options)
    if c.weights:
        load_weights(model, c.weights)
    if c.freeze_at:
        model.freeze(c.freeze_at)
    return model


__all__ = [
    "BACKBONES",
    "Backbone",
    "ShapeSpec",
    "build_backbone",
    "build_classifier",
    "build_detector",
    "list_backbones",
    "load_weights",
]
