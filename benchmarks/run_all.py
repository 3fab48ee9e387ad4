"""The benchmark suite in one table: overhead vs plain and vs peers, memory, analysis, storage.

Usage: python benchmarks/run_all.py [--repeats 5] [--timesteps 8192] [--long-timesteps 500000]
                                    [--hidden 512] [--batch 4096] [--cycles 8] [--long-cycles 100]
                                    [--mem-cycles 200] [--pairs 1000000]
                                    [--quick] [--skip-analysis] [--cases CASE ...]

Cases, each a ratio measured in one fresh process of its own (so no case runs on the heap and
caches an earlier case left behind; the memory case already ran apart): every repeat runs plain, watched
(``ppo_probe.watch(actor, optim, out=tmp)``, its exit and final flush included) and the two peers of
benchmarks/peers.py, in an order rotated by one each repeat; each variant's time is the median
over repeats and each ratio the median of the per-repeat ratios to that repeat's plain run.

- cartpole tiny MLP: examples/cartpole_ppo.py ``train()``. Its target (watched / plain <= 1.05)
  is read at CleanRL's default length for CartPole, 500,000 steps = 976 cycles (56 recorded by
  the default schedule), against plain and both peers. A short run of 16 cycles (8 recorded) is
  printed above it with no target, with the watch recording every cycle (``every=1``) beside it:
  what a short sanity run (``ppo-probe run`` / ``check``) pays;
- 3x512 MLP: benchmarks/device_ppo.py's trainer on the CPU. Its target (<= 1.02) is read at 100
  cycles of batch 4096 (409,600 steps, under CleanRL's 500,000; 12 cycles recorded), against
  plain and both peers; a short run of 8 cycles (all recorded) is printed with no target;
- memory: RSS growth of a watched device_ppo run (every=1: every cycle recorded) (small MLP) from the end of cycle 10 to the end
  of cycle 200 (target < 50 MB), in a fresh process; a plain run's growth is printed beside it;
- analysis: ``ppo_probe.analyze`` of a run of --pairs paired update rows built by
  benchmarks/analyze_speed.py (median of 3; target <= 5 s) and the samples table's bytes per row
  (target <= 24).

Progress goes to stderr; stdout gets the machine line, the table and its footnotes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_ppo import Config, make_actor, train
from example_overhead import load_example
from peers import HISTOGRAM_RECORDS, MANUAL_RECORDS, PROBE_RECORDS, HistogramPeer, ManualPeer

import ppo_probe
from ppo_probe.capture.session import Settings

VARIANTS = ("plain", "watched", "manual", "histogram")
CASES = ("cartpole", "cartpole-long", "mlp", "mlp-long", "memory", "analysis")
ALL_CYCLES = "watched every=1"  # the watch recording every cycle, not its default schedule
# (variant, out dir, size) -> (wall seconds, CPU seconds of the process's threads)
Runner = Callable[[str, Path, int], tuple[float, float]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def instrument(
    variant: str, actor: torch.nn.Module, optim: torch.optim.Optimizer, out: Path
) -> Iterator[None]:
    if variant == "plain":
        yield
    elif variant == "watched":
        with ppo_probe.watch(actor, optim, out=out):
            yield
    elif variant == ALL_CYCLES:
        with ppo_probe.watch(actor, optim, out=out, every=1):
            yield
    else:
        with (ManualPeer if variant == "manual" else HistogramPeer)(actor, optim):
            yield


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def cartpole_runner() -> Runner:
    example = load_example()

    def run(variant: str, out: Path, timesteps: int) -> tuple[float, float]:
        cfg = example.Config(seed=1, total_timesteps=timesteps)
        envs, agent, optim = example.build(cfg)
        start = _clocks()
        with instrument(variant, agent, optim, out):
            example.train(cfg, envs, agent, optim)
        return _since(start)

    return run


def mlp_runner(cfg: Config) -> Runner:
    def run(variant: str, out: Path, cycles: int) -> tuple[float, float]:
        torch.manual_seed(cfg.seed)
        actor = make_actor(cfg)
        optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
        start = _clocks()
        with instrument(variant, actor, optim, out):
            train(replace(cfg, cycles=cycles), actor, optim)
        return _since(start)

    return run


def bytes_per_row(run_dir: Path) -> float:
    meta = ppo_probe.load(run_dir).meta
    return meta["bytes_written"]["samples"] / meta["rows_written"]["samples"]


def bench_case(
    name: str,
    run: Runner,
    size: int,
    warm_size: int,
    repeats: int,
    tmp: Path,
    variants: tuple[str, ...] = VARIANTS,
) -> dict:
    """Alternated A/B/C/D: median time per variant, median per-repeat ratio to plain (of wall
    time; and of CPU time, which leaves out the time a shared host's vCPU was taken away)."""
    for variant in variants:  # warm-up: imports, allocator, env registration, hooks
        run(variant, tmp / f"{name}-warm-{variant}", warm_size)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(repeats):
        order = variants[i % len(variants) :] + variants[: i % len(variants)]
        for variant in order:
            wall, used = run(variant, tmp / f"{name}-{i}-{variant}", size)
            times[variant].append(wall)
            cpu[variant].append(used)
        log(f"  {name} repeat {i}: " + "  ".join(
            f"{v} {times[v][-1]:.3f}s (cpu {cpu[v][-1]:.3f}s)" for v in variants))

    def per_repeat(per: dict[str, list[float]]) -> dict[str, list[float]]:
        return {v: [t / p for t, p in zip(per[v], per["plain"])] for v in variants}

    wall = per_repeat(times)
    return {
        "time": {v: statistics.median(t) for v, t in times.items()},
        "ratio": {v: statistics.median(r) for v, r in wall.items()},
        "cpu_ratio": {v: statistics.median(r) for v, r in per_repeat(cpu).items()},
        "spread": {v: (min(r), max(r)) for v, r in wall.items()},
        "best": {v: min(times[v]) / min(times["plain"]) for v in variants},
        "bytes": bytes_per_row(tmp / f"{name}-{repeats - 1}-watched"),
    }


def _recorded(cycles: int) -> int:
    """Cycles the default schedule records out of ``cycles``."""
    return sum(Settings().scheduled(c) for c in range(cycles))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def memory_growth(watched: bool, first: int, last: int, out: Path) -> tuple[float, float]:
    """RSS growth (MB) between the end of cycle ``first`` and the end of cycle ``last``, and the
    wall time of the whole run; one watch spans both train() calls. Call it in a fresh process
    (``memory_child``): memory the allocator kept from earlier cases would hide growth."""
    cfg = Config(device="cpu", hidden=64, layers=2, batch=512, minibatch=128, epochs=4)
    torch.manual_seed(0)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    start = time.perf_counter()
    # every cycle recorded: the bound on the buffers, not the schedule, is what this measures
    with instrument(ALL_CYCLES if watched else "plain", actor, optim, out):
        train(replace(cfg, cycles=first), actor, optim)
        gc.collect()
        before = rss_mb()
        train(replace(cfg, cycles=last - first, seed=1), actor, optim)
        gc.collect()
        after = rss_mb()
    return after - before, time.perf_counter() - start


def memory_child(variant: str, last: int, out: Path) -> tuple[float, float]:
    """memory_growth of ``variant`` in a fresh interpreter running this script."""
    cmd = [sys.executable, __file__, "--rss-child", variant, "--mem-cycles", str(last)]
    result = subprocess.run(
        [*cmd, "--rss-out", str(out)], check=True, capture_output=True, text=True
    )
    growth, seconds = json.loads(result.stdout.strip().splitlines()[-1])
    return growth, seconds


def analysis(pairs: int, out: Path) -> tuple[int, float, float, float]:
    """(pairs, build seconds, median analyze seconds over 3, bytes per sample row)."""
    from analyze_speed import make_run

    start = time.perf_counter()
    make_run(out, pairs)
    build = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        report = ppo_probe.analyze(out)
        times.append(time.perf_counter() - start)
    return len(report.run.pairs), build, statistics.median(times), bytes_per_row(out)


def mark(
    value: float, limit: float, fmt: str, op: str = "<=", label: str | None = None, note: str = ""
) -> str:
    """``value (op limit: pass|FAIL)``, the measured value printed whatever it is."""
    ok = value <= limit if op == "<=" else value < limit if op == "<" else value > limit
    return f"{value:{fmt}} ({op} {label or format(limit, fmt)}: {'pass' if ok else 'FAIL'}{note})"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {platform.platform()}; {cpu}, {os.cpu_count()} CPUs (torch threads "
        f"{torch.get_num_threads()}); torch {torch.__version__}; "
        f"Python {platform.python_version()}; load average at start {load}"
    )


def _overhead_cases(args: argparse.Namespace) -> dict[str, tuple]:
    """case -> (case, log line, row name, runner, size, warm-up size, variants, target).

    A target of None: a short run, printed for what it costs (most of its cycles are recorded),
    not judged; the targets are read on the long rows (why: README, "Performance")."""
    mlp = Config(device="cpu", hidden=args.hidden, batch=args.batch, minibatch=min(1024, args.batch))
    mlp_name = f"3x{args.hidden} MLP, batch {args.batch}"
    cycles = args.timesteps // 512
    wanted = {args.case_child} if args.case_child else set(args.cases)
    runner = cartpole_runner() if {"cartpole", "cartpole-long"} & wanted else None
    return {
        "cartpole": ("cartpole", f"cartpole tiny MLP, {args.timesteps} timesteps",
                     f"cartpole tiny MLP, short: {cycles} cycles", runner, args.timesteps, 1024,
                     (*VARIANTS, ALL_CYCLES), None),
        "cartpole-long": ("cartpole-long", f"cartpole tiny MLP, long: {args.long_timesteps} timesteps",
                          f"cartpole tiny MLP, {args.long_timesteps // 512} cycles", runner,
                          args.long_timesteps, 1024, VARIANTS, 1.05),
        "mlp": ("mlp", f"{mlp_name}, {args.cycles} cycles", f"{mlp_name}, short: {args.cycles} cycles",
                mlp_runner(mlp), args.cycles, 1, VARIANTS, None),
        "mlp-long": ("mlp-long", f"{mlp_name}, long: {args.long_cycles} cycles",
                     f"{mlp_name}, {args.long_cycles} cycles", mlp_runner(mlp), args.long_cycles, 1,
                     VARIANTS, 1.02),
    }


def case_child(case: str, tmp: Path) -> dict:
    """bench_case of ``case`` in a fresh interpreter running this script with this one's options
    (its progress lines pass through to stderr)."""
    tmp.mkdir(parents=True, exist_ok=True)
    options = [a for a in sys.argv[1:] if a != "--cases" and a not in CASES]
    cmd = [sys.executable, __file__, *options, "--case-child", case, "--case-tmp", str(tmp)]
    result = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timesteps", type=int, default=8192, help="cartpole timesteps per run")
    parser.add_argument("--long-timesteps", type=int, default=500_000,
                        help="timesteps of the long cartpole case (CleanRL's default for CartPole: "
                             "976 cycles)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--cycles", type=int, default=8, help="cycles per run of the 3xN MLP case")
    parser.add_argument("--long-cycles", type=int, default=100, help="cycles of the long 3xN MLP case")
    parser.add_argument("--mem-cycles", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="shrink everything (a smoke run)")
    parser.add_argument("--skip-analysis", action="store_true")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE",
                        help=f"run only these ({', '.join(CASES)}; default all)")
    parser.add_argument("--case-child", choices=CASES[:4], help=argparse.SUPPRESS)
    parser.add_argument("--case-tmp", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", choices=("plain", "watched"), help=argparse.SUPPRESS)
    parser.add_argument("--rss-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        growth = memory_growth(args.rss_child == "watched", 10, args.mem_cycles, args.rss_out)
        print(json.dumps(growth))
        return
    if args.quick:
        args.repeats, args.timesteps, args.cycles = min(args.repeats, 2), 1024, 1
        args.long_timesteps, args.long_cycles = 512 * 24, 24
        args.hidden, args.batch, args.mem_cycles, args.pairs = 128, 1024, 30, 50_000
    if args.case_child:
        case, _, _, run, size, warm, variants, _ = _overhead_cases(args)[args.case_child]
        print(json.dumps(bench_case(case, run, size, warm, args.repeats, args.case_tmp, variants)))
        return
    began = time.perf_counter()
    header = machine()
    print(header, flush=True)
    mem_col = f"RSS growth 10->{args.mem_cycles} cycles MB"
    cols = ["case", "plain s", "watched s", "ratio (target)", "manual peer ratio"]
    cols += ["histogram peer ratio", mem_col, "analyze 1M pairs s", "bytes/sample row"]
    rows: list[dict[str, str]] = []  # column -> cell; missing cells print empty
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cycles = args.timesteps // 512
        cases = []
        for case, (_, line, name, _, _, _, _, target) in _overhead_cases(args).items():
            if case in args.cases:
                log(f"{line}, {args.repeats} repeats, in a fresh process")
                cases.append((name, case_child(case, t / case), target))
        for name, res, target in cases:
            tm, r = res["time"], res["ratio"]
            cells = [name, f"{tm['plain']:.3f}", f"{tm['watched']:.3f}"]
            if target is None:
                cells.append(f"{r['watched']:.3f} (no target: a short run)")
                cells += [f"{r[peer]:.3f}" if peer in r else "" for peer in VARIANTS[2:]]
            else:
                cells.append(mark(r["watched"], target, ".3f"))
                cells += [mark(r[peer], r["watched"], ".3f", ">", "probe") if peer in r else ""
                          for peer in VARIANTS[2:]]
            rows.append(dict(zip(cols, cells)) | {cols[-1]: mark(res["bytes"], 24, ".1f")})
            if ALL_CYCLES in r:
                rows.append({cols[0]: f"{name}, every=1 (every cycle recorded)",
                             cols[2]: f"{tm[ALL_CYCLES]:.3f}",
                             cols[3]: f"{r[ALL_CYCLES]:.3f} (no target: the cost per recorded cycle)"})
            best = ", ".join(f"{v} {res['best'][v]:.3f}" for v in res["best"] if v != "plain")
            notes.append(
                f"{name}: best-of-{args.repeats} ratios (min / min plain, a noise check): {best}"
            )
            spread = ", ".join(f"{v} {lo:.3f}-{hi:.3f}" for v, (lo, hi) in res["spread"].items()
                               if v != "plain")
            notes.append(f"{name}: per-repeat wall-time ratios, lowest-highest: {spread}")
            cpu = ", ".join(f"{v} {x:.3f}" for v, x in res["cpu_ratio"].items() if v != "plain")
            notes.append(f"{name}: CPU-time ratios (median; process time of all threads): {cpu}")
        notes.append(
            "the watch's default schedule records cycles 0-7, then every 20th (20, 40, ...): "
            f"{_recorded(cycles)} of {cycles}, {_recorded(args.long_timesteps // 512)} of "
            f"{args.long_timesteps // 512}, {_recorded(args.cycles)} of {args.cycles} and "
            f"{_recorded(args.long_cycles)} of {args.long_cycles} cycles above"
        )
        if "memory" in args.cases:
            log(f"memory: 10 -> {args.mem_cycles} cycles, plain then watched, each in a fresh process")
            plain_growth, plain_s = memory_child("plain", args.mem_cycles, t / "mem-plain")
            growth, watched_s = memory_child("watched", args.mem_cycles, t / "mem-watched")
            name = f"memory: 2x64 MLP, batch 512, 10 -> {args.mem_cycles} cycles, every=1"
            rows.append(dict(zip(cols, [name, f"{plain_s:.3f}", f"{watched_s:.3f}"])))
            rows[-1][mem_col] = mark(growth, 50, ".1f", "<", note=f"; plain run {plain_growth:+.1f}")
            rows[-1][cols[-1]] = mark(bytes_per_row(t / "mem-watched"), 24, ".1f")
        if args.skip_analysis or "analysis" not in args.cases:
            rows.append({"case": "analysis", cols[-2]: "skipped"})
        else:
            log(f"analysis: building a run of {args.pairs:,} pairs")
            n, build, secs, bpr = analysis(args.pairs, t / "analysis")
            rows.append({"case": f"analysis: {n:,} pairs (run built in {build:.1f} s)"})
            rows[-1] |= {cols[-2]: mark(secs, 5.0, ".2f"), cols[-1]: mark(bpr, 24, ".1f")}
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(row.get(c, "") for c in cols) + " |")
    print(
        f"\nmedians over {args.repeats} alternated repeats (order rotated each repeat); ratios are "
        "medians of per-repeat time / plain time; a peer passes when it costs more than the "
        "probe.\n"
        f"records: probe = {PROBE_RECORDS}; manual peer = {MANUAL_RECORDS}; "
        f"histogram peer (wandb.watch log_freq=1, no upload) = {HISTOGRAM_RECORDS}.\n"
        + "".join(n + "\n" for n in notes)
        + f"total benchmark time {time.perf_counter() - began:.0f} s"
    )


if __name__ == "__main__":
    main()
