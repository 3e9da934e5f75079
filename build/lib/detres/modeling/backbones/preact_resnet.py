"""Pre-activation ResNets of He et al., *Identity Mappings in Deep Residual Networks* (2016).

Each residual unit is BN-ReLU-conv (twice, or three times for the bottleneck) and adds its
input unchanged; after the last stage a final BN-ReLU precedes the pooling. Following the
authors' code (KaimingHe/resnet-1k-layers, fb.resnet.torch ``preresnet.lua``):

* a unit that changes the shape applies its BN-ReLU to the input of both branches, and its
  shortcut is a bare 1x1 projection (no BN; option "B") or zero padding (option "A");
* the ImageNet stem is conv1-BN-ReLU-maxpool and the first unit skips its own pre-activation;
  the CIFAR stem is a single 3x3 conv;
* the bottleneck has its stride in the first 1x1 (``stride_in_1x1=True``, overridable).

Names follow the plain ResNets (``conv1``, ``layer1.0.bn1``, ``layer1.0.downsample.0``, ``fc``)
plus ``bn_final``. Stages: ``stem``, ``res2``.. = ``layer1``..; the last stage includes the
final BN-ReLU, so it returns normalized features.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detres.modeling.backbones.base import Backbone, ShapeSpec
from detres.modeling.backbones.resnet import (
    SHORTCUTS,
    NormLayer,
    conv1x1,
    conv3x3,
    get_norm,
    init_weights,
    make_shortcut,
)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the shortcut. ``preact``: "both" (the input's
    BN-ReLU feeds both branches), "residual" (only the residual branch) or "none"."""

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
        preact: str = "residual",
    ) -> None:
        super().__init__()
        self.preact_shortcut = preact == "both"
        self.bn1 = norm_layer(inplanes) if preact != "none" else None
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = make_shortcut(shortcut, inplanes, planes, stride, None)

    def residual(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.bn2(self.conv1(x))))

    def forward(self, x: Tensor) -> Tensor:
        pre = x if self.bn1 is None else self.relu(self.bn1(x))
        short = pre if self.preact_shortcut else x
        if self.downsample is not None:
            short = self.downsample(short)
        return self.residual(pre) + short


class PreActBottleneck(PreActBasicBlock):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x4 channels), plus the shortcut."""

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
        preact: str = "residual",
    ) -> None:
        nn.Module.__init__(self)
        out = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.preact_shortcut = preact == "both"
        self.bn1 = norm_layer(inplanes) if preact != "none" else None
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(inplanes, planes, s1)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn3 = norm_layer(planes)
        self.conv3 = conv1x1(planes, out)
        self.downsample = make_shortcut(shortcut, inplanes, out, stride, None)

    def residual(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.bn2(self.conv1(x))))
        return self.conv3(self.relu(self.bn3(out)))


class PreActResNet(Backbone):
    """Pre-activation ResNet trunk with an optional classification head (``fc``)."""

    def __init__(
        self,
        *,
        block: type[PreActBasicBlock],
        layers: Sequence[int],
        num_classes: int = 1000,
        stem: str = "imagenet",
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        shortcut: str = "B",
        norm: str = "BN",
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem {stem!r} is not one of 'imagenet', 'cifar'")
        if shortcut not in SHORTCUTS or shortcut == "none":
            raise ValueError(f"shortcut {shortcut!r} is not one of 'A', 'B', 'C'")
        if width_per_group < 1 or num_classes < 0 or not layers or min(layers) < 1:
            raise ValueError(
                f"bad PreActResNet shape: width_per_group={width_per_group}, "
                f"num_classes={num_classes}, layers={list(layers)}"
            )
        norm_layer = get_norm(norm)
        self.stride_in_1x1 = stride_in_1x1 if block is PreActBottleneck else None
        self.shortcut = shortcut
        self.num_classes = num_classes
        self.stem_type = stem
        self.default_input_size = 224 if stem == "imagenet" else 32
        w = width_per_group
        self.relu = nn.ReLU(inplace=True)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(w)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            stride = 4
        else:
            self.conv1 = conv3x3(3, w)
            stride = 1
        self.stage_names = ["stem"] + [f"res{i + 2}" for i in range(len(layers))]
        self._shapes = {"stem": ShapeSpec(w, stride)}
        inplanes = w
        for i, n in enumerate(layers):
            planes, s = w * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                out = planes * block.expansion
                changes = j == 0 and (s != 1 or inplanes != out)
                preact = "none" if (i, j) == (0, 0) and stem == "imagenet" else "residual"
                blocks.append(
                    block(
                        inplanes,
                        planes,
                        s if j == 0 else 1,
                        shortcut=shortcut,
                        norm_layer=norm_layer,
                        stride_in_1x1=stride_in_1x1,
                        preact="both" if changes and preact != "none" else preact,
                    )
                )
                inplanes = out
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stride *= s
            self._shapes[f"res{i + 2}"] = ShapeSpec(inplanes, stride)
        self.final_stage = self.stage_names[-1]  # the final BN-ReLU closes this stage
        self.bn_final = norm_layer(inplanes)
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else None
        init_weights(self)

    def stage_modules(self) -> dict[str, nn.Module]:
        stem: list[nn.Module] = [self.conv1]
        if self.stem_type == "imagenet":  # conv1-BN-ReLU-maxpool
            stem += [self.bn1, self.relu, self.maxpool]
        stages: dict[str, nn.Module] = {"stem": nn.Sequential(*stem)}
        for i, name in enumerate(self.stage_names[1:]):
            layer = getattr(self, f"layer{i + 1}")
            final = name == self.final_stage
            stages[name] = nn.Sequential(layer, self.bn_final, self.relu) if final else layer
        return stages

    def stage_attributes(self, name: str) -> list[str]:
        layer = [f"layer{self.stage_names.index(name)}"]
        return layer + ["bn_final"] if name == self.final_stage else layer

    def forward(self, x: Tensor) -> Tensor:
        self.check_whole()
        for stage in self.stage_modules().values():
            x = stage(x)
        x = self.avgpool(x).flatten(1)
        return x if self.fc is None else self.fc(x)
