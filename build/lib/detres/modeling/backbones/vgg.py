"""VGG-16 (Simonyan & Zisserman, configuration D) with torchvision's parameter names.

``features.N`` are the 13 convs (with their ReLUs and the 5 max pools), ``avgpool`` pools to
7x7 and ``classifier.0/3/6`` are fc6, fc7 and the class scores. Stages, named after their last
conv: ``conv1_2`` (stride 1), ``conv2_2`` (2), ``conv3_3`` (4), ``conv4_3`` (8) and ``conv5_3``
(16: everything up to and including the conv5_3 ReLU, without pool5), the trunk of the
Faster R-CNN VGG-16 detector, whose box head is :meth:`VGG.fc_head` (fc6, fc7).
"""

from __future__ import annotations

from torch import Tensor, nn

from detres.modeling.backbones.base import Backbone, ShapeSpec

# Channels of the convs of each block (configuration "D"); a max pool closes each block.
_VGG16_BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class VGG(Backbone):
    """VGG trunk and fc6/fc7 head; ``num_classes=0`` drops ``classifier.6`` (forward then
    returns the fc7 features)."""

    head_name = "classifier.6"

    def __init__(
        self,
        *,
        blocks: list[list[int]],
        num_classes: int = 1000,
        width_per_group: int = 64,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if width_per_group < 1 or num_classes < 0:
            raise ValueError(f"bad VGG shape: width={width_per_group}, num_classes={num_classes}")
        scale = width_per_group / 64
        layers: list[nn.Module] = []
        self.stage_names = []
        self._shapes: dict[str, ShapeSpec] = {}
        self._stage_ends: list[int] = []  # index in features after each stage's last ReLU
        cin, stride = 3, 1
        for b, convs in enumerate(blocks):
            if b > 0:
                layers.append(nn.MaxPool2d(2, 2))
                stride *= 2
            for cout in convs:
                cout = max(1, round(cout * scale))
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
            name = f"conv{b + 1}_{len(convs)}"
            self.stage_names.append(name)
            self._shapes[name] = ShapeSpec(cin, stride)
            self._stage_ends.append(len(layers))
        layers.append(nn.MaxPool2d(2, 2))  # pool5: classification only
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        hidden = max(1, round(4096 * scale))
        head: list[nn.Module] = [
            nn.Linear(cin * 7 * 7, hidden),  # fc6
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),  # fc7
            nn.ReLU(True),
            nn.Dropout(dropout),
        ]
        if num_classes > 0:
            head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)
        self.num_classes = num_classes
        self.num_features = hidden
        self.default_input_size = 224
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's VGG init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def fc_head(self) -> nn.Sequential:
        """fc6-ReLU-dropout-fc7-ReLU-dropout (shared modules): input ``(R, C*7*7)``, output
        ``(R, num_features)``; the detector's box head on 7x7-pooled conv5_3 features."""
        return self.classifier[:6]

    def split_fc_head(self) -> nn.Sequential:
        """Hand fc6/fc7 over to a detector's box head: returns :meth:`fc_head` and removes the
        classifier from the trunk (which then has no classification forward)."""
        head = self.fc_head()
        del self.classifier
        self.is_split = True
        return head

    def stage_modules(self) -> dict[str, nn.Module]:
        starts = [0] + self._stage_ends[:-1]
        return {
            name: self.features[a:b]
            for name, a, b in zip(self.stage_names, starts, self._stage_ends, strict=True)
        }

    def forward(self, x: Tensor) -> Tensor:
        self.check_whole()
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


def vgg16(
    *, num_classes: int = 1000, width_per_group: int = 64, dropout: float = 0.5, norm: str = "BN"
) -> VGG:
    """VGG-16 (torchvision ``vgg16`` layout). ``width_per_group`` scales every conv and fc
    width (64: the published net; tiny tests shrink it). ``norm`` is accepted for a uniform
    backbone interface and has no effect: VGG-16 has no normalization layers."""
    if norm not in ("BN", "FrozenBN"):
        raise ValueError(f"norm {norm!r} is not one of 'BN', 'FrozenBN'")
    return VGG(blocks=_VGG16_BLOCKS, num_classes=num_classes, width_per_group=width_per_group,
               dropout=dropout)
