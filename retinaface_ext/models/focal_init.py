"""RetinaNet's prior-probability initialisation of the class heads, for conf_loss="focal"."""
import math

import torch
from torch import nn

from .. import defaults
from .retinaface import ClassHead


def init_focal_prior_bias(model: nn.Module, prior_probability: float = defaults.FOCAL_PRIOR_PROBABILITY,
                          weight_std: float = 0.01, face_class: int = 1) -> int:
    """Initialise every ClassHead of ``model`` so that each prior starts with P(face) = prior_probability.

    RetinaNet (Lin et al. 2017, section 4.1): with the focal loss summed over
    all priors and divided by the number of positives, the many easy
    background priors would dominate the first iterations unless the network
    starts out predicting "background" with confidence. The class heads' conv
    weights are drawn from N(0, weight_std^2) (RetinaNet's 0.01; None keeps the
    current weights) and their biases set so that the softmax over the C
    classes of every anchor gives face_class probability prior_probability and
    the other classes (1 - prior_probability) / (C - 1) each; for RetinaFace's
    two classes, bias = (log(1 - pi), log(pi)), i.e. a logit difference of
    log(pi / (1 - pi)) = -4.6 for pi = 0.01.

    Returns the number of class heads initialised (ValueError if there is none).
    The trainer applies it with --conf-loss focal when no pretrained weights
    are loaded (a resumed checkpoint overwrites it).
    """
    if not 0 < prior_probability < 1:
        raise ValueError(f"init_focal_prior_bias: prior_probability must be in (0, 1), got {prior_probability}")
    heads = [m for m in model.modules() if isinstance(m, ClassHead)]
    if not heads:
        raise ValueError("init_focal_prior_bias: the model has no ClassHead")
    with torch.no_grad():
        for head in heads:
            conv, num_classes = head.conv1x1, head.values
            if not 0 <= face_class < num_classes or num_classes < 2:
                raise ValueError(f"init_focal_prior_bias: face_class {face_class} is not one of the "
                                 f"head's {num_classes} classes")
            if weight_std is not None:
                conv.weight.normal_(0.0, weight_std)
            # The conv's output channels are anchor-major: anchor a, class c at a * C + c.
            bias = conv.bias.view(-1, num_classes)
            bias.fill_(math.log((1 - prior_probability) / (num_classes - 1)))
            bias[:, face_class] = math.log(prior_probability)
    return len(heads)
