"""The backbone registry: every network users can pick by name, classifier and detector trunk.

Names and defaults (``stride_in_1x1=True`` is the paper's MSRA ResNet; pass
``stride_in_1x1=False`` for torchvision's v1.5, e.g. to load its weight files and get its
logits):

* ImageNet: ``resnet18/34/50/101/152``, ``plain18/34``, ``preact_resnet18/34/50/101/152``,
  ``vgg16`` (input 224, 1000 classes, base width 64);
* CIFAR (Table 6 of the paper): ``resnet20/32/44/56/110/1202`` (option A shortcuts),
  ``plain20/32/44/56/110``, ``preact_resnet110/164`` (input 32, 10 classes, base width 16).
"""

from __future__ import annotations

import inspect
from typing import Any

from detres.modeling.backbones import cifar_resnet, preact_resnet, resnet, vgg
from detres.modeling.backbones.base import Backbone, ShapeSpec, convert_frozen_batchnorm
from detres.registry import Registry

BACKBONES = Registry("backbone")

# ImageNet ResNets (He et al. 2015, Table 1) and their plain counterparts.
BACKBONES.add("resnet18", resnet.resnet18)
BACKBONES.add("resnet34", resnet.resnet34)
BACKBONES.add("resnet50", resnet.resnet50)
BACKBONES.add("resnet101", resnet.resnet101)
BACKBONES.add("resnet152", resnet.resnet152)
BACKBONES.add("plain18", resnet.plain18)
BACKBONES.add("plain34", resnet.plain34)
# CIFAR nets of 6n+2 layers (Sec. 4.2, Table 6).
BACKBONES.add("resnet20", cifar_resnet.resnet20)
BACKBONES.add("resnet32", cifar_resnet.resnet32)
BACKBONES.add("resnet44", cifar_resnet.resnet44)
BACKBONES.add("resnet56", cifar_resnet.resnet56)
BACKBONES.add("resnet110", cifar_resnet.resnet110)
BACKBONES.add("resnet1202", cifar_resnet.resnet1202)
BACKBONES.add("plain20", cifar_resnet.plain20)
BACKBONES.add("plain32", cifar_resnet.plain32)
BACKBONES.add("plain44", cifar_resnet.plain44)
BACKBONES.add("plain56", cifar_resnet.plain56)
BACKBONES.add("plain110", cifar_resnet.plain110)
# Pre-activation ResNets (He et al. 2016, "Identity Mappings").
BACKBONES.add("preact_resnet18", preact_resnet.preact_resnet18)
BACKBONES.add("preact_resnet34", preact_resnet.preact_resnet34)
BACKBONES.add("preact_resnet50", preact_resnet.preact_resnet50)
BACKBONES.add("preact_resnet101", preact_resnet.preact_resnet101)
BACKBONES.add("preact_resnet152", preact_resnet.preact_resnet152)
BACKBONES.add("preact_resnet110", preact_resnet.preact_resnet110)
BACKBONES.add("preact_resnet164", preact_resnet.preact_resnet164)
# VGG-16 (the paper's detection baseline).
BACKBONES.add("vgg16", vgg.vgg16)


def builder_options(name: str) -> dict[str, Any]:
    """The keyword options of backbone ``name`` with their defaults."""
    sig = inspect.signature(BACKBONES.get(name))
    return {k: p.default for k, p in sig.parameters.items()}


def build_by_name(name: str, **options: Any) -> Backbone:
    """``BACKBONES.build(name, **options)``, with an error naming the options ``name`` takes
    when one does not fit."""
    known = builder_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"backbone {name!r} takes no option(s) {unknown}; its options: {sorted(known)}"
        )
    model = BACKBONES.build(name, **options)
    assert isinstance(model, Backbone)
    return model


__all__ = [
    "BACKBONES",
    "Backbone",
    "ShapeSpec",
    "build_by_name",
    "builder_options",
    "convert_frozen_batchnorm",
]
