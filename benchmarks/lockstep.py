"""Two variants run at the same time, one per core, so the host's slow drift moves both alike.

On this repository's shared 2-vCPU hosts the speed of a whole run drifts by 10-20% over minutes
(the same plain CartPole run took 87 to 109 s within half an hour, CPU time moving with it), so
run_all.py's alternated whole runs, each 50-100 s, cannot resolve the long rows' 2-5% targets.
Here each repeat starts the two variants of a pair at the same instant in two fresh processes,
each pinned to one core with torch on one thread, so whatever the host does to one it does to
the other. Per repeat the ratio is B's time / A's; the cores are swapped every repeat (so a
faster core favours neither), and the median and range over repeats are printed. A process that
finishes first keeps training untimed until the other is done, so neither runs its tail alone.

The watched process's writer thread shares its one core with the trainer: the probe is charged
all of it, where a user with a spare core would pay less. ``plain:plain`` pairs print the noise
floor of the method itself, and it is not zero: in session 18, 0.976-1.030 over 976-cycle CartPole
runs, 0.967-1.083 over 200-cycle ones.

Usage: python benchmarks/lockstep.py [--case cartpole-long|mlp-long] [--repeats 6]
                                     [--pairs plain:watched watched:manual ...] [--size N]
(--size: timesteps for cartpole, cycles for mlp; default the long row's: 500,000 / 100.)
Progress goes to stderr; stdout gets the machine line and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CASES = {"cartpole-long": 500_000, "mlp-long": 100}
DEFAULT_PAIRS = ("plain:plain", "plain:watched", "watched:manual", "watched:histogram")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def child(case: str, variant: str, size: int, out: Path) -> None:
    """Warm up, say ready, wait for go, run once timed, report; then train untimed until stop."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import cartpole_runner, mlp_runner
    from device_ppo import Config

    if case == "cartpole-long":
        run, warm, filler = cartpole_runner(), 1024, 2048
    else:
        run = mlp_runner(Config(device="cpu", hidden=512, batch=4096, minibatch=1024))
        warm, filler = 1, 1
    run(variant, out / "warm", warm)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    wall, cpu = run(variant, out / "timed", size)
    print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    i = 0
    while not stop.is_set():  # keep the other core's neighbour as busy as it was
        run("plain", out / f"filler-{i}", filler)
        i += 1


def pair(case: str, a: str, b: str, size: int, cores: tuple[int, int], tmp: Path) -> tuple[dict, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = []
    for variant, core, tag in ((a, cores[0], "a"), (b, cores[1], "b")):
        cmd = [sys.executable, __file__, "--child", variant, "--case", case, "--size", str(size),
               "--out", str(tmp / tag)]
        procs.append(subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}),
        ))
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a child did not start; run it alone to see why")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results: list[dict | None] = [None, None]

        def collect(k: int) -> None:
            results[k] = json.loads(procs[k].stdout.readline())

        threads = [threading.Thread(target=collect, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert results[0] is not None and results[1] is not None
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="cartpole-long")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), metavar="A:B")
    parser.add_argument("--size", type=int, help="timesteps (cartpole) or cycles (mlp)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size or CASES[args.case]
    if args.child:
        child(args.case, args.child, size, args.out)
        return
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs two cores to run a pair side by side")
    core_a, core_b = sorted(os.sched_getaffinity(0))[:2]
    pairs = []
    for spec in args.pairs:
        a, sep, b = spec.partition(":")
        if not sep or not {a, b} <= {"plain", "watched", "manual", "histogram"}:
            parser.error(f"--pairs takes A:B of plain, watched, manual, histogram; got {spec!r}")
        pairs.append((a, b))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from run_all import machine

    torch.set_num_threads(1)  # as in the children, so the machine line says so
    print(machine() + "; each process pinned to one core, torch on one thread", flush=True)
    ratios: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}
    cpu_ratios: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}
    walls: dict[tuple[str, str], list[tuple[float, float]]] = {p: [] for p in pairs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            cores = (core_a, core_b) if i % 2 == 0 else (core_b, core_a)
            for a, b in pairs:
                ra, rb = pair(args.case, a, b, size, cores, Path(tmp) / f"{i}-{a}-{b}")
                ratios[(a, b)].append(rb["wall"] / ra["wall"])
                cpu_ratios[(a, b)].append(rb["cpu"] / ra["cpu"])
                walls[(a, b)].append((ra["wall"], rb["wall"]))
                log(f"  repeat {i} cores {cores}: {a} {ra['wall']:.2f}s  {b} {rb['wall']:.2f}s  "
                    f"ratio {ratios[(a, b)][-1]:.4f} (cpu {cpu_ratios[(a, b)][-1]:.4f})")
    print(f"\n{args.case}, size {size}, {args.repeats} repeats, cores swapped each repeat\n")
    print("| B / A | A s (median) | B s (median) | ratio, median | per-repeat range | CPU-time ratio, median |")
    print("|---|---|---|---|---|---|")
    for a, b in pairs:
        r = ratios[(a, b)]
        print(f"| {b} / {a} | {statistics.median(w[0] for w in walls[(a, b)]):.2f} "
              f"| {statistics.median(w[1] for w in walls[(a, b)]):.2f} | {statistics.median(r):.4f} "
              f"| {min(r):.4f}-{max(r):.4f} | {statistics.median(cpu_ratios[(a, b)]):.4f} |")


if __name__ == "__main__":
    main()
