"""benchmarks/gpu_check.py without a GPU: the plan (--dry-run), the JSON skeleton, and the parsers of
pytest's and compute-sanitizer's output on recorded samples."""
import json

import pytest
from utils import requires_extension

from benchmarks import gpu_check

PYTEST_PASSING = """\
........................................................................ [ 97%]
ssssssssssss                                                             [100%]
=========================== short test summary info ============================
SKIPPED [655] tests/utils.py:12: no CUDA device
967 passed, 655 skipped, 24 warnings in 89.71s (0:01:29)
"""

PYTEST_FAILING = """\
..F.....E.
=================================== FAILURES ===================================
___________________________ test_cuda_equals_cpu[640] __________________________
E   AssertionError: tensors differ
=========================== short test summary info ============================
FAILED tests/test_nms.py::test_cuda_equals_cpu[640] - AssertionError: tensors differ
FAILED tests/test_match.py::test_cuda_parity[crowd] - RuntimeError: CUDA error: an illegal memory access
ERROR tests/test_detection.py::test_cuda_graph - RuntimeError: CUDA error
== 2 failed, 1612 passed, 8 skipped, 3 warnings, 1 error in 75.02s (0:01:15) ==
"""

# pytest killed by the time limit: no summary line.
PYTEST_CUT_SHORT = """\
........................................................................ [ 12%]
........................................
"""

MEMCHECK_CLEAN = """\
========= COMPUTE-SANITIZER
ok prior_box
ok box_iou
all sanitizer cases ran
========= ERROR SUMMARY: 0 errors
"""

MEMCHECK_ERRORS = """\
========= COMPUTE-SANITIZER
ok prior_box
========= Invalid __global__ write of size 4 bytes
=========     at void retinaface::cuda::nms_mask_kernel<float>(...)+0x1f0 in nms_kernel.cu:97
=========     by thread (3,0,0) in block (0,0,0)
=========     Address 0x7f3a1c000100 is out of bounds
=========
========= Program hit cudaErrorLaunchFailure (error 719) due to "unspecified launch failure" on CUDA API call
=========
========= ERROR SUMMARY: 2 errors
"""

MEMCHECK_ONE_ERROR = "========= Invalid __shared__ read of size 8 bytes\n========= ERROR SUMMARY: 1 error\n"

RACECHECK_HAZARDS = """\
========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at 0x1a0 in block_reduce.cuh:41:void block_sum(...)
=========     and Read access at 0x1c8 in block_reduce.cuh:47:void block_sum(...) [256 hazards]
=========
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""

RACECHECK_CLEAN = "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n"

SANITIZER_UNSUPPORTED = """\
========= COMPUTE-SANITIZER
========= Error: Device not supported. Please refer to the "Supported Devices" section of the sanitizer documentation
"""


def test_pytest_summary_of_a_passing_run():
    summary = gpu_check.parse_pytest_summary(PYTEST_PASSING)
    assert summary == {"passed": 967, "failed": 0, "skipped": 655, "errors": 0, "complete": True,
                       "failed_tests": []}


def test_pytest_summary_of_a_failing_run_names_the_tests():
    summary = gpu_check.parse_pytest_summary(PYTEST_FAILING)
    assert (summary["passed"], summary["failed"], summary["skipped"], summary["errors"]) == (1612, 2, 8, 1)
    assert summary["failed_tests"] == ["tests/test_nms.py::test_cuda_equals_cpu[640]",
                                       "tests/test_match.py::test_cuda_parity[crowd]",
                                       "tests/test_detection.py::test_cuda_graph"]


def test_pytest_summary_of_a_run_cut_short():
    summary = gpu_check.parse_pytest_summary(PYTEST_CUT_SHORT)
    assert summary["complete"] is False and summary["passed"] == 0


@pytest.mark.parametrize("output,errors", [(MEMCHECK_CLEAN, 0), (MEMCHECK_ERRORS, 2), (MEMCHECK_ONE_ERROR, 1),
                                           (RACECHECK_HAZARDS, 1), (RACECHECK_CLEAN, 0)])
def test_sanitizer_error_counts(output, errors):
    verdict = gpu_check.parse_sanitizer_summary(output)
    assert verdict["errors"] == errors and verdict["complete"]


def test_sanitizer_reports_are_kept():
    verdict = gpu_check.parse_sanitizer_summary(MEMCHECK_ERRORS)
    assert verdict["first_reports"][0] == "Invalid __global__ write of size 4 bytes"
    assert verdict["first_reports"][1].startswith("Program hit cudaErrorLaunchFailure")
    race = gpu_check.parse_sanitizer_summary(RACECHECK_HAZARDS)
    assert race["first_reports"][0].startswith("Error: Race reported between Write access")
    assert race["warnings"] == 0


def test_sanitizer_that_could_not_run_is_incomplete_not_clean():
    verdict = gpu_check.parse_sanitizer_summary(SANITIZER_UNSUPPORTED)
    assert verdict["errors"] is None and verdict["complete"] is False
    assert verdict["first_reports"] == [
        'Error: Device not supported. Please refer to the "Supported Devices" section of the sanitizer '
        "documentation"]


def test_dry_run_plans_every_phase_and_writes_the_skeleton(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    written = list(tmp_path.glob("*-dry-run.json"))
    assert len(written) == 1
    report = json.loads(written[0].read_text())
    assert {"device", "torch", "cuda", "date", "command", "cuda_tests", "sanitizer", "results"} <= set(report)
    assert report["cuda_tests"] == {"passed": None, "failed": None, "skipped": None}
    assert report["command"].startswith("python -m benchmarks.gpu_check --dry-run")
    phases = [line.split(",")[0].strip("[") for line in report["plan"]]
    assert phases == ["build", "dispatch", "tests", "memcheck", "racecheck", "benchmarks"]
    assert "FORCE_CUDA=1" in report["plan"][0] and "TORCH_CUDA_ARCH_LIST=" in report["plan"][0]
    assert "--tool racecheck" in report["plan"][4]
    assert sum(gpu_check.TIME_LIMITS.values()) <= 8 * 60 - 30, "the phases must fit 8 minutes on one H100"
    assert "plan only" in capsys.readouterr().out


def test_refuses_to_run_without_a_gpu(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_results_survive_a_benchmark_phase_cut_short(tmp_path):
    """gpu_bench appends each entry as it is measured; what was written before a timeout is reported."""
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(json.dumps({"name": "nms_n10000", "baseline": "torchvision", "ours_ms": 0.5,
                                 "baseline_ms": 0.6, "speedup": 1.2}) + "\n")
    report = gpu_check.skeleton({"device": "GPU"}, "cmd", "2026-12-07")
    step = gpu_check.Step("benchmarks", ["true"], 1)
    gpu_check.record(report, step, {"status": "timed out", "seconds": 1.0, "output": ""}, tmp_path, "x")
    assert report["results"][0]["name"] == "nms_n10000"
    assert report["phases"]["benchmarks"]["status"] == "timed out"


@requires_extension
def test_sanitizer_cases_call_every_op_with_valid_arguments():
    """The cases compute-sanitizer runs on CUDA, run here on the CPU: an argument error would otherwise
    only show on a GPU machine, where it costs device time."""
    from benchmarks import gpu_sanitizer_cases

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    called = set()

    class RecordOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            called.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    with RecordOps():
        names = list(gpu_sanitizer_cases.cases("cpu"))
    assert names[0] == "prior_box" and len(names) == len(set(names))
    every_op = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("retinaface::")}
    assert every_op, "no retinaface:: ops registered: nothing to compare with"
    assert every_op - called == set(), "ops (and backward ops) the sanitizer would never run"
