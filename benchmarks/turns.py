"""Two variants take turns cycle by cycle on one core, so the host's drift cancels (issue 5).

On this repository's shared 2-vCPU hosts the speed of a whole run drifts by 10-20% over
minutes, CPU time with it. run_all.py alternates whole runs (50-100 s each) and lockstep.py runs
the two variants at once on two cores; neither resolves the long rows' 2-5% targets (lockstep's
own A/A pairs spread 0.976-1.030 at 976 cycles in session 18). Here the two variants of a pair
are two fresh processes pinned to the same core, torch on one thread, and they take turns: A runs
one training cycle (rollout and update, up to its last optimizer step) while B waits on a pipe,
then B runs its cycle while A waits, and so on to the end. Whatever the host does over seconds
it does to both within a turn or two.

Each turn is charged the process's CPU time (all its threads: the watched run's writer thread is
counted in full, whenever it runs) and its wall time. The pair's ratio is B's sum over the run /
A's, watch entry, exit and final flush included; the median and range over repeats are printed,
and with ``--kinds`` the ratio per kind of cycle of the default schedule (recorded, armed, flush,
skipped), each kind's cycles summed over all repeats.

What this does not cancel is each process's own layout (where its memory lies, how it meets
the caches): in session 19 plain:plain pairs spread 0.984-1.008 over 6 repeats of 200 cycles and
0.991-1.021 over 5 of 976, and the skipped cycles of one run moved 0.999-1.039 between windows
of 100 cycles (--dump). Only more repeats narrow that, so run a plain:plain pair beside the others.

Both processes share the core's caches, each turn starting where the other left them, and a
watched process's writer thread may still be encoding when its turn ends: it then runs in B's
turn, which is why the CPU-time ratio, not the wall-time one, is the figure to read. ``--pairs``
beyond the first run at the same time on the second core, so two pairs take one pair's time.

Variants: plain, watched (default settings), manual and histogram (the peers of
benchmarks/peers.py), skipping (every cycle after the first skipped by the schedule: what a
skipped cycle costs), and watched-KNOCKOUT or skipping-KNOCKOUT: one part of the probe switched
off as in benchmarks/knockouts.py (no-writer, no-trim, no-flush, no-flush-no-optimizer-hooks), to
read that part's share, or keep-patch: all four of the Categorical patch's methods left wrapped
through skipped cycles (session 19, when only the sampling phase went unwrapped: skipping 1.012,
skipping-keep-patch 1.047 against plain, 6 repeats of 200 cycles).

Usage: python benchmarks/turns.py [--case cartpole-long|mlp-long] [--repeats 5]
                                  [--pairs plain:watched plain:plain ...] [--size N] [--kinds]
                                  [--dump FILE]
(--size: timesteps for cartpole, cycles for mlp; default the long row's: 500,000 / 100.)
Progress goes to stderr; stdout gets the machine line and the tables.
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
import time
from pathlib import Path
from typing import IO, Any

CASES = {"cartpole-long": 500_000, "mlp-long": 100}
DEFAULT_PAIRS = ("plain:watched", "plain:plain")
VARIANTS = ("plain", "watched", "manual", "histogram", "skipping")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def child(case: str, variant: str, size: int, out: Path, core: int) -> None:
    """Pin to ``core``, warm up, then train once with a turn boundary at each cycle's last
    optimizer step: report the turn's CPU and wall seconds on stdout, and wait for the parent's
    next ``go``."""
    os.sched_setaffinity(0, {core})  # first: every thread started from here on inherits it
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cycle_costs import STEPS_PER_CYCLE, cartpole, mlp512
    from run_all import instrument

    variant, _, knockout = variant.partition("-")
    if knockout:  # a part of the probe switched off, to see its share
        for owner, name, new in knockouts()[knockout]:
            setattr(owner, name, new)

    # cycle_costs.py's trainers: (train, actor, optimizer) for a number of cycles; 16 optimizer
    # steps a cycle in both (4 epochs of 4 minibatches)
    build, cycles, warm = (cartpole, size // 512, 4) if case == "cartpole-long" else (mlp512, size, 2)

    if variant == "skipping":  # every cycle after the first skipped: what a skipped cycle costs
        import ppo_probe

        def instrument(variant: str, actor: Any, optim: Any, out: Path) -> Any:
            return ppo_probe.watch(actor, optim, out=out, first_cycles=1, every=10**9)

    run, actor, optim = build(warm)
    with instrument(variant, actor, optim, out / "warm"):
        run()
    run, actor, optim = build(cycles)
    steps = 0
    mark = [0.0, 0.0]

    def turn(tag: str) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        print(f"{tag} {cpu - mark[0]:.6f} {wall - mark[1]:.6f}", flush=True)
        if tag != "end" and sys.stdin.readline().strip() != "go":
            raise SystemExit(0)
        mark[0], mark[1] = time.process_time(), time.perf_counter()

    def boundary(*_: Any) -> None:
        nonlocal steps
        steps += 1
        if steps % STEPS_PER_CYCLE == 0:
            turn("cycle")

    # registered before the watch's own hooks, so it runs first: the probe's work on a cycle's
    # last step falls in the next turn of the same process, charged all the same
    optim.register_step_post_hook(boundary)
    turn("ready")
    with instrument(variant, actor, optim, out / "timed"):
        run()
    turn("end")


def knockouts() -> dict[str, Any]:
    """benchmarks/knockouts.py's knock-outs, named as variants take them ("no flush, no optimizer
    hooks" is ``watched-no-flush-no-optimizer-hooks``), and ``keep-patch``: all four of the
    Categorical patch's methods stay wrapped through a skipped cycle (the watch never narrows it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from knockouts import KNOCKOUTS

    from ppo_probe.capture import categorical

    named = {name.replace(",", "").replace(" ", "-"): patches for name, patches in KNOCKOUTS.items()}
    named["keep-patch"] = [(categorical, "set_needs", lambda session, needs: None)]
    return named


def take_turns(procs: list[subprocess.Popen]) -> list[list[tuple[float, float]]]:
    """Let the processes run one turn each, in order, until all have ended; their turns' times."""
    pipes: list[tuple[IO[str], IO[str]]] = []
    for p in procs:
        assert p.stdin is not None and p.stdout is not None  # both made with PIPE
        pipes.append((p.stdin, p.stdout))
    turns: list[list[tuple[float, float]]] = [[] for _ in procs]
    for _, stdout in pipes:
        line = stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError("a child did not start; run it alone (--child VARIANT --out DIR "
                               "--core N) to see why")
    live = list(range(len(procs)))
    while live:
        for k in list(live):
            stdin, stdout = pipes[k]
            stdin.write("go\n")
            stdin.flush()
            line = stdout.readline().split()
            if not line:
                raise RuntimeError("a child died mid-run")
            turns[k].append((float(line[1]), float(line[2])))
            if line[0] == "end":
                live.remove(k)
    return turns


def pair(case: str, a: str, b: str, size: int, core: int, b_first: bool, tmp: Path) -> list[list[tuple[float, float]]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = []
    order = [(b, "b"), (a, "a")] if b_first else [(a, "a"), (b, "b")]
    try:
        for variant, tag in order:
            cmd = [sys.executable, __file__, "--child", variant, "--case", case, "--size", str(size),
                   "--out", str(tmp / tag), "--core", str(core)]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
        turns = take_turns(procs)
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return turns[::-1] if b_first else turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="cartpole-long")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), metavar="A:B")
    parser.add_argument("--size", type=int, help="timesteps (cartpole) or cycles (mlp)")
    parser.add_argument("--kinds", action="store_true", help="also the ratio per kind of cycle")
    parser.add_argument("--dump", type=Path, help="write every turn's CPU and wall seconds here (JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size or CASES[args.case]
    if args.child:
        child(args.case, args.child, size, args.out, args.core)
        return
    pairs = []
    for spec in args.pairs:
        a, sep, b = spec.partition(":")
        ok = [v in VARIANTS or (v.partition("-")[0] in ("watched", "skipping") and v.partition("-")[2]
                                in knockouts()) for v in (a, b)]
        if not sep or not all(ok):
            parser.error(f"--pairs takes A:B of {', '.join(VARIANTS)}, or watched-KNOCKOUT / "
                         f"skipping-KNOCKOUT of {', '.join(knockouts())}; got {spec!r}")
        pairs.append((a, b))
    cores = sorted(os.sched_getaffinity(0))
    if len(pairs) > len(cores):
        parser.error(f"{len(pairs)} pairs need {len(pairs)} cores; this process may use {len(cores)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from run_all import machine

    torch.set_num_threads(1)  # as in the children, so the machine line says so
    print(machine() + "; both processes of a pair pinned to one core, torch on one thread, "
          "one cycle a turn", flush=True)
    # per pair: per repeat, (A's turns, B's turns)
    runs: dict[tuple[str, str], list[tuple[list[tuple[float, float]], list[tuple[float, float]]]]] = {
        p: [] for p in pairs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            results: dict[tuple[str, str], Any] = {}

            def one(k: int, a: str, b: str, i: int, results: dict[tuple[str, str], Any]) -> None:
                results[(a, b)] = pair(args.case, a, b, size, cores[k], b_first=i % 2 == 1,
                                       tmp=Path(tmp) / f"{i}-{k}")

            threads = [threading.Thread(target=one, args=(k, a, b, i, results))
                       for k, (a, b) in enumerate(pairs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for a, b in pairs:
                if (a, b) not in results:
                    raise SystemExit(f"pair {a}:{b} failed in repeat {i}")
                ta, tb = results[(a, b)]
                runs[(a, b)].append((ta, tb))
                cpu = sum(t[0] for t in tb) / sum(t[0] for t in ta)
                wall = sum(t[1] for t in tb) / sum(t[1] for t in ta)
                log(f"  repeat {i}: {a} {sum(t[0] for t in ta):.2f} s CPU, {b} {sum(t[0] for t in tb):.2f} s CPU: "
                    f"ratio {cpu:.4f} (wall {wall:.4f}), {len(ta) - 1} cycles")

    if args.dump:
        args.dump.write_text(json.dumps({f"{a}:{b}": rs for (a, b), rs in runs.items()}))
    print(f"\n{args.case}, size {size}, {args.repeats} repeats, the first turn alternated each repeat\n")
    print("| B / A | A CPU s (median) | B CPU s (median) | CPU ratio, median | per-repeat range | wall ratio, median |")
    print("|---|---|---|---|---|---|")
    for a, b in pairs:
        rs = runs[(a, b)]
        cpu = [sum(t[0] for t in tb) / sum(t[0] for t in ta) for ta, tb in rs]
        wall = [sum(t[1] for t in tb) / sum(t[1] for t in ta) for ta, tb in rs]
        print(f"| {b} / {a} | {statistics.median(sum(t[0] for t in ta) for ta, _ in rs):.2f} "
              f"| {statistics.median(sum(t[0] for t in tb) for _, tb in rs):.2f} | {statistics.median(cpu):.4f} "
              f"| {min(cpu):.4f}-{max(cpu):.4f} | {statistics.median(wall):.4f} |")
    if not args.kinds:
        return
    from cycle_costs import kinds  # the same kinds of cycle as there

    for a, b in pairs:
        rs = runs[(a, b)]
        # turn 0 is the time from "ready" to the first boundary: cycle 0 (watch entry included);
        # turn c is cycle c; the last turn is the tail (exit, final flush)
        cycles = len(rs[0][0]) - 1
        print(f"\n{b} / {a}, per kind of cycle of the default schedule ({cycles} cycles), CPU time summed over "
              f"{len(rs)} repeats\n")
        print("| kind | cycles | A ms per cycle | B ms per cycle | ratio | share of B's extra |")
        print("|---|---|---|---|---|---|")
        extra_all = sum(sum(t[0] for t in tb) - sum(t[0] for t in ta) for ta, tb in rs)
        rows = dict(kinds(cycles))
        rows["cycle 0 (entry)"] = [0]
        rows["tail (exit)"] = [cycles]
        for kind, cs in rows.items():
            if not cs:
                continue
            sa = sum(ta[c][0] for ta, _ in rs for c in cs)
            sb = sum(tb[c][0] for _, tb in rs for c in cs)
            n = len(cs) * len(rs)
            print(f"| {kind} | {len(cs)} | {sa / n * 1e3:.2f} | {sb / n * 1e3:.2f} | {sb / sa:.4f} "
                  f"| {(sb - sa) / extra_all:.2f} |" if extra_all else f"| {kind} | {len(cs)} | | | {sb / sa:.4f} | |")


if __name__ == "__main__":
    main()
