"""The CIFAR-10 nets of the ResNet paper (Sec. 4.2, Table 6): 6n+2 layers, a 3x3 conv stem with
16 channels, three stages of n basic blocks with 16/32/64 channels at strides 1/2/4, global
average pooling and a 10-way fc. The residual nets use identity shortcuts everywhere and
zero-padding where the shape changes (option A); the plain nets have no shortcuts.
"""

from __future__ import annotations

from collections.abc import Callable

from detres.modeling.backbones.resnet import BasicBlock, ResNet


def _cifar_builder(name: str, n: int) -> Callable[..., ResNet]:
    def build(
        *,
        num_classes: int = 10,
        shortcut: str = "A",
        zero_init_residual: bool = False,
        width_per_group: int = 16,
        norm: str = "BN",
        stride_in_1x1: bool = True,  # basic blocks only: no effect, accepted for uniformity
    ) -> ResNet:
        return ResNet(
            block=BasicBlock,
            layers=[n, n, n],
            num_classes=num_classes,
            stem="cifar",
            width_per_group=width_per_group,
            stride_in_1x1=stride_in_1x1,
            shortcut=shortcut,
            zero_init_residual=zero_init_residual,
            norm=norm,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR ResNet-{6 * n + 2} (n={n}; option A shortcuts by default)."
    return build


def _cifar_plain_builder(name: str, n: int) -> Callable[..., ResNet]:
    def build(*, num_classes: int = 10, width_per_group: int = 16, norm: str = "BN") -> ResNet:
        return ResNet(
            block=BasicBlock,
            layers=[n, n, n],
            num_classes=num_classes,
            stem="cifar",
            width_per_group=width_per_group,
            shortcut="none",
            norm=norm,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR plain-{6 * n + 2} (n={n}): the CIFAR ResNet without shortcuts."
    return build


resnet20 = _cifar_builder("resnet20", 3)
resnet32 = _cifar_builder("resnet32", 5)
resnet44 = _cifar_builder("resnet44", 7)
resnet56 = _cifar_builder("resnet56", 9)
resnet110 = _cifar_builder("resnet110", 18)
resnet1202 = _cifar_builder("resnet1202", 200)
plain20 = _cifar_plain_builder("plain20", 3)
plain32 = _cifar_plain_builder("plain32", 5)
plain44 = _cifar_plain_builder("plain44", 7)
plain56 = _cifar_plain_builder("plain56", 9)
plain110 = _cifar_plain_builder("plain110", 18)
