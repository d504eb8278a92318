"""ResNet-50 (torchvision's v1.5 layout and parameter names), the body of biubug6's ``Resnet50``.

biubug6 wraps ``torchvision.models.resnet50`` in an IntermediateLayerGetter;
there is no CPU torchvision wheel for every torch build, so the network is
written here with torchvision's module names (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...). Its state_dict therefore
matches both biubug6's ``body.*`` keys and torchvision's ImageNet checkpoints.
"""
from collections import OrderedDict

from torch import nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, as torchvision's v1.5) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, in_channels, width, stride=1, downsample=None):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_layer(in_channels, width, blocks, stride):
    out_channels = width * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    layers = [Bottleneck(in_channels, width, stride, downsample)]
    layers += [Bottleneck(out_channels, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """ResNet-50 trunk; ``forward`` returns layer2, layer3, layer4 (strides 8, 16, 32).

    The classifier (``avgpool``, ``fc``) is not built, as in biubug6's
    IntermediateLayerGetter; :meth:`load_pretrained_backbone` loads a
    torchvision ImageNet checkpoint (``resnet50-*.pth``) and ignores ``fc.*``.
    """

    out_channels = (512, 1024, 2048)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _make_layer(64, 64, 3, 1)
        self.layer2 = _make_layer(256, 128, 4, 2)
        self.layer3 = _make_layer(512, 256, 6, 2)
        self.layer4 = _make_layer(1024, 512, 3, 2)
        # torchvision's initialisation, so training from scratch behaves the same.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]

    def load_pretrained_backbone(self, state_dict):
        """Loads torchvision's ImageNet ResNet-50 weights (``fc.*`` ignored)."""
        cleaned = OrderedDict(
            (key[len("module."):] if key.startswith("module.") else key, value)
            for key, value in state_dict.items()
        )
        cleaned = OrderedDict((k, v) for k, v in cleaned.items() if not k.startswith("fc."))
        return self.load_state_dict(cleaned, strict=True)
