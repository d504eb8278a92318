"""Benchmark inputs: realistic, deterministic, built once per session (cached).

Ground truth comes from WIDER FACE (benchmarks/widerface.py). Network outputs
are random but shaped like a trained RetinaFace's: small box/landmark
regressions, background-leaning class scores. Everything here is built
without the ops under test (priors come from the reference when the fused
op is missing; realistic positives from the biubug6 baseline matcher), so a
broken op never changes the inputs another op is timed on.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from benchmarks import widerface
from benchmarks.baselines import biubug6
from retinaface_ext import reference

IMAGE_SIZE = (640, 640)  # biubug6's training size (cfg_mnet / cfg_re50 image_size 640 / 840; 640 here)


@functools.lru_cache(maxsize=None)
def priors(image_size=IMAGE_SIZE) -> torch.Tensor:
    """biubug6's priors for image_size = (height, width): 16800 at 640 x 640."""
    return reference.prior_box(image_size)


@functools.lru_cache(maxsize=None)
def ground_truth(batch_size: int) -> widerface.GroundTruthBatch:
    """The first batch_size images of the fixed shuffle of WIDER FACE val."""
    return widerface.batch(batch_size)


@dataclass(frozen=True)
class Predictions:
    loc: torch.Tensor  # [B, P, 4]
    conf: torch.Tensor  # [B, P, 2] logits
    landms: torch.Tensor  # [B, P, 10]

    def with_grad(self):
        """Fresh leaf copies that require grad (one backward per benchmark round is fine on leaves)."""
        return tuple(t.detach().clone().requires_grad_(True) for t in (self.loc, self.conf, self.landms))


@functools.lru_cache(maxsize=None)
def predictions(batch_size: int, num_priors: int, seed: int = 0) -> Predictions:
    g = torch.Generator().manual_seed(seed)
    loc = 0.5 * torch.randn(batch_size, num_priors, 4, generator=g)
    landms = 0.5 * torch.randn(batch_size, num_priors, 10, generator=g)
    conf = torch.randn(batch_size, num_priors, 2, generator=g)
    conf[..., 0] += 2.0  # background-leaning, like a network a few epochs in
    return Predictions(loc, conf, landms)


@functools.lru_cache(maxsize=None)
def assignment(batch_size: int) -> torch.Tensor:
    """[B, P] int64: the face each prior is matched to (-1 background), by the biubug6 baseline matcher."""
    gt = ground_truth(batch_size)
    return biubug6.matched_indices([t[:, :4] for t in gt.targets], priors())


@functools.lru_cache(maxsize=None)
def matched_boxes_and_landmarks(batch_size: int):
    """What encode / encode_landmarks see in training: the matched face of every prior, [B, P, 4] and [B, P, 10].

    Background priors take face 0 of their image (biubug6 encodes every
    prior; the values of background rows are never used). Images without
    faces get a unit box, so encode stays finite.
    """
    gt = ground_truth(batch_size)
    index = assignment(batch_size).clamp(min=0)
    boxes = gt.gt_boxes.clone()
    landms = gt.gt_landms.clone()
    empty = gt.gt_counts == 0
    if boxes.shape[1] == 0:
        boxes = boxes.new_zeros(boxes.shape[0], 1, 4)
        landms = landms.new_zeros(landms.shape[0], 1, 10)
    boxes[empty, 0] = torch.tensor([0.25, 0.25, 0.75, 0.75])
    landms[empty, 0] = 0.5
    matched = torch.gather(boxes, 1, index[..., None].expand(-1, -1, 4))
    matched_landms = torch.gather(landms, 1, index[..., None].expand(-1, -1, 10))
    return matched, matched_landms


@functools.lru_cache(maxsize=None)
def hard_negative_inputs(batch_size: int):
    """(conf_loss [B, P], positive [B, P] bool) as MultiBoxLoss computes them before mining."""
    positive = assignment(batch_size) >= 0
    conf = predictions(batch_size, positive.shape[1]).conf
    loss = torch.logsumexp(conf, dim=-1) - conf[..., 0]
    loss = loss.masked_fill(positive, 0.0)
    return loss.contiguous(), positive.contiguous()


@functools.lru_cache(maxsize=None)
def detection_inputs(batch_size: int, seed: int = 0):
    """(loc, conf probabilities, landms) of a batch at 640 x 640, scored like a trained detector.

    Priors matched to a WIDER face score 0.3-1 (several per face, which NMS
    merges); about 200 random priors per image score 0.02-0.3 (false
    positives); every other prior stays below the 0.02 threshold. That is a
    few hundred candidates per image, as in biubug6's detect.py on real photos.
    """
    num_priors = priors().shape[0]
    g = torch.Generator().manual_seed(1000 + seed)
    loc = 0.2 * torch.randn(batch_size, num_priors, 4, generator=g)
    landms = 0.2 * torch.randn(batch_size, num_priors, 10, generator=g)
    score = 0.02 * torch.rand(batch_size, num_priors, generator=g)
    false_positives = torch.rand(batch_size, num_priors, generator=g) < (200.0 / num_priors)
    score = torch.where(false_positives, 0.02 + 0.28 * torch.rand(batch_size, num_priors, generator=g), score)
    faces = assignment(batch_size) >= 0
    score = torch.where(faces, 0.3 + 0.7 * torch.rand(batch_size, num_priors, generator=g), score)
    conf = torch.stack([1.0 - score, score], dim=-1)
    return loc, conf, landms


@functools.lru_cache(maxsize=None)
def nms_boxes(num_boxes: int, seed: int = 0):
    """(boxes [N, 4] xyxy in [0, 1], scores [N], idxs [N] in 0..7): jittered copies around a few hundred centres.

    min(300, N / 10) objects of side 0.01-0.3; every box is an object moved by
    up to 15 % of its size and rescaled by up to +-15 %, so most boxes overlap
    several others, as raw detector outputs do; NMS at 0.4 keeps about one box
    per object (99 of 1000 boxes, about 280 of 20000). The group of a box
    (idxs, for batched_nms) is its object's index modulo 8.
    """
    g = torch.Generator().manual_seed(seed)
    num_objects = max(1, min(300, num_boxes // 10))
    sides = 0.01 + 0.29 * torch.rand(num_objects, 2, generator=g)
    centres = sides / 2 + (1 - sides) * torch.rand(num_objects, 2, generator=g)
    which = torch.randint(num_objects, (num_boxes,), generator=g)
    side = sides[which] * (1 + 0.15 * (2 * torch.rand(num_boxes, 2, generator=g) - 1))
    centre = centres[which] + 0.15 * sides[which] * (2 * torch.rand(num_boxes, 2, generator=g) - 1)
    boxes = torch.cat([centre - side / 2, centre + side / 2], dim=1)
    scores = torch.rand(num_boxes, generator=g)
    idxs = which % 8  # an object's copies share a group, like the boxes of one image in a batch
    return boxes.contiguous(), scores, idxs


def num_priors(image_size) -> int:
    height, width = image_size
    return sum(math.ceil(height / s) * math.ceil(width / s) * 2 for s in (8, 16, 32))
