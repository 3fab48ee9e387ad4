"""Where a recorded cycle's cost goes, part by part, on one trainer (issue 5).

Runs the trainer plain and watched (every cycle recorded), alternated, and one more watched run in
which each part of the probe that runs on the training thread is timed (exclusive time: a flush
that a Categorical event triggers counts as flush, not as that event), and the writer thread's
work is timed apart. Prints per part: calls, total ms, us per call, and its share of the plain
run; then what no part accounts for (the Categorical dispatchers and the hooks' dispatch, the
garbage collector, cache and core contention with the writer thread).

Cases: ``cartpole`` (examples/ CleanRL-style CartPole, 8,192 steps: 16 cycles) and ``mlp512``
(benchmarks/device_ppo.py's 3 x 512 MLP on the CPU, batch 4096, 8 cycles): the two short cases
of benchmarks/run_all.py, here with every cycle recorded.

Usage: python benchmarks/take_apart.py [--case cartpole|mlp512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_ppo import Config, make_actor, train  # noqa: E402
from example_overhead import load_example  # noqa: E402

import ppo_probe  # noqa: E402
from ppo_probe.capture import entries, optim, session  # noqa: E402
from ppo_probe.storage import writer  # noqa: E402

TMP = Path(tempfile.mkdtemp())


class Timers:
    """Exclusive time per part on the training thread; the writer thread's time apart."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []  # [start, child time] per open part
        self._main = threading.main_thread()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not self._main:
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._add(f"{name} (writer thread)", time.perf_counter() - start)
            frame = [time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                spent = time.perf_counter() - frame[0]
                self._add(name, spent - frame[1])
                if self._stack:
                    self._stack[-1][1] += spent

        return timed

    def _add(self, name: str, seconds: float) -> None:
        self.total[name] = self.total.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1


@contextmanager
def timed_parts(timers: Timers):  # noqa: ANN201
    """Patch the probe's entry points with timed versions for the duration (benchmark only)."""
    S, E, R, W = session.Session, entries.EntryTracker, optim.StepRecorder, writer.RunWriter
    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, attr: str, new: Any) -> None:
        saved.append((owner, attr, owner.__dict__[attr]))
        setattr(owner, attr, new)

    try:
        for name in ("on_dist_init", "on_sample", "on_log_prob", "on_entropy"):
            patch(S, name, timers.wrap(f"Categorical event: {name}", S.__dict__[name]))
        patch(S, "flush", timers.wrap("flush (conversion on the CPU)", S.__dict__["flush"]))
        grad_hook = S.__dict__["_grad_hook"]
        patch(S, "_grad_hook", lambda self, *a: timers.wrap("gradient hooks", grad_hook(self, *a)))
        patch(R, "pre", timers.wrap("optimizer pre-step hook", R.__dict__["pre"]))
        patch(R, "post", timers.wrap("optimizer post-step hook", R.__dict__["post"]))
        hooks_for, global_hooks = E.__dict__["hooks_for"], E.__dict__["global_hooks"]

        def timed_pair(pair: tuple[Callable, Callable]) -> tuple[Callable, Callable]:
            return timers.wrap("forward hooks", pair[0]), timers.wrap("forward hooks", pair[1])

        patch(E, "hooks_for", lambda self, *a: timed_pair(hooks_for(self, *a)))
        patch(E, "global_hooks", lambda self: timed_pair(global_hooks(self)))
        patch(W, "_write_held", timers.wrap("Parquet writing", W.__dict__["_write_held"]))
        patch(ppo_probe.Watch, "_finish", timers.wrap("watch exit (final flush, writer join)",
                                                      ppo_probe.Watch.__dict__["_finish"]))
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def cartpole() -> Callable[[bool], float]:
    example = load_example()

    def run(watched: bool) -> float:
        cfg = example.Config(seed=1, total_timesteps=8192)
        envs, agent, optimizer = example.build(cfg)
        start = time.perf_counter()
        if watched:
            with ppo_probe.watch(agent, optimizer, out=TMP / f"c{time.time_ns()}", every=1):
                example.train(cfg, envs, agent, optimizer)
        else:
            example.train(cfg, envs, agent, optimizer)
        return time.perf_counter() - start

    return run


def mlp512() -> Callable[[bool], float]:
    cfg = replace(Config(), device="cpu", cycles=8)

    def run(watched: bool) -> float:
        torch.manual_seed(cfg.seed)
        actor = make_actor(cfg)
        optimizer = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
        start = time.perf_counter()
        if watched:
            with ppo_probe.watch(actor, optimizer, out=TMP / f"m{time.time_ns()}", every=1):
                train(cfg, actor, optimizer)
        else:
            train(cfg, actor, optimizer)
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["cartpole", "mlp512"], default="cartpole")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = cartpole() if args.case == "cartpole" else mlp512()
    run(False)  # warm-up
    plain, watched = [], []
    for _ in range(args.repeats):
        plain.append(run(False))
        watched.append(run(True))
    timers = Timers()
    with timed_parts(timers):
        timed_total = run(True)
    p, w = statistics.median(plain), statistics.median(watched)
    print(f"{args.case}, every cycle recorded: plain {p:.3f} s, watched {w:.3f} s (x{w / p:.3f}, "
          f"median of {args.repeats} alternated); the timed run took {timed_total:.3f} s")
    print("| part | calls | ms | us per call | % of plain |")
    print("|---|---|---|---|---|")
    on_main = 0.0
    for name in sorted(timers.total, key=lambda n: -timers.total[n]):
        seconds, calls = timers.total[name], timers.calls[name]
        if "writer thread" not in name:
            on_main += seconds
        print(f"| {name} | {calls} | {seconds * 1e3:.1f} | {seconds / calls * 1e6:.1f} | "
              f"{seconds / p * 100:.1f} |")
    rest = w - p - on_main
    print(f"| not in any part (dispatch, GC, cache, contention) |  | {rest * 1e3:.1f} |  | "
          f"{rest / p * 100:.1f} |")


if __name__ == "__main__":
    main()
