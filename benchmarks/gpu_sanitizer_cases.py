"""One small CUDA call of every op (forward and backward), for compute-sanitizer.

    compute-sanitizer --tool memcheck python -m benchmarks.gpu_sanitizer_cases

Under the sanitizer every launch is instrumented and racecheck is slow, so the
inputs are small, but each kernel path is taken: crowded and empty images,
boxes beyond the mask's 64-box words, more candidates than the top-k,
float32 and half inputs, and the general (C > 2) softmax paths. A kernel that
writes out of bounds or races is reported by the sanitizer; a wrong value is
the CUDA tests' business, not this script's.
"""
import sys

import torch


def cases(device="cuda"):
    """Yields the name of each op family after calling it (on the CPU too, so its arguments stay valid)."""
    from retinaface_ext import ops

    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, dtype=torch.float32):
        return torch.rand(*shape, generator=g, device=device, dtype=dtype)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    priors = ops.prior_box((96, 160), device=device)
    num_priors = priors.shape[0]
    yield "prior_box"

    xy = rand(3, 40, 2) * 0.7
    gt_boxes = torch.cat([xy, xy + 0.05 + 0.25 * rand(3, 40, 2)], dim=-1)
    gt_landms = (gt_boxes[..., None, :2] + 0.02).expand(3, 40, 5, 2).reshape(3, 40, 10).contiguous()
    gt_labels = torch.where(rand(3, 40) < 0.8, 1.0, -1.0)
    gt_counts = torch.tensor([40, 0, 7], device=device)

    ops.box_iou(gt_boxes[0], gt_boxes[2, :7])
    ops.box_iou(gt_boxes[0].half(), gt_boxes[2].half())
    yield "box_iou"

    assigned = ops.match(gt_boxes, gt_counts, priors)
    yield "match"

    loc = randn(3, num_priors, 4, dtype=torch.float32)
    for dtype in (torch.float32, torch.float16):
        boxes = ops.decode(loc.to(dtype), priors)
        ops.encode(boxes, priors)
        points = ops.decode_landmarks(randn(3, num_priors, 10, dtype=dtype), priors)
        ops.encode_landmarks(points, priors)
    yield "box coding"

    loss = rand(3, num_priors)
    ops.hard_negative_mask(loss, assigned >= 0)
    yield "hard_negative_mask"

    boxes = ops.decode(loc[0], priors)
    scores = rand(num_priors)
    ops.nms(boxes, scores, 0.4)
    ops.batched_nms(boxes, scores, torch.randint(0, 4, (num_priors,), device=device, generator=g), 0.4)
    yield "nms"

    conf = torch.softmax(randn(3, num_priors, 2), dim=-1)
    landms = randn(3, num_priors, 10)
    ops.detect_postprocess(loc, conf, landms, priors, pre_nms_top_k=200, max_detections=50)
    ops.detect_postprocess(loc, conf, landms, priors, score_threshold=0.99)
    yield "detect_postprocess"

    for classes in (2, 3):
        tensors = [randn(3, num_priors, 4), randn(3, num_priors, classes), randn(3, num_priors, 10)]
        for t in tensors:
            t.requires_grad_(True)
        sum(ops.multibox_loss(*tensors, priors, gt_boxes, gt_landms, gt_labels, gt_counts)).backward()
    focal_inputs = [randn(3, num_priors, 4), randn(3, num_priors, 2), randn(3, num_priors, 10)]
    for t in focal_inputs:
        t.requires_grad_(True)
    sum(ops.multibox_loss(*focal_inputs, priors, gt_boxes, gt_landms, gt_labels, gt_counts,
                          conf_loss="focal")).backward()
    yield "multibox_loss"

    logits = randn(500, 5).requires_grad_(True)
    labels = torch.randint(-1, 5, (500,), device=device, generator=g)
    ops.sigmoid_focal_loss(logits, labels, reduction="sum").backward()
    ops.softmax_focal_loss(logits, labels, reduction="mean").backward()
    ops.sigmoid_focal_loss(logits, rand(500, 5), reduction="none").sum().backward()
    yield "focal losses"

    cos = (2 * rand(64, 3000) - 1).requires_grad_(True)
    ops.margin_cross_entropy(cos, torch.randint(-1, 3000, (64,), device=device, generator=g)).backward()
    yield "margin_cross_entropy"

    from retinaface_ext.data.augment import AugmentParams, Distortion

    photos = torch.randint(0, 256, (2, 300, 420, 3), dtype=torch.uint8, device=device, generator=g)
    points = torch.tensor([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], device=device)
    landmarks = torch.stack([points * 1.5 + 20, points * 0.5 + 300, points - 30])  # inside, at the border, cut
    ops.align_faces(photos, landmarks, torch.tensor([0, 1, 0], device=device), size=112)
    ops.align_faces(photos.float(), landmarks, torch.tensor([1, 0, 1], device=device), size=224)
    yield "align_faces"

    rows = [AugmentParams(10, 5, 280, 280, 280, True, interpolation, Distortion(True, 8.0, 1.2, 0.7, 5)).row()
            for interpolation in range(5)]
    for dtype in (torch.uint8, torch.float32, torch.float16):
        ops.train_augment(photos[[0, 1, 0, 1, 0]], rows, size=160, dtype=dtype)
    yield "train_augment"

    weights = [0.1 * randn(*shape) for shape in ((8, 3, 3, 3), (8, 1, 3, 3), (16, 8, 1, 1), (16, 1, 3, 3),
                                                 (32, 16, 1, 1), (32, 1, 3, 3), (32, 32, 1, 1))]
    biases = [0.1 * randn(w.shape[0]) for w in weights]
    ops.mobilenet_stem(photos[:, :97, :131].contiguous(), weights, biases)
    yield "mobilenet_stem"

    if device == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_sanitizer_cases: no CUDA device", file=sys.stderr)
        return 2
    for name in cases("cuda"):
        torch.cuda.synchronize()  # an asynchronous error is reported under the op that caused it
        print(f"ok {name}", flush=True)
    print("all sanitizer cases ran", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
