"""pytest configuration of the benchmark suite: quick mode, the ``bench`` fixture, data fixtures."""
import os

import pytest

from benchmarks import harness, widerface


def pytest_configure(config):
    # --benchmark-disable is the smoke-test run (every entry once): use the small
    # sizes unless RETINAFACE_BENCH_QUICK says otherwise.
    env = os.environ.get(harness.QUICK_ENV)
    if env is not None:
        harness.set_quick(env == "1")
    else:
        harness.set_quick(bool(config.getoption("benchmark_disable", default=False)))
    # torch's default thread count unless asked otherwise (a loaded machine makes
    # OpenMP threads spin: RETINAFACE_BENCH_THREADS=1 gives steadier numbers there).
    threads = os.environ.get(harness.THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def pytest_report_header(config):
    import torch

    from retinaface_ext import HAS_EXTENSION

    mode = "quick (small sizes)" if harness.quick() else "full sizes"
    data = widerface.gt_folder() or "missing (WIDER FACE entries skip)"
    return [
        f"retinaface-ext benchmarks: {mode}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; extension built: {HAS_EXTENSION}",
        f"WIDER FACE val ground truth: {data}",
    ]


@pytest.fixture
def bench(benchmark, request):
    """Times one entry: ``bench(fn, op=..., size=..., impl="fused" | "reference" | "biubug6")``."""
    return harness.Bench(benchmark, request)


@pytest.fixture(scope="session")
def wider_available():
    if not widerface.available():
        pytest.skip(widerface.missing_reason())
