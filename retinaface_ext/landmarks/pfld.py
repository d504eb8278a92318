"""PFLD's weighted landmark loss (Guo et al., "PFLD: A Practical Facial Landmark
Detector", 2019):

    L = 1/M * sum_n (sum_c w_n^c) * (sum_k (1 - cos theta_n^k)) * ||d_n||^2

over a batch of M faces: d_n the landmark errors of face n, theta_n^k the
differences between the predicted and ground-truth Euler angles (yaw, pitch,
roll), w_n^c the weights of the attribute classes face n belongs to.

Attribute weights follow the public PFLD implementations (e.g. polarisZhao/
PFLD-pytorch): for each attribute c, its frequency f_c in the batch, and

    w_n = sum_c a_n^c / f_c        (attributes with f_c = 0 contribute nothing)

so a face with a rare attribute weighs more. There a face with no flagged
attribute gets w_n = 0 and drops out of the loss. We floor the weight instead:

    w_n = max(sum_c a_n^c / f_c, attribute_floor),   attribute_floor = 1.0 by default.

Why 1: a frequency is at most 1, so every flagged face has w_n >= 1 already and
the floor only lifts the unflagged ones; 1 is the weight of an attribute that
every face in the batch shares, i.e. the plain, unweighted loss. An unflagged
("normal") face thus counts like an ordinary sample and never more than a flagged
one. ``attribute_floor=0`` gives the reference implementations' weights.

Deliberate differences from the reference implementations:
- the Euler angles are in **radians**: PFLD-pytorch feeds the degrees of
  cv2.decomposeProjectionMatrix into cos, so its angle term repeats every
  2*pi *degrees* instead of growing with the angle error;
- the attribute columns are all used as given: PFLD-pytorch uses
  ``attribute_gt[:, 1:6]`` of WFLW's six flags (dropping pose); pass
  ``attributes[:, 1:]`` and ``attribute_floor=0`` for its weights;
- an empty batch gives 0, not NaN.

Note (the paper's formula): the angle factor sum_k (1 - cos theta) is 0 when the
predicted angles are exact, so the weighted loss then gives the landmarks no
gradient. The second returned value, the plain L2 loss, does not have this property.
"""
from typing import Optional, Tuple

import torch
from torch import nn

#: WFLW's attribute flags, in the order of its annotation files.
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "make-up", "occlusion", "blur")

DEFAULT_ATTRIBUTE_FLOOR = 1.0


def _shape(t):
    return str(list(t.shape))


def _check_float(fn, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")


def attribute_weights(attributes: torch.Tensor,
                      attribute_floor: float = DEFAULT_ATTRIBUTE_FLOOR,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-face weights [N] from [N, C] attribute flags (0/1; bool, int or float):
    max(sum_c a_n^c / f_c, attribute_floor), f_c the frequency of attribute c in the
    batch (see the module docstring). No gradient (the weights are constants)."""
    fn = "attribute_weights()"
    if not isinstance(attributes, torch.Tensor):
        raise TypeError(f"{fn}: attributes must be a torch.Tensor, got {type(attributes).__name__}")
    if attributes.dim() != 2:
        raise ValueError(f"{fn}: attributes must have shape [N, C] (C = 6 for WFLW), "
                         f"got {_shape(attributes)}")
    if not attribute_floor >= 0:
        raise ValueError(f"{fn}: attribute_floor must be >= 0, got {attribute_floor}")
    flags = attributes.detach().to(dtype)
    frequency = flags.mean(dim=0)  # NaN for N = 0: masked below like an absent attribute
    inverse = torch.where(frequency > 0, 1 / frequency, torch.zeros_like(frequency))
    return (flags * inverse).sum(dim=1).clamp(min=attribute_floor)


def pfld_loss(landmarks: torch.Tensor, landmarks_gt: torch.Tensor, angles: torch.Tensor,
              angles_gt: torch.Tensor, attributes: Optional[torch.Tensor] = None,
              attribute_floor: float = DEFAULT_ATTRIBUTE_FLOOR) -> Tuple[torch.Tensor, torch.Tensor]:
    """PFLD's loss: (weighted_loss, plain_l2_loss).

    Args:
        landmarks: predicted landmarks [N, K, 2] or flattened [N, 2K] (any [N, ...]).
        landmarks_gt: ground truth, same shape as ``landmarks``.
        angles: predicted Euler angles [N, 3] in radians (yaw, pitch, roll; the loss
            is symmetric in the three, any order matching ``angles_gt`` works).
        angles_gt: ground-truth Euler angles [N, 3] in radians.
        attributes: [N, C] attribute flags (WFLW: the six of ``WFLW_ATTRIBUTES``), or
            None for weight 1 on every face (the angle-weighted loss alone).
        attribute_floor: the smallest attribute weight (default 1.0; see the module
            docstring; 0 reproduces the reference implementations).

    Returns:
        weighted_loss = mean_n w_n * sum_k (1 - cos(angles - angles_gt)) * ||d_n||^2 and
        plain_l2_loss = mean_n ||d_n||^2, with ||d_n||^2 the sum of squared coordinate
        errors of face n. Both float32 (float64 for float64 inputs; float16/bfloat16 are
        computed in float32), differentiable w.r.t. ``landmarks`` and ``angles``
        (and the ground truth, should it require grad). 0 for N = 0.
    """
    fn = "pfld_loss()"
    for name, t in (("landmarks", landmarks), ("landmarks_gt", landmarks_gt),
                    ("angles", angles), ("angles_gt", angles_gt)):
        _check_float(fn, name, t)
    if landmarks.dim() < 2:
        raise ValueError(f"{fn}: landmarks must have shape [N, K, 2] or [N, 2K], got {_shape(landmarks)}")
    if landmarks_gt.shape != landmarks.shape:
        raise ValueError(f"{fn}: landmarks_gt must have the shape of landmarks {_shape(landmarks)}, "
                         f"got {_shape(landmarks_gt)}")
    n = landmarks.shape[0]
    for name, t in (("angles", angles), ("angles_gt", angles_gt)):
        if t.shape != (n, 3):
            raise ValueError(f"{fn}: {name} must have shape [{n}, 3] (yaw, pitch, roll in radians), "
                             f"got {_shape(t)}")
    if attributes is not None and (attributes.dim() != 2 or attributes.shape[0] != n):
        raise ValueError(f"{fn}: attributes must have shape [{n}, C] (C = 6 for WFLW), "
                         f"got {_shape(attributes)}")
    tensors = [landmarks, landmarks_gt, angles, angles_gt] + ([attributes] if attributes is not None else [])
    if len({t.device for t in tensors}) > 1:
        raise ValueError(f"{fn}: all inputs must be on one device, got "
                         f"{', '.join(str(t.device) for t in tensors)}")

    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors[:4]) else torch.float32
    error = (landmarks.to(dtype) - landmarks_gt.to(dtype)).flatten(1)
    l2 = error.square().sum(dim=1)
    angle_weight = (1 - torch.cos(angles.to(dtype) - angles_gt.to(dtype))).sum(dim=1)
    if attributes is None:
        weight = angle_weight
    else:
        weight = attribute_weights(attributes, attribute_floor, dtype) * angle_weight
    count = max(n, 1)  # an empty batch: 0, not 0/0
    return (weight * l2).sum() / count, l2.sum() / count


class PFLDLoss(nn.Module):
    """Module form of :func:`pfld_loss`: ``forward(landmarks, landmarks_gt, angles,
    angles_gt, attributes=None)`` returns (weighted_loss, plain_l2_loss); train on
    the first, log the second (PFLD-pytorch's convention)."""

    def __init__(self, attribute_floor: float = DEFAULT_ATTRIBUTE_FLOOR):
        super().__init__()
        if not attribute_floor >= 0:
            raise ValueError(f"PFLDLoss(): attribute_floor must be >= 0, got {attribute_floor}")
        self.attribute_floor = float(attribute_floor)

    def forward(self, landmarks, landmarks_gt, angles, angles_gt, attributes=None):
        return pfld_loss(landmarks, landmarks_gt, angles, angles_gt, attributes, self.attribute_floor)

    def extra_repr(self) -> str:
        return f"attribute_floor={self.attribute_floor}"
