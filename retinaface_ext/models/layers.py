"""Conv + BatchNorm (+ LeakyReLU) blocks shared by the RetinaFace backbones and necks.

Each block is an ``nn.Sequential`` so that its parameters are named like
biubug6's (``<block>.0.weight`` for the conv, ``<block>.1.*`` for the
BatchNorm): checkpoints trained with biubug6/Pytorch_Retinaface load strictly.
"""
from torch import nn


def conv_bn(in_channels, out_channels, stride=1, leaky=0.0, kernel_size=3, activation=True):
    """Conv (no bias) -> BatchNorm -> LeakyReLU(leaky); ``activation=False`` drops the ReLU."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if activation:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def conv_dw(in_channels, out_channels, stride, leaky=0.1):
    """Depthwise 3x3 conv-BN-LeakyReLU then pointwise 1x1 conv-BN-LeakyReLU (indices 0..5)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )
