"""What the probe's buffered records cost Python's garbage collector (issue 5).

Every object a record keeps alive until its flush survives two young collections and is promoted
to the oldest generation; once promotions exceed a quarter of the objects already there (~320,000
in a process holding torch), the next collection is a full one. Prints, on examples/' CartPole:

- the GC-tracked objects alive at the flush of --cycles recorded cycles (every=1, one flush),
  above those alive before the watch, by type;
- what one full collection takes in this process (``gc.collect()``, objects tracked);
- per run of 16 cycles (run_all.py's short row), plain and watched (default schedule),
  alternated --repeats times: the wall time and the collections of each generation with their
  time (``gc.callbacks``).

Usage: python benchmarks/gc_pressure.py [--cycles 8] [--repeats 4]
(another checkout: PYTHONPATH=CHECKOUT python benchmarks/gc_pressure.py)
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from example_overhead import load_example  # noqa: E402

import ppo_probe  # noqa: E402
from ppo_probe.capture import session  # noqa: E402


def alive_at_flush(example, cycles: int) -> None:
    cfg = example.Config(seed=1, total_timesteps=512 * cycles)
    envs, agent, optimizer = example.build(cfg)
    gc.collect()
    before = collections.Counter(type(o).__name__ for o in gc.get_objects())
    flush = session.Session.flush

    def counted(self: session.Session) -> None:
        if self._calls:
            gc.collect()
            now = collections.Counter(type(o).__name__ for o in gc.get_objects())
            extra = now - before
            print(f"tracked objects alive at the flush of {cycles} cycles ({len(self._dists)} dists, "
                  f"{len(self._calls)} log_prob calls, {len(self._steps)} steps): {sum(extra.values())}, "
                  f"by type: {dict(extra.most_common(6))}")
        flush(self)

    session.Session.flush = counted  # type: ignore[method-assign]
    try:
        with ppo_probe.watch(agent, optimizer, out=tempfile.mkdtemp() + "/run", every=1, flush_rows=10**9):
            example.train(cfg, envs, agent, optimizer)
    finally:
        session.Session.flush = flush  # type: ignore[method-assign]


def collections_per_run(example, cycles: int, repeats: int) -> None:
    stats: dict[int, list[float]] = {}
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            stats.setdefault(info["generation"], []).append(time.perf_counter() - started[0])

    print("| run | seconds | gen 0: n, ms | gen 1: n, ms | gen 2 (full): n, ms |")
    print("|---|---|---|---|---|")
    for i in range(repeats):
        for watched in (False, True):
            cfg = example.Config(seed=1, total_timesteps=512 * cycles)
            envs, agent, optimizer = example.build(cfg)
            stats.clear()
            gc.callbacks.append(callback)
            start = time.perf_counter()
            try:
                if watched:
                    with ppo_probe.watch(agent, optimizer, out=tempfile.mkdtemp() + "/run"):
                        example.train(cfg, envs, agent, optimizer)
                else:
                    example.train(cfg, envs, agent, optimizer)
            finally:
                gc.callbacks.remove(callback)
            seconds = time.perf_counter() - start
            cells = [f"{len(stats.get(g, []))}, {sum(stats.get(g, [])) * 1e3:.1f}" for g in range(3)]
            print(f"| {'watched' if watched else 'plain'} {i} | {seconds:.3f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    example = load_example()
    alive_at_flush(example, args.cycles)
    start = time.perf_counter()
    gc.collect()
    print(f"a full collection: {(time.perf_counter() - start) * 1e3:.0f} ms over {len(gc.get_objects())} tracked objects")
    collections_per_run(example, 16, args.repeats)


if __name__ == "__main__":
    main()
