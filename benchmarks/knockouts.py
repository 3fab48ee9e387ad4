"""What each part of the probe costs, read by switching it off (issue 5).

benchmarks/take_apart.py times each part where it runs; this takes the complementary view and
times the whole run with one part knocked out, so that a part's indirect cost shows too: the
writer thread competing with torch's intra-op threads for the cores, memory handed back to the
OS and faulted in again by the trainer, caches. Every cycle is recorded (``every=1``). Variants,
alternated in this one process, order rotated each repeat:

- plain: no watch;
- watched: the watch as it is;
- no writer: batches are converted but never written (no Parquet encoding, no memory release);
- no trim: written, but the flush's freed memory is not handed back to the OS (Arrow's pool is
  still released; glibc's malloc_trim is skipped). Memory then grows: see run_all.py's memory case;
- no flush: records are dropped at the flush (no conversion, no writing);
- no flush, no optimizer hooks: as above, and the optimizer's pre/post hooks do nothing but count
  the step (no snapshots, no norms).

The ratios are diagnostics for where to look, not a valid run's cost: a knocked-out run writes
less or nothing. Prints the median ratio to plain and its quartiles per variant.

Usage: python benchmarks/knockouts.py [--case mlp512|cartpole] [--repeats 10] [--variants "no writer" ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyarrow as pa  # noqa: E402
from run_all import ALL_CYCLES, Config, cartpole_runner, mlp_runner  # noqa: E402

from ppo_probe.capture import optim, session  # noqa: E402
from ppo_probe.storage import writer  # noqa: E402


def _drop_flush(self: session.Session) -> None:
    self._calls, self._dists, self._steps = [], [], []
    self._rows = self._buffered_bytes = 0


def _count_step(self: optim.StepRecorder, optimizer: Any, args: Any, kwargs: Any) -> None:
    self._session.seq += 1
    self._session.steps_in_cycle += 1


KNOCKOUTS: dict[str, list[tuple[Any, str, Callable[..., Any]]]] = {
    "no writer": [(writer.RunWriter, "submit", lambda self, produce: None)],
    "no trim": [(writer, "release_memory", lambda: pa.default_memory_pool().release_unused())],
    "no flush": [(session.Session, "flush", _drop_flush)],
    "no flush, no optimizer hooks": [
        (session.Session, "flush", _drop_flush),
        (optim.StepRecorder, "pre", lambda self, optimizer, args, kwargs: None),
        (optim.StepRecorder, "post", _count_step),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("mlp512", "cartpole"), default="mlp512")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=list(KNOCKOUTS), default=list(KNOCKOUTS),
                        help="the knock-outs to run beside plain and watched (default: all)")
    args = parser.parse_args()
    if args.case == "cartpole":
        run, size = cartpole_runner(), 8192
    else:
        run, size = mlp_runner(replace(Config(), device="cpu")), 8
    tmp = Path(tempfile.mkdtemp())

    def timed(variant: str, tag: str) -> float:
        saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in KNOCKOUTS.get(variant, [])]
        for owner, name, new in KNOCKOUTS.get(variant, []):
            setattr(owner, name, new)
        try:
            return run("plain" if variant == "plain" else ALL_CYCLES, tmp / f"{variant}-{tag}", size)[0]
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    variants = ["plain", "watched", *args.variants]
    for v in variants:
        timed(v, "warm")
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(args.repeats):
        for v in variants[i % len(variants):] + variants[: i % len(variants)]:
            times[v].append(timed(v, str(i)))
    label = "3x512 MLP, batch 4096, 8 cycles" if args.case == "mlp512" else "CartPole, 16 cycles"
    print(f"{label}, every cycle recorded, {args.repeats} alternated repeats")
    print("| variant | median ratio to plain | quartiles |\n|---|---|---|")
    for v in variants[1:]:
        r = sorted(t / p for t, p in zip(times[v], times["plain"]))
        print(f"| {v} | {statistics.median(r):.3f} | {r[len(r) // 4]:.3f}-{r[(3 * len(r)) // 4]:.3f} |")


if __name__ == "__main__":
    main()
