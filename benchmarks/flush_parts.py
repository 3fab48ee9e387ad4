"""What one flush costs, part by part, on examples/ CartPole with the default schedule (issue 5).

Runs examples/cartpole_ppo.py watched for --cycles cycles (default schedule: cycles 0-7, then
every 20th, so a flush per recorded cycle after the first eight) and times, in thread CPU time,
each call of: the session's flush on the training thread (the conversion of the buffered
records), and on the writer thread the taking of a batch, the writing of held batches, each
part file (``_write_part``, of which ``pq.write_table``) and the memory release. Prints calls,
median and total per part.

Usage: python benchmarks/flush_parts.py [--cycles 100]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from example_overhead import load_example  # noqa: E402

import ppo_probe  # noqa: E402
from ppo_probe.capture import session  # noqa: E402
from ppo_probe.storage import writer  # noqa: E402

TIMES: dict[str, list[float]] = collections.defaultdict(list)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append((time.thread_time() - start) * 1e3)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    session.Session.flush = timed("flush: conversion (training thread)", session.Session.flush)  # type: ignore[method-assign]
    writer.RunWriter._take_batch = timed("writer: take a batch", writer.RunWriter._take_batch)  # type: ignore[method-assign]
    writer.RunWriter._write_held = timed("writer: write held batches (all below)", writer.RunWriter._write_held)  # type: ignore[method-assign]
    writer.RunWriter._write_part = timed("writer: one part file", writer.RunWriter._write_part)  # type: ignore[method-assign]
    writer.pq.write_table = timed("writer: pq.write_table", writer.pq.write_table)
    writer.release_memory = timed("writer: release memory", writer.release_memory)
    example = load_example()
    cfg = example.Config(seed=1, total_timesteps=512 * args.cycles)
    envs, agent, optimizer = example.build(cfg)
    with ppo_probe.watch(agent, optimizer, out=Path(tempfile.mkdtemp()) / "run"):
        example.train(cfg, envs, agent, optimizer)
    print(f"examples/ CartPole, {args.cycles} cycles, default schedule: thread CPU ms per call")
    print("| part | calls | median | total |")
    print("|---|---|---|---|")
    for name, values in TIMES.items():
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {sum(values):.1f} |")


if __name__ == "__main__":
    main()
