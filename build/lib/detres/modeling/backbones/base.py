"""The backbone contract shared by the classifier and the detector.

A backbone is an ``nn.Module`` whose parameter names follow torchvision (so torchvision
weight files load with ``strict=True``) and which can return named intermediate stages:

* ``forward(x)`` is the classification forward: logits ``(N, num_classes)``, or pooled
  features when built without a head (``num_classes=0``).
* ``forward_features(x, out_features)`` returns ``{stage_name: Tensor}`` for the requested
  stages only, stopping after the last one requested (stage names: ``stem``, ``res2`` ..
  ``res5`` for ResNets; ``conv5_3`` for VGG-16).
* ``output_shape()`` maps every stage name to its :class:`ShapeSpec` (channels, stride).
* ``freeze(freeze_at)`` stops gradients for the stem (1) and the first stages (2 = stem +
  res2, ...), as when fine-tuning a pretrained trunk for detection.
* ``split_last_stage()`` hands the last stage over to a detector's box head (Faster R-CNN
  C4 runs res5 per RoI): it leaves the trunk, which then ends one stage earlier and has no
  classification forward any more. The detector's weight loading maps a classifier's names
  (``layer4.*``) to the stage's new place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d


@dataclass(frozen=True)
class ShapeSpec:
    channels: int
    stride: int


class Backbone(nn.Module, ABC):
    #: Stage names in forward order, e.g. ["stem", "res2", "res3", "res4", "res5"].
    stage_names: list[str]
    #: The classification layer's name; weight loading drops it when the classes differ.
    head_name: str = "fc"
    #: Width of the pooled features (``forward``'s output when built with ``num_classes=0``).
    num_features: int
    #: Input side the network was designed for (224 ImageNet, 32 CIFAR); used by analysis.
    default_input_size: int = 224

    #: Stage name -> channels and stride, in forward order (set by the constructor).
    _shapes: dict[str, ShapeSpec]
    #: Set once a stage has been handed to a detector head (no classification forward then).
    is_split: bool = False

    def forward_features(self, x: Tensor, out_features: list[str]) -> dict[str, Tensor]:
        """The requested stages, computing nothing past the last one."""
        return run_stages(self.stage_modules(), x, out_features)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every stage, in forward order."""
        return dict(self._shapes)

    @abstractmethod
    def stage_modules(self) -> dict[str, nn.Module]:
        """Stage name -> the module(s) computing it, in forward order (used by freeze)."""

    def stage_attributes(self, name: str) -> list[str]:
        """The attributes holding stage ``name``'s parameters (for :meth:`split_last_stage`)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not say which attributes hold its stage {name!r}, so "
            "a C4 box head cannot take that stage over: override stage_attributes, or use "
            "an FPN (or, for VGG, its fc head) instead")

    def split_last_stage(self) -> nn.Module:
        """Remove the last stage from the trunk and return the module computing it."""
        name = self.stage_names[-1]
        module = self.stage_modules()[name]
        for attr in self.stage_attributes(name):
            delattr(self, attr)
        self.stage_names = self.stage_names[:-1]
        self._shapes = {k: v for k, v in self._shapes.items() if k != name}
        self.is_split = True
        return module

    def check_whole(self) -> None:
        """The classification forward needs every stage and the head."""
        if self.is_split:
            raise RuntimeError(f"this {type(self).__name__} gave part of itself to a detector "
                               "head and has no classification forward")

    def freeze(self, freeze_at: int) -> None:
        """Freeze the first ``freeze_at`` stages (1: stem; 2: stem + res2; ...).

        Their parameters stop receiving gradients and their ``BatchNorm2d`` layers become
        ``FrozenBatchNorm2d``. The replacement is made where each layer lives in ``self``, so
        a stage may be a view (e.g. ``nn.Sequential(conv1, bn1, relu, maxpool)``) built on the
        fly by :meth:`stage_modules`."""
        stages = self.stage_modules()
        if not 0 <= freeze_at <= len(stages):
            raise ValueError(
                f"freeze_at={freeze_at} must be in [0, {len(stages)}] ({list(stages)})"
            )
        to_freeze: set[int] = set()
        for mod in list(stages.values())[:freeze_at]:
            for p in mod.parameters():
                p.requires_grad_(False)
            to_freeze.update(id(m) for m in mod.modules() if isinstance(m, nn.BatchNorm2d))
        _convert_selected_batchnorm(self, to_freeze)


def run_stages(
    stages: dict[str, nn.Module], x: Tensor, out_features: list[str]
) -> dict[str, Tensor]:
    """Run ``stages`` in order, keeping the outputs named in ``out_features`` and computing
    nothing past the last one requested. Unknown names raise, listing the known ones."""
    unknown = [n for n in out_features if n not in stages]
    if unknown or not out_features:
        raise KeyError(f"out_features {out_features} must be a non-empty subset of {list(stages)}")
    wanted = set(out_features)
    out: dict[str, Tensor] = {}
    for name, mod in stages.items():
        x = mod(x)
        if name in wanted:
            out[name] = x
            if len(out) == len(wanted):
                break
    return out


def _convert_selected_batchnorm(module: nn.Module, ids: set[int]) -> None:
    """Replace, in place, the ``BatchNorm2d`` layers under ``module`` whose ``id`` is in ``ids``."""
    for name, child in module.named_children():
        if id(child) in ids:
            setattr(module, name, convert_frozen_batchnorm(child))
        else:
            _convert_selected_batchnorm(child, ids)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` under ``module`` (in place) by ``FrozenBatchNorm2d``
    carrying the same statistics and affine parameters. Returns the (possibly new) module."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.running_mean is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
