"""Frozen BatchNorm for fine-tuning from BatchNorm-folded weights (the bundled pretrained model).

Weights imported from an ONNX export with BatchNorm folded into the convolutions
(``retinaface_ext.weights.state_dict_from_onnx``) have no BatchNorm statistics:
each BatchNorm is an identity (running mean 0, running variance 1 - eps) and the
conv weights carry the scale gamma / sigma, so they are tiny (max |w| ~ 0.005 in
mobilenet0.25). Training them as biubug6 does breaks the detector within a step:

* in train mode BatchNorm normalises with the batch statistics, which the
  network never saw (the function changes at once), and its gradient w.r.t. a
  conv weight scales like 1 / ||w||, so an SGD step at lr 1e-3 moves the tiny
  folded weights by up to thousands of times their norm;
* even with the statistics frozen, SGD on the folded parametrisation takes steps
  gamma^2 / sigma^2 larger than the original training did.

So, as torchvision's detection backbones do (FrozenBatchNorm2d), such a
BatchNorm is frozen: statistics and affine parameters fixed, always in eval
mode. And the scale is unfolded: each conv filter is divided by a per-channel
factor s and the BatchNorm's weight becomes s, so the network computes exactly
the same function while the filters get a norm of ``UNFOLDED_FILTER_NORM``.
The parametrisation of a network with BatchNorm is only defined up to that
scale (the original filter norms are lost in the folding); 10 is a scale at
which SGD at biubug6's lr 1e-3 fine-tunes smoothly. Measured from the
pretrained mobilenet0.25, batch 8 of 160x160 synthetic faces, 120 steps:
norm 1 produces 26 false faces on the astronaut after 10 steps (0.3: a second
face after 40 steps), norm 10 keeps one face at 1.000 and raises held-out
synthetic AP from 0.981 to 0.998 (20: 0.981, learning slowly).
"""
import torch
from torch import nn

#: The norm every unfolded conv filter gets (see the module docstring).
UNFOLDED_FILTER_NORM = 10.0


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that always normalises with its running statistics and is never trained.

    ``train()`` leaves it in eval mode and its weight and bias do not require
    gradients. Its state_dict is a BatchNorm2d's (same keys), so checkpoints
    load into a plain :class:`~retinaface_ext.RetinaFace` and compute the same.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)

    @classmethod
    def from_batchnorm(cls, batchnorm: nn.BatchNorm2d) -> "FrozenBatchNorm2d":
        frozen = cls(batchnorm.num_features, eps=batchnorm.eps, momentum=batchnorm.momentum)
        frozen.load_state_dict(batchnorm.state_dict())
        return frozen.to(batchnorm.weight.device)


def has_folded_statistics(batchnorm: nn.BatchNorm2d) -> bool:
    """Whether ``batchnorm`` holds no statistics: running mean 0 and variance 1 - eps everywhere.

    That is what importing BatchNorm-folded weights writes (so that
    sqrt(var + eps) = 1), and what a frozen BatchNorm keeps. A freshly built
    BatchNorm has variance 1 and trained ones have real statistics.
    """
    if batchnorm.running_mean is None or batchnorm.running_var is None:
        return False
    folded_var = torch.full_like(batchnorm.running_var, 1.0 - batchnorm.eps)
    return bool(torch.all(batchnorm.running_mean == 0)) and bool(torch.equal(batchnorm.running_var, folded_var))


def has_folded_batchnorm(model: nn.Module) -> bool:
    """Whether any BatchNorm of ``model`` holds no statistics (see :func:`has_folded_statistics`)."""
    return any(isinstance(m, nn.BatchNorm2d) and has_folded_statistics(m) for m in model.modules())


def freeze_batchnorm(model: nn.Module, filter_norm: float = UNFOLDED_FILTER_NORM) -> int:
    """Replaces every BatchNorm2d of ``model`` by a :class:`FrozenBatchNorm2d`, in place; -> how many.

    Where a BatchNorm still has the identity affine of freshly folded weights
    (weight 1 and no statistics), the scale is first unfolded out of the conv
    before it: the conv's filters are divided by s = ||filter|| / filter_norm
    and the BatchNorm's weight set to s, which leaves the model's outputs
    unchanged up to float rounding. BatchNorms with real statistics (biubug6
    checkpoints) or already unfolded (a checkpoint of a frozen fine-tuning) are
    only frozen, so resuming a frozen run reproduces it exactly.
    """
    from ..weights import batchnorm_after

    # The conv whose output each BatchNorm normalises: the pairs the ONNX import folded.
    convs = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            batchnorm = batchnorm_after(model, path)
            if batchnorm is not None:
                convs[batchnorm] = module
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.BatchNorm2d) or isinstance(child, FrozenBatchNorm2d):
                continue
            conv = convs.get(child)
            if conv is not None and has_folded_statistics(child) and bool(torch.all(child.weight == 1)):
                _unfold_scale(conv, child, filter_norm)
            setattr(parent, name, FrozenBatchNorm2d.from_batchnorm(child))
            replaced += 1
    return replaced


@torch.no_grad()
def _unfold_scale(conv: nn.Conv2d, batchnorm: nn.BatchNorm2d, filter_norm: float):
    norms = conv.weight.flatten(1).norm(dim=1)
    scale = torch.where(norms > 0, norms / filter_norm, torch.ones_like(norms))
    conv.weight.div_(scale.view(-1, 1, 1, 1))
    batchnorm.weight.mul_(scale)
