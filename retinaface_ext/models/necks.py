"""biubug6's FPN and SSH context modules (same layer names, so checkpoints load strictly)."""
import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv_bn


def _leaky_slope(out_channels):
    # biubug6 uses LeakyReLU(0.1) for the small (<= 64 channel) mobilenet neck, plain ReLU otherwise.
    return 0.1 if out_channels <= 64 else 0.0


class FPN(nn.Module):
    """Top-down feature pyramid over three levels: 1x1 lateral convs, nearest upsampling, 3x3 merges."""

    def __init__(self, in_channels_list, out_channels):
        super().__init__()
        leaky = _leaky_slope(out_channels)
        self.output1 = conv_bn(in_channels_list[0], out_channels, leaky=leaky, kernel_size=1)
        self.output2 = conv_bn(in_channels_list[1], out_channels, leaky=leaky, kernel_size=1)
        self.output3 = conv_bn(in_channels_list[2], out_channels, leaky=leaky, kernel_size=1)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features):
        c3, c4, c5 = features
        p3 = self.output1(c3)
        p4 = self.output2(c4)
        p5 = self.output3(c5)
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Single Stage Headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"SSH: out_channels must be a multiple of 4, got {out_channels}")
        leaky = _leaky_slope(out_channels)
        quarter = out_channels // 4
        self.conv3X3 = conv_bn(in_channels, out_channels // 2, activation=False)
        self.conv5X5_1 = conv_bn(in_channels, quarter, leaky=leaky)
        self.conv5X5_2 = conv_bn(quarter, quarter, activation=False)
        self.conv7X7_2 = conv_bn(quarter, quarter, leaky=leaky)
        self.conv7x7_3 = conv_bn(quarter, quarter, activation=False)  # lower-case x: biubug6's key

    def forward(self, x):
        branch3 = self.conv3X3(x)
        shared = self.conv5X5_1(x)
        branch5 = self.conv5X5_2(shared)
        branch7 = self.conv7x7_3(self.conv7X7_2(shared))
        return F.relu(torch.cat([branch3, branch5, branch7], dim=1))
