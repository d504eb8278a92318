"""MobileNetV1 x0.25, the body of biubug6's ``mobilenet0.25`` RetinaFace."""
from collections import OrderedDict

from torch import nn

from .layers import conv_bn, conv_dw


class MobileNetV1(nn.Module):
    """MobileNetV1 with width multiplier 0.25, split into the three stages RetinaFace uses.

    ``forward`` returns the outputs of stage1 (stride 8, 64 channels), stage2
    (stride 16, 128) and stage3 (stride 32, 256). The ImageNet classifier
    (``avg``, ``fc``) of biubug6's MobileNetV1 is not built: biubug6 drops it
    too (IntermediateLayerGetter stops at stage3), so RetinaFace checkpoints
    never contain it. Use :meth:`load_pretrained_backbone` for biubug6's
    ImageNet checkpoint ``mobilenetV1X0.25_pretrain.tar``, which does.
    """

    out_channels = (64, 128, 256)

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, stride=2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            conv_dw(64, 128, 2),
            *[conv_dw(128, 128, 1) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(
            conv_dw(128, 256, 2),
            conv_dw(256, 256, 1),
        )

    def forward(self, x):
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]

    def load_pretrained_backbone(self, state_dict):
        """Loads an ImageNet MobileNetV1 state_dict (``module.`` prefix and classifier dropped)."""
        cleaned = OrderedDict()
        for key, value in state_dict.items():
            key = key[len("module."):] if key.startswith("module.") else key
            if key.startswith(("fc.", "avg.")):
                continue
            cleaned[key] = value
        return self.load_state_dict(cleaned, strict=True)
