"""What the recording schedule costs on a long run: CartPole (examples/), 200 cycles by default,
plain against the watch under several schedules, alternated in one process (issue 5).

Variants: the default schedule (cycles 0-7, then every 20th), only cycle 0 recorded (every skipped
cycle's cost alone), only cycles 0-7, only cycles 0, 20, 40, ... Prints per variant the median
of the per-repeat ratios watched / plain, and their range.

Usage: python benchmarks/schedule_cost.py [--repeats 5] [--timesteps 102400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from example_overhead import load_example, timed  # noqa: E402

NEVER = 10**9
VARIANTS: dict[str, dict[str, int] | None] = {
    "plain": None,
    "default schedule (0-7, then every 20th)": {},
    "only cycle 0": {"every": NEVER, "first_cycles": 1},
    "only cycles 0-7": {"every": NEVER, "first_cycles": 8},
    "only cycles 0, 20, 40, ...": {"every": 20, "first_cycles": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timesteps", type=int, default=102_400)
    args = parser.parse_args()
    example = load_example()
    tmp = Path(tempfile.mkdtemp())

    def run(kwargs: dict[str, int] | None, timesteps: int) -> float:
        out = None if kwargs is None else tmp / f"run{time.time_ns()}"
        return timed(example, timesteps, out, **(kwargs or {}))

    run(None, 4096)  # warm-up
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:  # order rotated
            times[name].append(run(VARIANTS[name], args.timesteps))
    print(f"CartPole, {args.timesteps // 512} cycles, {args.repeats} alternated repeats; plain "
          f"median {statistics.median(times['plain']):.3f} s")
    print("| schedule | watched / plain (median) | range |")
    print("|---|---|---|")
    for name in names[1:]:
        ratios = [w / p for w, p in zip(times[name], times["plain"])]
        print(f"| {name} | {statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |")


if __name__ == "__main__":
    main()
