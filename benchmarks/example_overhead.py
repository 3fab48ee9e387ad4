"""Watched / plain wall time of examples/cartpole_ppo.py, alternated in one process (issue 2).

Usage: python benchmarks/example_overhead.py [--repeats 5] [--timesteps 8192] [--every N] [--first-cycles N]
Prints each pair of timings, the median ratio, and the bytes per sample row written.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ppo_probe

ROOT = Path(__file__).resolve().parent.parent


def load_example():
    spec = importlib.util.spec_from_file_location("cartpole_ppo", ROOT / "examples" / "cartpole_ppo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cartpole_ppo"] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def timed(example, timesteps: int, out: Path | None, **watch_kwargs: Any) -> float:
    """Seconds of the example's training, plain (``out`` None) or watched with ``watch_kwargs``."""
    cfg = example.Config(seed=1, total_timesteps=timesteps)
    envs, agent, optimizer = example.build(cfg)
    start = time.perf_counter()
    if out is None:
        example.train(cfg, envs, agent, optimizer)
    else:
        with ppo_probe.watch(agent, optimizer, out=out, **watch_kwargs):
            example.train(cfg, envs, agent, optimizer)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timesteps", type=int, default=8192)
    parser.add_argument("--every", type=int, default=None, help="the watch's every= (default: its own)")
    parser.add_argument("--first-cycles", type=int, default=None, help="the watch's first_cycles=")
    args = parser.parse_args()
    schedule = {k: v for k, v in (("every", args.every), ("first_cycles", args.first_cycles)) if v is not None}
    example = load_example()
    timed(example, 1024, None)  # warm-up: imports, allocator, env registration
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            plain = timed(example, args.timesteps, None)
            out = Path(tmp) / f"run{i}"
            watched = timed(example, args.timesteps, out, **schedule)
            ratios.append(watched / plain)
            print(f"run {i}: plain {plain:.3f}s  watched {watched:.3f}s  ratio {watched / plain:.3f}")
        meta = ppo_probe.load(out).meta
    rows = meta["rows_written"]["samples"]
    sample_bytes = meta["bytes_written"]["samples"]
    total = sum(meta["bytes_written"].values())
    print(f"median watched/plain ratio: {statistics.median(ratios):.3f} over {args.repeats} alternated pairs")
    print(f"samples table: {rows} rows, {sample_bytes} bytes = {sample_bytes / rows:.1f} bytes/row "
          f"(all tables: {total / rows:.1f} bytes per sample row)")


if __name__ == "__main__":
    main()
