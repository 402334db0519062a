"""A plain bottleneck ResNet (He et al., https://arxiv.org/abs/1512.03385) with a face-embedding head.

This is face.evoLVe's ``ResNet_50/101/152`` layout: the ImageNet ResNet trunk (7x7 stride-2 stem, BN,
ReLU, 3x3 stride-2 max-pool, four stages of bottlenecks with ReLU after the sum, torchvision's module
names) and, instead of pooling and a classifier, the IR nets' head: BatchNorm2d(2048) -> Dropout ->
flatten -> Linear -> BatchNorm1d. At 112x112 the last feature map is 4x4. It is a different
network from ``IResNet`` (post-activation, bottlenecks, ReLU), so it has a class of its own; the
depths are argument sets.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from arcface.models._blocks import Variant, downsampled_size, pair

_WIDTHS = (64, 128, 256, 512)
_EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 -> 3x3(stride) -> 1x1 (x4 channels), BN after each, ReLU inside and after the sum.

    (B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * _EXPANSION, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * _EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> this block's output; see the class docstring for shapes."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet face backbone: (B, 3, H, W) images -> (B, num_features) embeddings.

    Args:
        layers: bottlenecks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        num_features: embedding size.
        dropout: dropout probability before the FC.
        input_size: input side (or (H, W)); the FC input size follows from it (4x4 at 112).
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_features: int = 512,
        dropout: float = 0.0,
        input_size: int | tuple[int, int] = 112,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got layers={tuple(layers)}")
        self.num_features = num_features
        self.input_size = pair(input_size)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for i, (planes, blocks) in enumerate(zip(_WIDTHS, layers)):
            stride = 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * _EXPANSION, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * _EXPANSION),
            )
            mods = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * _EXPANSION
            mods += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*mods))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(inplanes)
        self.dropout = nn.Dropout(p=dropout)
        fh, fw = downsampled_size(self.input_size, 5)  # stem, max-pool, layer2..4: 112 -> 4
        self.fc = nn.Linear(inplanes * fh * fw, num_features)
        self.features = nn.BatchNorm1d(num_features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Embed a batch of aligned faces: (B, 3, H, W) -> (B, num_features), not L2-normalised."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, 28, 28)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 2048, 4, 4)
        x = self.fc(self.dropout(self.bn2(x).flatten(1)))  # (B, num_features)
        return self.features(x)


_DOC = (
    "face.evoLVe's ResNet_{depth}: bottleneck ResNet-{depth} trunk, head BN2d -> Dropout -> Linear -> BN1d. "
    "Contract RGB, (x - 127.5) / 127.5, 112x112."
)
VARIANTS: dict[str, Variant] = {
    f"resnet{depth}": Variant(dict(layers=layers), _DOC.format(depth=depth))
    for depth, layers in ((50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3)))
}
