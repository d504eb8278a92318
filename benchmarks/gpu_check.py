"""The whole CUDA verification in one command, for a machine with a GPU and no network.

    python -m benchmarks.gpu_check --out benchmarks/results     # on the GPU machine
    python -m benchmarks.gpu_check --dry-run                    # anywhere: the plan, and the JSON skeleton

Phases, each in its own process under its own time limit (a phase that runs
over is stopped and the next one starts, so a partial run still reports what
it measured; the JSON is rewritten after every phase):

1. build: ``setup.py build_ext --inplace`` with FORCE_CUDA=1 for the visible
   card's architecture, then a check through the dispatcher that every op
   with a CPU kernel has a CUDA kernel;
2. tests: the whole test suite (``tests/``), now with CUDA (pytest-xdist
   when installed);
3. sanitizer: compute-sanitizer memcheck and racecheck over
   ``benchmarks.gpu_sanitizer_cases`` (one small call of every op);
4. benchmarks: ``benchmarks.gpu_bench`` (multibox_loss at B=256, nms on 10k
   boxes, detect_postprocess at B=64, a B=256 training step).

Output: ``<out>/<date>-<device>.json`` with device, torch, CUDA, date, the
command, test counts, sanitizer summaries and the benchmark entries, and
``<out>/<date>-<device>.log`` with everything the phases printed. The WIDER
FACE ground truth the benchmarks need is found as benchmarks/widerface.py says
(``RETINAFACE_WIDERFACE_GT``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]

# Seconds per phase: together under 8 minutes on one H100 with 16 cores.
TIME_LIMITS = {"build": 130, "dispatch": 20, "tests": 120, "memcheck": 40, "racecheck": 40, "benchmarks": 100}


@dataclass
class Step:
    """One command of a phase: what it runs, for how long at most, and what its output means."""

    phase: str
    argv: List[str]
    timeout_s: int
    env: Dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"[{self.phase}, <= {self.timeout_s} s] {env + ' ' if env else ''}{shlex.join(self.argv)}"


# ---------------------------------------------------------------- parsers

_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)\b")


def parse_pytest_summary(output: str) -> Dict[str, object]:
    """Counts from pytest's last summary line ("3 failed, 960 passed, 655 skipped ... in 88.1s"), and failed ids."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    summary = None
    for line in output.splitlines():
        if re.search(r"\bin [\d.]+s\b", line) and _PYTEST_COUNT.search(line):
            summary = line
    if summary is None:
        return {**counts, "complete": False, "failed_tests": []}
    for number, kind in _PYTEST_COUNT.findall(summary):
        key = "errors" if kind.startswith("error") else kind
        if key in counts:
            counts[key] = int(number)
    failed = [m.group(1) for m in re.finditer(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)]
    return {**counts, "complete": True, "failed_tests": failed}


def parse_sanitizer_summary(output: str) -> Dict[str, object]:
    """compute-sanitizer's verdict: error count (memcheck's ERROR SUMMARY, racecheck's hazards) and the first reports."""
    errors: Optional[int] = None
    match = re.search(r"=+ ERROR SUMMARY: (\d+) errors?", output)
    if match:
        errors = int(match.group(1))
    race = re.search(r"=+ RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", output)
    if race:
        errors = int(race.group(2))
    reports = [line.strip("= ").strip() for line in output.splitlines()
               if re.match(r"=+ (Invalid|Error|Race|Program hit|Uninitialized|Barrier|Malloc)", line)]
    return {"errors": errors, "complete": errors is not None, "first_reports": reports[:10],
            "warnings": int(race.group(3)) if race else None}


# ---------------------------------------------------------------- the plan

def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST for the visible card ("9.0" on an H100), "8.0;9.0" when none is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except Exception:  # noqa: BLE001
        pass
    return "8.0;9.0"


def plan(out: Path, stem: str) -> List[Step]:
    python = sys.executable
    jobs = str(os.cpu_count() or 4)
    sanitizer = shutil.which("compute-sanitizer") or "compute-sanitizer"
    pytest_args = [python, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"]
    try:
        import xdist  # noqa: F401

        pytest_args += ["-n", str(min(8, int(jobs)))]
    except ImportError:
        pass
    cases = [python, "-m", "benchmarks.gpu_sanitizer_cases"]
    return [
        # --force: setuptools skips a build whose _C.so is newer than every .cpp/.cu (headers do not
        # count), e.g. a CPU-only one from pip install -e; ninja still recompiles only what changed.
        Step("build", [python, "setup.py", "build_ext", "--inplace", "--force"], TIME_LIMITS["build"],
             {"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": cuda_arch_list(), "MAX_JOBS": jobs}),
        Step("dispatch", [python, "-m", "retinaface_ext", "info", "--require-cuda"], TIME_LIMITS["dispatch"]),
        Step("tests", pytest_args, TIME_LIMITS["tests"]),
        # --error-exitcode: compute-sanitizer exits 0 by default even when it reports errors.
        Step("memcheck", [sanitizer, "--tool", "memcheck", "--leak-check", "no", "--error-exitcode", "1", *cases],
             TIME_LIMITS["memcheck"]),
        Step("racecheck", [sanitizer, "--tool", "racecheck", "--error-exitcode", "1", *cases],
             TIME_LIMITS["racecheck"]),
        Step("benchmarks", [python, "-m", "benchmarks.gpu_bench", "--jsonl", str(out / f"{stem}.jsonl")],
             TIME_LIMITS["benchmarks"]),
    ]


def environment() -> Dict[str, object]:
    info: Dict[str, object] = {"device": None, "torch": None, "cuda": None}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["device"] = torch.cuda.get_device_name(0)
            info["capability"] = f"{props.major}.{props.minor}"
            info["memory_gib"] = round(props.total_memory / 2**30, 1)
            info["multiprocessors"] = props.multi_processor_count
    except Exception as error:  # noqa: BLE001
        info["torch_error"] = str(error)
    info["cpus"] = os.cpu_count()
    info["compute_sanitizer"] = shutil.which("compute-sanitizer")
    return info


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def skeleton(env: Dict[str, object], command: str, date: str) -> Dict[str, object]:
    return {
        "device": env.get("device"), "torch": env.get("torch"), "cuda": env.get("cuda"), "date": date,
        "command": command, "environment": env, "phases": {},
        "cuda_tests": {"passed": None, "failed": None, "skipped": None},
        "sanitizer": {"memcheck": None, "racecheck": None},
        "results": [],
    }


# ---------------------------------------------------------------- running

def run_step(step: Step, log) -> Dict[str, object]:
    """Runs one step under its time limit, teeing its output to the log; returns its record."""
    log.write(f"\n===== {step.describe()}\n")
    log.flush()
    print(f"== {step.phase} (limit {step.timeout_s} s)", flush=True)
    start = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    process = subprocess.Popen(step.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=step.timeout_s)
        status = "ok" if process.returncode == 0 else f"exit {process.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        output, _ = process.communicate()
        status = "timed out"
    seconds = round(time.monotonic() - start, 1)
    log.write(output or "")
    log.write(f"\n===== {step.phase}: {status} in {seconds} s\n")
    log.flush()
    tail = (output or "").strip().splitlines()[-3:]
    print(f"   {status} in {seconds} s" + "".join(f"\n   | {line}" for line in tail), flush=True)
    return {"status": status, "seconds": seconds, "output": output or ""}


def record(report: Dict[str, object], step: Step, outcome: Dict[str, object], out: Path, stem: str) -> None:
    output = outcome.pop("output")
    report["phases"][step.phase] = outcome
    if step.phase == "tests":
        report["cuda_tests"] = parse_pytest_summary(output)
    elif step.phase in ("memcheck", "racecheck"):
        report["sanitizer"][step.phase] = parse_sanitizer_summary(output)
    elif step.phase == "benchmarks":
        report["results"] = read_results(out / f"{stem}.jsonl")


def read_results(jsonl: Path) -> List[dict]:
    if not jsonl.is_file():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def write_report(report: Dict[str, object], path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for <date>-<device>.json and .log (default: benchmarks/results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and write the JSON skeleton without running anything")
    parser.add_argument("--phases", nargs="*", choices=[s.phase for s in plan(Path("."), "x")],
                        help="run only these phases (default: all)")
    args = parser.parse_args(argv)

    date = datetime.date.today().isoformat()
    env = environment()
    if not args.dry_run and not env.get("device"):
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); "
              "use --dry-run to see the plan", file=sys.stderr)
        return 2
    stem = f"{date}-{slug(env['device'] if env.get('device') else 'dry-run')}"
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.gpu_check " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = skeleton(env, command.strip(), date)
    steps = [s for s in plan(args.out, stem) if not args.phases or s.phase in args.phases]
    json_path, log_path = args.out / f"{stem}.json", args.out / f"{stem}.log"

    from benchmarks import widerface

    report["widerface_gt"] = str(widerface.gt_folder() or "")
    if not report["widerface_gt"]:  # the loss and training-step benchmarks would fail for want of it
        print(f"warning: {widerface.missing_reason()}", file=sys.stderr)
    if args.dry_run:
        report["plan"] = [s.describe() for s in steps]
        for line in report["plan"]:
            print(line)
        write_report(report, json_path)
        print(f"plan only; skeleton written to {json_path}")
        return 0

    (args.out / f"{stem}.jsonl").unlink(missing_ok=True)
    failed = False
    with open(log_path, "w") as log:
        for step in steps:
            blocker = next((phase for phase in ("build", "dispatch") if phase != step.phase
                            and report["phases"].get(phase, {}).get("status") not in (None, "ok")), None)
            if blocker is not None:  # no device time on a build without CUDA kernels
                report["phases"][step.phase] = {"status": f"skipped: the {blocker} step failed"}
                continue
            outcome = run_step(step, log)
            record(report, step, outcome, args.out, stem)
            verdict = report["sanitizer"].get(step.phase) if step.phase in report["sanitizer"] else None
            failed |= outcome["status"] != "ok" or (verdict is not None and verdict["errors"] != 0)
            write_report(report, json_path)
    summarise(report)
    print(f"written: {json_path} and {log_path}")
    return 1 if failed else 0


def summarise(report: Dict[str, object]) -> None:
    print(f"\n{report['device']}, torch {report['torch']}, CUDA {report['cuda']}, {report['date']}")
    for phase, outcome in report["phases"].items():
        print(f"  {phase:<11} {outcome.get('status')} ({outcome.get('seconds', '-')} s)")
    tests = report["cuda_tests"]
    print(f"  tests: {tests.get('passed')} passed, {tests.get('failed')} failed, {tests.get('skipped')} skipped")
    for name, verdict in report["sanitizer"].items():
        if verdict:
            print(f"  {name}: {verdict['errors']} errors")
    for r in report["results"]:
        print(f"  {r['name']:<24} vs {r['baseline']:<16} {r['ours_ms']:>9.3f} ms vs {r['baseline_ms']:>9.3f} ms"
              f"  {r['speedup']}x")


if __name__ == "__main__":
    sys.exit(main())
