"""Face-recognition classification heads: cosine logits and margin softmax losses.

``NormalizedLinear`` maps features to the cosines between the L2-normalised
feature and the L2-normalised class weights; ``MarginSoftmaxHead`` puts the
combined margin loss (retinaface_ext.ops.margin_cross_entropy, fused) on top:

    head = ArcFaceHead(512, num_classes=100_000)          # s=64, m=0.5
    loss = head(embeddings, labels)                      # labels -1 are ignored
    loss.backward()

Presets (insightface's (m1, m2, m3)): ArcFace (1, 0.5, 0), CosFace
(1, 0, 0.35), SphereFace approximated as (1.35, 0, 0).
"""
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import margin_cross_entropy
from ..reference.margin_cross_entropy import GRADIENT_MODES, REDUCTIONS

# name -> (m1, m2, m3)
MARGIN_PRESETS: Dict[str, Tuple[float, float, float]] = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.35),
    "sphereface": (1.35, 0.0, 0.0),
}


class NormalizedLinear(nn.Module):
    """Cosine logits: normalize(x) @ normalize(weight).T, [N, in_features] -> [N, num_classes].

    The weight [num_classes, in_features] is initialised from N(0, 0.01^2) as
    insightface's Partial FC does (its scale does not matter after the
    normalisation). Features and weights are normalised with eps=1e-12 (F.normalize).
    """

    def __init__(self, in_features: int, num_classes: int, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


class MarginSoftmaxHead(nn.Module):
    """A NormalizedLinear classifier trained with the combined margin loss.

    forward(features [N, in_features], labels [N]) -> the loss of
    margin_cross_entropy(cos_logits, labels, s, m1, m2, m3, reduction, gradient)
    (see there for the formula, the ignored label -1 and the two gradient modes).
    ``logits(features)`` gives s * cos without a margin, for evaluation.
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m1: float = 1.0,
                 m2: float = 0.5, m3: float = 0.0, reduction: str = "mean",
                 gradient: str = "straight_through", device=None, dtype=None):
        super().__init__()
        # Checked here, not at the first forward (same conditions as the op's).
        fn = f"{type(self).__name__}()"
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"{fn}: s must be a positive finite scale, got {s}")
        if not (math.isfinite(m1) and m1 > 0):
            raise ValueError(f"{fn}: m1 must be positive and finite, got {m1}")
        if not 0 <= m2 < math.pi:
            raise ValueError(f"{fn}: m2 must be in [0, pi), got {m2}")
        if not math.isfinite(m3):
            raise ValueError(f"{fn}: m3 must be finite, got {m3}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"{fn}: gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
        self.linear = NormalizedLinear(in_features, num_classes, device=device, dtype=dtype)
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.reduction = reduction
        self.gradient = gradient

    @classmethod
    def from_preset(cls, name: str, in_features: int, num_classes: int, s: float = 64.0,
                    **kwargs) -> "MarginSoftmaxHead":
        """A head with the margins of MARGIN_PRESETS[name] ("arcface", "cosface", "sphereface")."""
        if name not in MARGIN_PRESETS:
            raise ValueError(f"unknown margin preset {name!r}; expected one of {sorted(MARGIN_PRESETS)}")
        m1, m2, m3 = MARGIN_PRESETS[name]
        return cls(in_features, num_classes, s, m1, m2, m3, **kwargs)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def cosines(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """s * cos, no margin: the logits at test time."""
        return self.linear(features) * self.s

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin_cross_entropy(self.linear(features), labels, self.s, self.m1, self.m2, self.m3,
                                    reduction=self.reduction, gradient=self.gradient)

    def extra_repr(self) -> str:
        return (f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, reduction={self.reduction!r}, "
                f"gradient={self.gradient!r}")


class ArcFaceHead(MarginSoftmaxHead):
    """ArcFace: cos(theta + m) on the target, (m1, m2, m3) = (1, m, 0)."""

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.5, **kwargs):
        super().__init__(in_features, num_classes, s, 1.0, m, 0.0, **kwargs)


class CosFaceHead(MarginSoftmaxHead):
    """CosFace: cos(theta) - m on the target, (m1, m2, m3) = (1, 0, m)."""

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.35, **kwargs):
        super().__init__(in_features, num_classes, s, 1.0, 0.0, m, **kwargs)


class SphereFaceHead(MarginSoftmaxHead):
    """SphereFace, approximated as cos(m * theta) on the target, (m1, m2, m3) = (m, 0, 0)
    (with the monotone continuation past m * theta = pi)."""

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 1.35, **kwargs):
        super().__init__(in_features, num_classes, s, m, 0.0, 0.0, **kwargs)
