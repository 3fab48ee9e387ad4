"""Time ``ppo_probe.analyze`` on a run of ~300k paired update rows (issue 3 target: < 3 s here).

Usage: python benchmarks/analyze_speed.py [--pairs 300000] [--keep DIR] [--repeats 3] [--base CHECKOUT]
(--base: another checkout, e.g. ``git worktree add /tmp/base <rev>``: its analyze and this one's
run alternated on the same run, each imported afresh, and the median per-repeat ratio printed.)
The run is produced by a real PPO loop (the contextual bandit of tests/trainers.py) under watch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import ppo_probe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from checkouts import module_from  # noqa: E402
from trainers import BanditConfig, make_actor, train_bandit  # noqa: E402


def make_run(out: Path, pairs: int) -> Path:
    batch, epochs = 4096, 4
    cycles = max(1, -(-pairs // (batch * epochs)))
    cfg = BanditConfig(seed=0, batch=batch, minibatch=512, epochs=epochs, cycles=cycles, lr=1e-3)
    torch.manual_seed(0)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with ppo_probe.watch(actor, optim, out=out, every=1) as w:  # every cycle: all the pairs
        train_bandit(cfg, {"a": actor}, optim)
    return w.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--keep", type=Path, default=None, help="write (or reuse) the run here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base", type=Path, default=None, help="another checkout to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "run"
        if not (out / "meta.json").exists():
            start = time.perf_counter()
            make_run(out, args.pairs)
            print(f"wrote the run in {time.perf_counter() - start:.1f}s")
        if args.base is not None:
            compare(out, args.base, args.repeats)
            return
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = ppo_probe.analyze(out)
            times.append(time.perf_counter() - start)
        n = len(report.run.pairs)
        best, median = min(times), sorted(times)[len(times) // 2]
        print(f"analyze: {n} pairs, {len(report.per_step)} steps, {len(report.diagnostics)} findings")
        print(f"time: median {median:.2f}s, best {best:.2f}s over {args.repeats} runs "
              f"= {n / median:,.0f} pairs/s (target < 3 s for 300k pairs)")


def compare(out: Path, base: Path, repeats: int) -> None:
    """This checkout's analyze against ``base``'s on one run, alternated (order flipped each
    repeat)."""
    roots = {"this checkout": ROOT, f"base ({base})": base}
    times: dict[str, list[float]] = {name: [] for name in roots}
    found: dict[str, list[str]] = {}
    for i in range(repeats):
        for name in list(roots)[:: 1 if i % 2 == 0 else -1]:
            analyze = module_from(roots[name], "ppo_probe").analyze
            start = time.perf_counter()
            report = analyze(out)
            times[name].append(time.perf_counter() - start)
            found[name] = sorted(report.diagnostics["id"])
    for name, t in times.items():
        print(f"{name}: median {statistics.median(t):.2f}s, range {min(t):.2f}-{max(t):.2f}s, "
              f"diagnostics {found[name]}")
    this, other = times.values()
    print(f"ratio this / base: median {statistics.median(a / b for a, b in zip(this, other)):.3f} "
          f"over {repeats} alternated repeats")


if __name__ == "__main__":
    main()
