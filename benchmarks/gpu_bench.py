"""GPU timings for ``python -m benchmarks.gpu_check`` (also runnable alone on a CUDA machine).

    python -m benchmarks.gpu_bench --jsonl results.jsonl [--only multibox_loss_b256 ...]

Each entry is timed with CUDA events around the call (after warm-up calls),
median of several repeats, and appended to the JSONL file as soon as it is
measured, so a run cut short by its time box keeps what it measured. Entries
(``name`` / ``baseline``):

* ``multibox_loss_b256``: ``ops.multibox_loss`` forward + backward, B=256 at
  640x640 with WIDER FACE val face counts, against biubug6's MultiBoxLoss
  (``biubug6``), the pure-PyTorch reference (``pure_torch``) and the time to
  read the predictions and write their gradients once at the bandwidth of a
  device-to-device copy measured in the same run (``memory_bandwidth``);
* ``nms_n10000``: ``ops.nms`` of 10k overlapping boxes against
  ``torchvision.ops.nms`` (skipped when torchvision does not import);
* ``detect_postprocess_b64``: against a per-image loop of decode +
  ``torchvision.ops.nms`` (``per_image_loop``);
* ``train_step_b256``: one mobilenet0.25 SGD step at 640x640, B=256, bf16
  autocast, channels_last, with the fused loss against the same step with
  biubug6's loss (``biubug6_loss``); ``outside_network_share`` is the part of
  the fused step not spent in the network's forward + backward + update.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable, List, Optional

import torch

IMAGE_SIZE = (640, 640)
LOSS_ARGS = (2, 0.35, True, 0, True, 7, 0.35, False)  # biubug6's train.py


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, repeat: int = 20) -> float:
    """Median milliseconds of fn() on the current stream, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_bytes_per_ms(num_bytes: int = 1 << 30) -> float:
    """Bytes read plus bytes written per millisecond by a large device-to-device copy."""
    source = torch.empty(num_bytes // 4, dtype=torch.float32, device="cuda").uniform_()
    target = torch.empty_like(source)
    ms = cuda_time_ms(lambda: target.copy_(source), warmup=2, repeat=10)
    return 2 * num_bytes / ms


def entry(name: str, baseline: str, ours_ms: float, baseline_ms: float, **extra) -> dict:
    return {"name": name, "baseline": baseline, "ours_ms": round(ours_ms, 4), "baseline_ms": round(baseline_ms, 4),
            "speedup": round(baseline_ms / ours_ms, 2) if ours_ms > 0 else None, **extra}


def _ground_truth(batch_size: int):
    """WIDER FACE val targets (benchmarks/widerface.py) on CUDA, and where they came from."""
    from benchmarks import widerface

    if not widerface.available():
        raise RuntimeError(widerface.missing_reason())
    return widerface.batch(batch_size, device=torch.device("cuda")), "WIDER FACE val face counts"


def bench_multibox_loss(emit, batch_size: int = 256) -> None:
    from benchmarks import inputs
    from benchmarks.baselines import biubug6
    from retinaface_ext import ops, reference

    gt, data = _ground_truth(batch_size)
    priors = ops.prior_box(IMAGE_SIZE, device="cuda")
    predictions = inputs.predictions(batch_size, priors.shape[0])
    leaves = [t.cuda().requires_grad_(True) for t in (predictions.loc, predictions.conf, predictions.landms)]
    padded = (gt.gt_boxes, gt.gt_landms, gt.gt_labels, gt.gt_counts)

    def step(lib):
        def run():
            for leaf in leaves:
                leaf.grad = None
            sum(lib.multibox_loss(*leaves, priors, *padded)).backward()
        return run

    criterion = biubug6.MultiBoxLoss(*LOSS_ARGS)

    def biubug6_step():
        for leaf in leaves:
            leaf.grad = None
        loss_l, loss_c, loss_landm = criterion(tuple(leaves), priors, gt.targets)
        (2.0 * loss_l + loss_c + loss_landm).backward()

    ours = cuda_time_ms(step(ops))
    info = {"batch": batch_size, "image_size": list(IMAGE_SIZE), "faces": gt.num_faces, "data": data}
    emit(entry("multibox_loss_b256", "pure_torch", ours, cuda_time_ms(step(reference), repeat=10), **info))
    emit(entry("multibox_loss_b256", "biubug6", ours, cuda_time_ms(biubug6_step, warmup=1, repeat=5), **info))
    # Read loc/conf/landms once and write their gradients once: the floor of any fused loss.
    moved = 2 * sum(leaf.numel() * leaf.element_size() for leaf in leaves)
    emit(entry("multibox_loss_b256", "memory_bandwidth", ours, moved / copy_bandwidth_bytes_per_ms(),
               bytes=moved, **info))


def bench_nms(emit, num_boxes: int = 10000) -> None:
    from benchmarks import inputs
    from retinaface_ext import ops

    try:
        import torchvision
    except Exception as error:  # noqa: BLE001 (any import failure means: no baseline)
        print(f"nms_n10000 skipped: torchvision does not import ({error})")
        return
    boxes, scores, _ = (t.cuda() for t in inputs.nms_boxes(num_boxes))
    ours_keep, theirs_keep = ops.nms(boxes, scores, 0.4), torchvision.ops.nms(boxes, scores, 0.4)
    emit(entry("nms_n10000", "torchvision", cuda_time_ms(lambda: ops.nms(boxes, scores, 0.4)),
               cuda_time_ms(lambda: torchvision.ops.nms(boxes, scores, 0.4)),
               kept=int(ours_keep.numel()), same_indices=bool(torch.equal(ours_keep, theirs_keep))))


def per_image_detect(loc, conf, landms, priors, nms, score_threshold=0.02, top_k=5000, keep=750):
    """The loop users write: per image, decode, threshold, top-k, NMS, keep (reference decode + given NMS)."""
    from retinaface_ext import reference

    results = []
    for b in range(loc.shape[0]):
        scores = conf[b, :, 1]
        candidates = torch.nonzero(scores > score_threshold).squeeze(1)
        order = scores[candidates].argsort(descending=True, stable=True)[:top_k]
        chosen = candidates[order]
        boxes = reference.decode(loc[b, chosen], priors[chosen])
        points = reference.decode_landmarks(landms[b, chosen], priors[chosen])
        kept = nms(boxes, scores[chosen], 0.4)[:keep]
        results.append(torch.cat([boxes[kept], scores[chosen][kept, None], points[kept]], dim=1))
    return results


def bench_detect_postprocess(emit, batch_size: int = 64) -> None:
    from benchmarks import inputs
    from retinaface_ext import ops

    try:
        from torchvision.ops import nms as torchvision_nms
        nms_name = "torchvision"
    except Exception:  # noqa: BLE001
        torchvision_nms, nms_name = ops.nms, "retinaface_ext"
    loc, conf, landms = (t.cuda() for t in inputs.detection_inputs(batch_size))
    priors = ops.prior_box(IMAGE_SIZE, device="cuda")
    ours = cuda_time_ms(lambda: ops.detect_postprocess(loc, conf, landms, priors))
    loop = cuda_time_ms(lambda: per_image_detect(loc, conf, landms, priors, torchvision_nms), repeat=10)
    emit(entry("detect_postprocess_b64", "per_image_loop", ours, loop, batch=batch_size, loop_nms=nms_name))


def bench_train_step(emit, batch_size: int = 256) -> None:
    from benchmarks.baselines import biubug6
    from retinaface_ext import ops
    from retinaface_ext.models import RetinaFace

    gt, data = _ground_truth(batch_size)
    torch.manual_seed(0)
    model = RetinaFace("mobilenet0.25").cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch_size, 3, *IMAGE_SIZE, device="cuda").to(memory_format=torch.channels_last)
    priors = ops.prior_box(IMAGE_SIZE, device="cuda")
    criterion = biubug6.MultiBoxLoss(*LOSS_ARGS)

    def make_step(loss_of):
        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                outputs = model(images)
            loss_of(outputs).backward()
            optimizer.step()
        return step

    def fused(outputs):
        loss_l, loss_c, loss_landm = ops.multibox_loss(*outputs, priors, gt.gt_boxes, gt.gt_landms,
                                                       gt.gt_labels, gt.gt_counts)
        return 2.0 * loss_l + loss_c + loss_landm

    def biubug6_loss(outputs):
        loss_l, loss_c, loss_landm = criterion(tuple(o.float() for o in outputs), priors, gt.targets)
        return 2.0 * loss_l + loss_c + loss_landm

    def network_only(outputs):  # the same backward through the network, no loss work
        return sum(o.float().mean() for o in outputs)

    ours = cuda_time_ms(make_step(fused), warmup=3, repeat=10)
    theirs = cuda_time_ms(make_step(biubug6_loss), warmup=1, repeat=5)
    network = cuda_time_ms(make_step(network_only), warmup=2, repeat=10)
    emit(entry("train_step_b256", "biubug6_loss", ours, theirs, batch=batch_size, amp="bf16",
               channels_last=True, images_per_s=round(batch_size / ours * 1e3, 1),
               network_ms=round(network, 3), outside_network_share=round(max(0.0, 1 - network / ours), 4),
               data=data))


BENCHES = {
    "multibox_loss_b256": bench_multibox_loss,
    "nms_n10000": bench_nms,
    "detect_postprocess_b64": bench_detect_postprocess,
    "train_step_b256": bench_train_step,
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jsonl", required=True, help="append one JSON object per measured entry here")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these (default: all)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2

    def emit(result: dict) -> None:
        print(json.dumps(result), flush=True)
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(result) + "\n")

    failures = 0
    for name in args.only or BENCHES:
        start = time.perf_counter()
        try:
            BENCHES[name](emit)
        except Exception as error:  # noqa: BLE001 (one failing entry must not stop the others)
            failures += 1
            print(f"{name} FAILED: {type(error).__name__}: {error}", flush=True)
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
