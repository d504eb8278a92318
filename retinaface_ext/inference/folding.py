"""BatchNorm folded into the convolutions before it: the inference form of a RetinaFace's weights.

In eval mode ``bn(conv(x))`` is one affine map per channel after the conv, so
it is the conv with weight ``w * g`` and bias ``(b - mean) * g + beta``,
``g = gamma / sqrt(var + eps)``. Only pairs whose order of execution is known
are folded: consecutive children of an ``nn.Sequential``, and the conv/bn
attributes of our ResNet-50 and its bottlenecks.
"""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..models.frozen_batchnorm import FrozenBatchNorm2d
from ..models.resnet import Bottleneck, ResNet50

# Modules whose forward applies bn<k> right after conv<k> (registered one after the other).
_ATTRIBUTE_PAIRS = {ResNet50: (("conv1", "bn1"),), Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))}


def folded_conv(conv, bn=None):
    """(weight, bias) of ``conv`` followed by ``bn`` (eval mode) as one conv, detached float32 copies.

    Without ``bn`` it is the conv's own weight and bias (zeros when it has none).
    """
    weight = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if bn is None:
        return weight.clone(), bias.clone()
    weight, bias = fuse_conv_bn_weights(weight, bias, bn.running_mean.float(), bn.running_var.float(), bn.eps,
                                        None if bn.weight is None else bn.weight.detach().float(),
                                        None if bn.bias is None else bn.bias.detach().float())
    return weight.detach(), bias.detach()


def conv_bn_pairs(module):
    """(parent, conv name, bn name) for every conv directly followed by its BatchNorm inside ``module``."""
    pairs = []
    for parent in module.modules():
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for first, second in zip(names, names[1:]):
                if _is_pair(parent._modules[first], parent._modules[second]):
                    pairs.append((parent, first, second))
        for conv_name, bn_name in _ATTRIBUTE_PAIRS.get(type(parent), ()):
            if _is_pair(getattr(parent, conv_name), getattr(parent, bn_name)):
                pairs.append((parent, conv_name, bn_name))
    return pairs


def is_foldable_batchnorm(module):
    """A BatchNorm that computes with its running statistics at inference, so folds exactly: a
    BatchNorm2d, or a FrozenBatchNorm2d (a fine-tuned pretrained model's). Other subclasses may
    compute otherwise and are left alone."""
    return type(module) in (nn.BatchNorm2d, FrozenBatchNorm2d) and module.track_running_stats


def _is_pair(conv, bn):
    return isinstance(conv, nn.Conv2d) and is_foldable_batchnorm(bn) and bn.num_features == conv.out_channels


def fold_batchnorm(model):
    """A deep copy of ``model`` in eval mode, every foldable BatchNorm folded into its conv (now an Identity).

    The copy shares nothing with ``model``: later changes to either leave the other alone.
    """
    folded = copy.deepcopy(model).eval()
    for parent, conv_name, bn_name in conv_bn_pairs(folded):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        weight, bias = folded_conv(conv, bn)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                          device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
        setattr(parent, conv_name, fused.eval())
        setattr(parent, bn_name, nn.Identity())
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded
