"""The backbone registry: every network users can pick by name, classifier and detector trunk.

Names and defaults (``stride_in_1x1=True`` is the paper's MSRA ResNet; pass
``stride_in_1x1=False`` for torchvision's v1.5, e.g. to load its weight files and get its
logits):

* ImageNet: ``resnet18/34/50/101/152``, ``plain18/34``, ``preact_resnet18/34/50/101/152``,
  ``vgg16`` (input 224, 1000 classes, base width 64);
* CIFAR (Table 6 of the paper): ``resnet20/32/44/56/110/1202`` (option A shortcuts),
  ``plain20/32/44/56/110``, ``preact_resnet110/164`` (input 32, 10 classes, base width 16).

Every residual net is one row of :data:`RESNET_TABLE`; its builder takes the row's options
as keyword arguments (``builder_options(name)`` lists them with their defaults).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import nn

from detres.config import BackboneCfg
from detres.modeling.backbones import vgg
from detres.modeling.backbones.base import Backbone, ShapeSpec, convert_frozen_batchnorm
from detres.modeling.backbones.preact_resnet import PreActBasicBlock, PreActBottleneck, PreActResNet
from detres.modeling.backbones.resnet import BasicBlock, Bottleneck, ResNet
from detres.registry import Registry
from detres.utils.errors import OptionError

BACKBONES = Registry("backbone")


class ResNetSpec(NamedTuple):
    """One registered residual (or plain) network."""

    net: type[nn.Module]  # ResNet or PreActResNet
    block: type[nn.Module]
    layers: list[int]  # blocks per stage
    stem: str  # "imagenet" | "cifar"
    options: dict[str, Any]  # the builder's keyword options and their defaults
    doc: str


def _options(stem: str, kind: str) -> dict[str, Any]:
    """Builder options: ``kind`` is "resnet", "plain" (no shortcuts) or "preact"."""
    cifar = stem == "cifar"
    opts: dict[str, Any] = {"num_classes": 10 if cifar else 1000}
    if kind != "plain":
        opts["stride_in_1x1"] = True  # bottlenecks only; basic blocks accept and ignore it
        opts["shortcut"] = "A" if cifar and kind == "resnet" else "B"
    if kind == "resnet":
        opts["zero_init_residual"] = False
    opts["width_per_group"] = 16 if cifar else 64
    opts["norm"] = "BN"
    return opts


def _row(net: type[nn.Module], block: type[nn.Module], layers: list[int], stem: str,
         kind: str) -> ResNetSpec:
    depth = sum(layers) * (3 if block in (Bottleneck, PreActBottleneck) else 2) + 2
    what = {"resnet": "ResNet", "plain": "Plain", "preact": "Pre-activation ResNet"}[kind]
    doc = f"{what}-{depth} ({'CIFAR' if stem == 'cifar' else 'ImageNet'}, stages {layers})"
    return ResNetSpec(net, block, layers, stem, _options(stem, kind), doc)


# He et al. 2015 Table 1 (ImageNet) and Table 6 (CIFAR, 6n+2); He et al. 2016 (pre-activation).
RESNET_TABLE: dict[str, ResNetSpec] = {
    "resnet18": _row(ResNet, BasicBlock, [2, 2, 2, 2], "imagenet", "resnet"),
    "resnet34": _row(ResNet, BasicBlock, [3, 4, 6, 3], "imagenet", "resnet"),
    "resnet50": _row(ResNet, Bottleneck, [3, 4, 6, 3], "imagenet", "resnet"),
    "resnet101": _row(ResNet, Bottleneck, [3, 4, 23, 3], "imagenet", "resnet"),
    "resnet152": _row(ResNet, Bottleneck, [3, 8, 36, 3], "imagenet", "resnet"),
    "plain18": _row(ResNet, BasicBlock, [2, 2, 2, 2], "imagenet", "plain"),
    "plain34": _row(ResNet, BasicBlock, [3, 4, 6, 3], "imagenet", "plain"),
    **{f"resnet{6 * n + 2}": _row(ResNet, BasicBlock, [n] * 3, "cifar", "resnet")
       for n in (3, 5, 7, 9, 18, 200)},
    **{f"plain{6 * n + 2}": _row(ResNet, BasicBlock, [n] * 3, "cifar", "plain")
       for n in (3, 5, 7, 9, 18)},
    "preact_resnet18": _row(PreActResNet, PreActBasicBlock, [2, 2, 2, 2], "imagenet", "preact"),
    "preact_resnet34": _row(PreActResNet, PreActBasicBlock, [3, 4, 6, 3], "imagenet", "preact"),
    "preact_resnet50": _row(PreActResNet, PreActBottleneck, [3, 4, 6, 3], "imagenet", "preact"),
    "preact_resnet101": _row(PreActResNet, PreActBottleneck, [3, 4, 23, 3], "imagenet",
                             "preact"),
    "preact_resnet152": _row(PreActResNet, PreActBottleneck, [3, 8, 36, 3], "imagenet",
                             "preact"),
    "preact_resnet110": _row(PreActResNet, PreActBasicBlock, [18] * 3, "cifar", "preact"),
    "preact_resnet164": _row(PreActResNet, PreActBottleneck, [18] * 3, "cifar", "preact"),
}


def _resnet_builder(name: str, spec: ResNetSpec) -> Callable[..., Backbone]:
    """A keyword-only builder for one table row (its signature lists the row's options)."""

    def build(**options: Any) -> Backbone:
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            raise OptionError(f"backbone {name!r} takes no option(s) {unknown}; its options: "
                            f"{sorted(spec.options)}")
        kw = {**spec.options, **options}
        if "shortcut" not in spec.options:
            kw["shortcut"] = "none"
        return spec.net(block=spec.block, layers=spec.layers, stem=spec.stem, **kw)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = spec.doc
    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v, annotation=type(v))
         for k, v in spec.options.items()], return_annotation=Backbone)
    return build


for _name, _spec in RESNET_TABLE.items():
    BACKBONES.add(_name, _resnet_builder(_name, _spec))
BACKBONES.add("vgg16", vgg.vgg16)  # the paper's detection baseline


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
        raise OptionError(
            f"backbone {name!r} takes no option(s) {unknown}; its options: {sorted(known)}"
        )
    model = BACKBONES.build(name, **options)
    assert isinstance(model, Backbone)
    return model


def build_backbone(c: BackboneCfg, num_classes: int = 0) -> Backbone:
    """The backbone of a :class:`detres.config.BackboneCfg`, built (options left at ``None``
    keep the registry entry's default) and its first ``freeze_at`` stages frozen (their BN
    layers become FrozenBatchNorm2d). No weights are read: see
    :func:`detres.modeling.weights.load_pretrained`."""
    options: dict[str, Any] = {"num_classes": num_classes}
    # Only options that differ from "keep the default" are passed, so a backbone without
    # such a switch (e.g. VGG-16 has no shortcuts) is only an error when one is asked for.
    for key in ("stride_in_1x1", "shortcut", "width_per_group"):
        if getattr(c, key) is not None:
            options[key] = getattr(c, key)
    if c.zero_init_residual:
        options["zero_init_residual"] = True
    if c.norm != "BN":
        options["norm"] = c.norm
    model = build_by_name(c.name, **options)
    if c.freeze_at:
        model.freeze(c.freeze_at)
    return model


__all__ = [
    "BACKBONES",
    "RESNET_TABLE",
    "Backbone",
    "ShapeSpec",
    "build_backbone",
    "build_by_name",
    "builder_options",
    "convert_frozen_batchnorm",
]
