"""ResNets of He et al., *Deep Residual Learning for Image Recognition* (2015), and their plain
(shortcut-free) counterparts, with torchvision's parameter names.

Variants, all from one :class:`ResNet` class:

* ``stride_in_1x1``: where a bottleneck block downsamples. ``True`` is the paper's (MSRA)
  network, whose multiply-adds match the paper's Table 1 (ResNet-50: 3.8e9); ``False`` puts the
  stride in the 3x3 conv, as torchvision's "v1.5" ResNet (4.1e9) whose weight files these models
  load with ``strict=True``. Basic-block nets (18/34, CIFAR) are the same either way.
* ``shortcut``: ``"A"`` zero-padded identity with stride subsampling (no parameters), ``"B"``
  projection only where the shape changes (default), ``"C"`` projection on every block,
  ``"none"`` no shortcut at all (the plain nets).
* ``stem``: ``"imagenet"`` (7x7/2 conv + 3x3/2 max pool, stages res2..res5 at strides 4..32)
  or ``"cifar"`` (3x3/1 conv, no pool, stages res2..res4 at strides 1, 2, 4: the 6n+2 nets).
* ``width_per_group``: the base width (64 for ImageNet nets, 16 for CIFAR nets). Unlike
  torchvision, where it only sets the bottleneck's inner width, it scales the whole network
  (stem and every stage), so that tests can run tiny versions of every model.

The registered names (``resnet18`` .. ``resnet152``, ``plain18``, the CIFAR 6n+2 nets) are one
table in :mod:`detres.modeling.backbones`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from detres.modeling.backbones.base import Backbone, ShapeSpec
from detres.modeling.fastpath import autocast_dtype, derived, fast_ops_enabled

NormLayer = Callable[[int], nn.Module]
SHORTCUTS = ("A", "B", "C", "none")


def get_norm(norm: str) -> NormLayer:
    """``"BN"`` -> ``nn.BatchNorm2d``; ``"FrozenBN"`` -> ``torchvision.ops.FrozenBatchNorm2d``."""
    if norm == "BN":
        return nn.BatchNorm2d
    if norm == "FrozenBN":
        return FrozenBatchNorm2d
    raise ValueError(f"norm {norm!r} is not one of 'BN', 'FrozenBN'")


def _folded(conv: nn.Conv2d, norm: nn.Module, dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
    """The folded ``(weight, bias)``; without autograd cached on ``conv`` (in ``dtype``, the
    autocast dtype if any) until any of the tensors involved changes (``fastpath.derived``)."""

    def fold() -> tuple[Tensor, Tensor]:
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # type: ignore[operator]
        bias = norm.bias - norm.running_mean * scale  # type: ignore[operator]
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        return conv.weight * scale.view(-1, 1, 1, 1), bias  # keeps the weight's memory format

    sources = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean,
               norm.running_var)
    return derived(conv, "folded", sources, dtype, fold)  # type: ignore[no-any-return]


def conv_norm(x: Tensor, conv: nn.Conv2d, norm: nn.Module) -> Tensor:
    """``norm(conv(x))``, with a fixed affine norm folded into the convolution.

    A ``FrozenBatchNorm2d`` (or a ``BatchNorm2d`` in eval mode) is ``y * s + b`` per channel,
    so ``norm(conv(x)) == conv(x; weight * s) + b``: one pass over the activation instead of
    three (conv, then the norm's multiply and add), in training as well as inference, since
    the gradient reaches ``conv.weight`` through the product. Without autograd the folded
    weights are computed once and cached. The state dict is unchanged. ``tools/benchmark.py
    --ablation`` measures the gain; tests check outputs and gradients against the unfused path.
    """
    # an exported graph folds too: a BatchNorm on a data-dependent batch of RoIs (C4's res5)
    # does not trace, and the file gets one convolution instead of three operations
    if (fast_ops_enabled() or torch.compiler.is_exporting()) and (
        isinstance(norm, FrozenBatchNorm2d)
        or (isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_var is not None)
    ):
        weight, bias = _folded(conv, norm, autocast_dtype(x.device))
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return norm(conv(x))


class ConvNorm(nn.Sequential):
    """``Sequential(conv, norm)`` (torchvision's names ``.0``, ``.1``) run by :func:`conv_norm`."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if len(self) == 2:
            return conv_norm(x, self[0], self[1])  # type: ignore[arg-type]
        return super().forward(x)


class Stem(nn.Sequential):
    """``Sequential(conv1, bn1, relu, maxpool)``: the ImageNet/CIFAR stem as one stage."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        conv, norm, relu, pool = self
        return pool(relu(conv_norm(x, conv, norm)))  # type: ignore[arg-type]


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: the identity, subsampled by ``stride`` and zero-padded with ``extra`` channels
    (appended after the input's channels). No parameters."""

    def __init__(self, extra: int, stride: int) -> None:
        super().__init__()
        self.extra = extra
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # (N, C, H, W) -> (N, C + extra, H, W)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"extra={self.extra}, stride={self.stride}"


def make_shortcut(
    shortcut: str, cin: int, cout: int, stride: int, norm_layer: NormLayer | None
) -> nn.Module | None:
    """The shortcut branch of a block (``None``: plain identity). A projection is
    ``Sequential(conv1x1, norm)`` (torchvision's ``downsample.0/1``), or ``Sequential(conv1x1)``
    when ``norm_layer`` is None (pre-activation nets)."""
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut {shortcut!r} is not one of {SHORTCUTS}")
    changes = stride != 1 or cin != cout
    if shortcut == "C" or (shortcut == "B" and changes):
        layers: list[nn.Module] = [conv1x1(cin, cout, stride)]
        if norm_layer is not None:
            layers.append(norm_layer(cout))
        return ConvNorm(*layers)
    if shortcut == "A" and changes:
        if cout < cin:
            raise ValueError(f"shortcut 'A' cannot map {cin} to fewer ({cout}) channels")
        return ZeroPadShortcut(cout - cin, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs (torchvision's ``BasicBlock``); ``residual=False`` drops the shortcut."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        norm_layer: NormLayer = nn.BatchNorm2d,
        stride_in_1x1: bool = True,  # no 1x1 here; accepted for a uniform interface
    ) -> None:
        super().__init__()
        self.residual = shortcut != "none"
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = make_shortcut(shortcut, inplanes, planes, stride, norm_layer)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(conv_norm(x, self.conv1, self.bn1))
        out = conv_norm(out, self.conv2, self.bn2)
        if self.residual:  # in place, as torchvision: no fresh buffer per block
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels), torchvision's ``Bottleneck`` names. The stride sits in
    the first 1x1 (``stride_in_1x1=True``, the paper) or in the 3x3 (torchvision v1.5)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        norm_layer: NormLayer = nn.BatchNorm2d,
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.residual = shortcut != "none"
        self.conv1 = conv1x1(inplanes, planes, s1)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, out)
        self.bn3 = norm_layer(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, inplanes, out, stride, norm_layer)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(conv_norm(x, self.conv1, self.bn1))
        out = self.relu(conv_norm(out, self.conv2, self.bn2))
        out = conv_norm(out, self.conv3, self.bn3)
        if self.residual:  # in place, as torchvision: no fresh buffer per block
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


def init_weights(model: nn.Module) -> None:
    """torchvision's ResNet init: Kaiming normal (fan_out) convs, norm weight 1 and bias 0;
    linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(Backbone):
    """ResNet / plain net trunk with an optional classification head (``fc``).

    Stages: ``stem`` (conv1, bn1, relu, maxpool), then ``res2``.. = ``layer1``.. (4 stages for
    the ImageNet stem, 3 for the CIFAR stem).
    """

    def __init__(
        self,
        *,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        stem: str = "imagenet",
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        shortcut: str = "B",
        zero_init_residual: bool = False,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem {stem!r} is not one of 'imagenet', 'cifar'")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut {shortcut!r} is not one of {SHORTCUTS}")
        if zero_init_residual and shortcut == "none":
            raise ValueError("zero_init_residual needs shortcuts (a plain net would output 0)")
        if width_per_group < 1 or num_classes < 0 or not layers or min(layers) < 1:
            raise ValueError(
                f"bad ResNet shape: width_per_group={width_per_group}, "
                f"num_classes={num_classes}, layers={list(layers)}"
            )
        norm_layer = get_norm(norm)
        self.stride_in_1x1 = stride_in_1x1 if block is Bottleneck else None
        self.shortcut = shortcut
        self.num_classes = num_classes
        self.default_input_size = 224 if stem == "imagenet" else 32
        w = width_per_group
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            stride = 4
        else:
            self.conv1 = conv3x3(3, w)
            self.maxpool = nn.Identity()
            stride = 1
        self.bn1 = norm_layer(w)
        self.relu = nn.ReLU(inplace=True)
        self.stage_names = ["stem"] + [f"res{i + 2}" for i in range(len(layers))]
        self._shapes = {"stem": ShapeSpec(w, stride)}
        inplanes = w
        for i, n in enumerate(layers):
            planes, s = w * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(
                    block(
                        inplanes,
                        planes,
                        s if j == 0 else 1,
                        shortcut=shortcut,
                        norm_layer=norm_layer,
                        stride_in_1x1=stride_in_1x1,
                    )
                )
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stride *= s
            self._shapes[f"res{i + 2}"] = ShapeSpec(inplanes, stride)
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else None
        self.final_stage = self.stage_names[-1]
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_norm().weight)

    def stage_modules(self) -> dict[str, nn.Module]:
        stages: dict[str, nn.Module] = {
            "stem": Stem(self.conv1, self.bn1, self.relu, self.maxpool)
        }
        for i, name in enumerate(self.stage_names[1:]):
            stages[name] = getattr(self, f"layer{i + 1}")
        return stages

    def stage_attributes(self, name: str) -> list[str]:
        return [f"layer{self.stage_names.index(name)}"]

    def forward(self, x: Tensor) -> Tensor:
        self.check_whole()
        for stage in self.stage_modules().values():
            x = stage(x)
        x = self.avgpool(x).flatten(1)
        return x if self.fc is None else self.fc(x)
