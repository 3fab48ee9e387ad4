"""Where the default schedule's cost goes, cycle by cycle (issue 5).

Runs a trainer plain and watched (default schedule), alternated, and times every cycle from the
optimizer's step post hook (a hook of the same cost in both runs: a cycle ends at its last step,
16 steps a cycle in both trainers). Per kind of cycle, the median duration over cycles and
repeats, plain and watched, and their ratio:

- recorded: a cycle the schedule records (the first one is left out: it holds the warm-up);
- armed: the skipped cycle just before a recorded one (forward hooks back in its update phase,
  the parameters' snapshots kept current);
- flush: the first skipped cycle after recorded ones (the buffered records are converted at its
  start, and written to Parquet by the writer thread while it runs);
- skipped: every other cycle.

Cases: ``cartpole`` (examples/ CleanRL-style CartPole, tiny MLP) and ``mlp512`` (the 3 x 512 MLP of
benchmarks/device_ppo.py on the CPU, batch 4096).

Usage: python benchmarks/cycle_costs.py [--case cartpole|mlp512] [--cycles 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_ppo import Config, make_actor, train  # noqa: E402
from example_overhead import load_example  # noqa: E402

import ppo_probe  # noqa: E402
from ppo_probe.capture.session import Settings  # noqa: E402

STEPS_PER_CYCLE = 16
TMP = Path(tempfile.mkdtemp())


def timed_cycles(build: Callable[[int], tuple[Callable[[], None], torch.nn.Module, torch.optim.Optimizer]],
                 cycles: int, watched: bool) -> list[float]:
    """Durations of cycles 1 .. cycles-1 (last step to last step)."""
    train_fn, actor, optim = build(cycles)
    ends: list[float] = []
    handle = optim.register_step_post_hook(lambda *_: ends.append(time.perf_counter()))
    try:
        if watched:
            with ppo_probe.watch(actor, optim, out=TMP / f"run{time.time_ns()}"):
                train_fn()
        else:
            train_fn()
    finally:
        handle.remove()
    last = ends[STEPS_PER_CYCLE - 1 :: STEPS_PER_CYCLE]
    return [b - a for a, b in zip(last[:-1], last[1:])]


def cartpole(cycles: int):  # noqa: ANN201
    example = load_example()
    cfg = example.Config(seed=1, total_timesteps=cycles * 512)
    envs, agent, optim = example.build(cfg)
    return (lambda: example.train(cfg, envs, agent, optim)), agent, optim


def mlp512(cycles: int):  # noqa: ANN201
    cfg = Config(device="cpu", cycles=cycles)
    torch.manual_seed(cfg.seed)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    return (lambda: train(cfg, actor, optim)), actor, optim


def kinds(cycles: int) -> dict[str, list[int]]:
    s = Settings()
    rec = [c for c in range(1, cycles) if s.scheduled(c)]
    armed = [c for c in range(1, cycles) if not s.scheduled(c) and s.scheduled(c + 1)]
    flush = [c for c in range(1, cycles) if not s.scheduled(c) and s.scheduled(c - 1) and c not in armed]
    skipped = [c for c in range(1, cycles) if c not in rec + armed + flush]
    return {"recorded": rec, "armed": armed, "flush": flush, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("cartpole", "mlp512"), default="cartpole")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    build = cartpole if args.case == "cartpole" else mlp512
    timed_cycles(build, 3, False)  # warm-up
    timed_cycles(build, 3, True)
    plain, watched = [], []
    for _ in range(args.repeats):
        plain.append(timed_cycles(build, args.cycles, False))
        watched.append(timed_cycles(build, args.cycles, True))
    print(f"{args.case}, {args.cycles} cycles, default schedule, {args.repeats} alternated repeats")
    print("| cycle kind | cycles | plain ms (median) | watched ms (median) | ratio |")
    print("|---|---|---|---|---|")
    for kind, cs in kinds(args.cycles).items():
        if not cs:
            continue
        p = statistics.median(t[c - 1] for t in plain for c in cs)
        w = statistics.median(t[c - 1] for t in watched for c in cs)
        print(f"| {kind} | {len(cs)} | {p * 1e3:.1f} | {w * 1e3:.1f} | {w / p:.3f} |")
    ratio = statistics.median(sum(w) / sum(p) for w, p in zip(watched, plain))
    print(f"cycles 1-{args.cycles - 1} in all, watched / plain: {ratio:.3f} (median of repeats)")


if __name__ == "__main__":
    main()
