"""margin_cross_entropy (ArcFace, s=64, m=0.5) forward + backward: fused vs the PyTorch formulation.

"fused" is retinaface_ext.ops.margin_cross_entropy; "reference" is
retinaface_ext.reference.margin_cross_entropy, insightface's formulation
(clone the cosine logits, write the margined target logit under no_grad,
scale, F.cross_entropy, autograd). Both run forward and
torch.autograd.grad(loss, cos_logits) on the same float32 [512, 100000]
cosines (quick mode: [64, 10000]) with 5% of the labels -1.

Every entry also records the PEAK MEMORY of one untimed call, in MB, in its
extra_info (``peak_mb``, shown by ``python -m benchmarks.table``): the most
bytes held at once by tensors allocated during the call (the returned loss
and gradient included; the inputs excluded).
  * CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() before.
  * CPU: torch has no peak counter, so the allocator's events are recorded
    with torch.profiler (profile_memory=True) and replayed in time order:
    peak = max over time of (bytes allocated - bytes freed) since the start.
    This counts tensor storage from PyTorch's CPU allocator (what an [N, C]
    temporary costs), not the process RSS.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import harness
from retinaface_ext import HAS_EXTENSION, ops, reference

QUICK = harness.quick()
SHAPES = ((64, 10_000),) if QUICK else ((512, 100_000),)
IMPLS = ("fused", "reference")
S, M1, M2, M3 = 64.0, 1.0, 0.5, 0.0  # ArcFace


def _problem(rows: int, cols: int, device: str):
    g = torch.Generator().manual_seed(0)
    cos = (torch.rand(rows, cols, generator=g) - 0.5) * 0.6
    labels = torch.randint(0, cols, (rows,), generator=g)
    cos[torch.arange(rows), labels] = torch.rand(rows, generator=g) * 0.8
    labels[torch.rand(rows, generator=g) < 0.05] = -1
    return cos.to(device).requires_grad_(), labels.to(device)


def _step(lib, cos, labels):
    loss = lib.margin_cross_entropy(cos, labels, S, M1, M2, M3)
    (grad,) = torch.autograd.grad(loss, cos)
    return loss, grad


def _cpu_peak_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result  # its bytes were held until here, so they count towards the peak
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def peak_memory_mb(fn, device: str) -> float:
    """Peak MB of tensors allocated by one call of fn (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
    else:
        peak = _cpu_peak_bytes(fn)
    return peak / 2**20


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_margin_cross_entropy(bench, impl, shape, device):
    rows, cols = shape
    cos, labels = _problem(rows, cols, device)
    lib = ops if impl == "fused" else reference

    def fn():
        result = _step(lib, cos, labels)
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    info = {}
    if impl != "fused" or HAS_EXTENSION:  # bench() skips a fused entry without the extension
        info["peak_mb"] = round(peak_memory_mb(fn, device), 1)
    size = f"{rows} x {cols} classes" + (" (CUDA)" if device == "cuda" else "")
    loss, grad = bench(fn, op="margin_cross_entropy fwd+bwd", size=size, impl=impl, **info)
    assert torch.isfinite(loss) and grad.shape == cos.shape


def test_cpu_peak_counter():
    # The replay sees a freed temporary and what is still held at the end.
    def fn():
        scratch = torch.ones(4 * 2**20, dtype=torch.uint8)  # 4 MiB, freed
        del scratch
        kept = torch.ones(2**20, dtype=torch.uint8)  # 1 MiB, returned
        more = torch.ones(2 * 2**20, dtype=torch.uint8)  # 2 MiB, freed
        del more
        return kept

    assert peak_memory_mb(fn, "cpu") == pytest.approx(4.0, abs=0.01)
