"""The probe's cost in instructions, counted by valgrind's callgrind (issue 5): exact where wall time is noise.

On a shared host a watched/plain wall-time ratio moves by several percent between identical runs,
more than most hot-path changes. Instruction counts of the same deterministic run repeat to about
0.5%, so a change to the capture path can be judged before the slower wall-time benchmarks run.
They are not time: Python's interpreter runs fewer instructions per second than torch's kernels,
so a ratio of instructions understates the wall-time ratio (1.22 here against ~1.3 at every=1).

examples/' CleanRL-style CartPole, every cycle recorded (``every=1``), torch on one thread. In one
process under callgrind, counters are zeroed at a call of ``zlib.crc32`` and dumped at a call of
``binascii.crc_hqx`` (neither runs in the trainer, torch or the probe), around:

- ``run``: the whole training run of --cycles cycles, plain then watched (all threads: the
  writer's Parquet encoding included);
- ``rollout step``: one sampling step (actor, Categorical, sample, log_prob, entropy, critic under
  no_grad), mean of 400, plain then watched;
- ``optimizer step``: ``optimizer.step()`` with the probe's step hooks, median over the run's steps;
- ``flush``: the conversion of the buffered records of --cycles cycles on the training thread.

With ``--schedule`` it counts the default schedule instead (cycles 0-7 recorded, then every 20th),
the run a user leaves on: every cycle 1 .. 41 of one 42-cycle run, plain and watched, is counted
apart (dumped at its last optimizer step; the writer thread's work in that cycle included). It
prints the instructions per kind of cycle, the ratio over cycles 22-41 (one period of the
schedule: 17 skipped, one armed, one recorded, one flush), and that run projected to CleanRL's
976 cycles (cycles 1-21 as counted, then the period repeated, the tail as skipped cycles).

Usage: python benchmarks/instructions.py [--base CHECKOUT] [--cycles 4] [--schedule]
(--base: another checkout, e.g. ``git worktree add /tmp/base <rev>``, counted the same way; each
checkout takes ~3 minutes here.)
"""

from __future__ import annotations

import argparse
import binascii
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = 400


def _zero() -> None:
    zlib.crc32(b"x")


def _dump() -> None:
    binascii.crc_hqx(b"x", 0)


def child(cycles: int) -> None:
    """Runs under callgrind; prints the label of each dump, in order."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from example_overhead import load_example

    import ppo_probe
    from ppo_probe.capture import session

    labels: list[str] = []

    def marked(label: str, fn, *args):
        _zero()
        result = fn(*args)
        _dump()
        labels.append(label)
        return result

    example = load_example()

    def build(n: int):
        cfg = example.Config(seed=1, total_timesteps=512 * n)
        return (cfg, *example.build(cfg))

    def train(watched: bool, n: int, step_label: str | None = None) -> None:
        cfg, envs, agent, optimizer = build(n)
        if step_label is not None:
            original = optimizer.step
            optimizer.step = lambda *a, **k: marked(step_label, original, *a, **k)  # type: ignore[method-assign]
        if watched:
            with ppo_probe.watch(agent, optimizer, out=tempfile.mkdtemp() + "/run", every=1):
                example.train(cfg, envs, agent, optimizer)
        else:
            example.train(cfg, envs, agent, optimizer)

    train(False, 1)
    train(True, 1)  # warm-up: imports, first-call paths
    marked("run plain", train, False, cycles)
    marked("run watched", train, True, cycles)

    _, _, agent, optimizer = build(1)
    obs = torch.randn(4, 4)

    def rollout(k: int) -> None:
        for _ in range(k):
            with torch.no_grad():
                agent.get_action_and_value(obs)

    rollout(50)
    marked("rollout plain", rollout, STEPS)
    with ppo_probe.watch(agent, optimizer, out=tempfile.mkdtemp() + "/run", every=1, flush_rows=10**9):
        rollout(50)
        marked("rollout watched", rollout, STEPS)

    train(False, 2, "step plain")
    train(True, 2, "step watched")

    flush = session.Session.flush

    def timed_flush(self: session.Session) -> None:
        if self._calls:
            marked("flush", flush, self)
        else:
            flush(self)

    session.Session.flush = timed_flush  # type: ignore[method-assign]
    cfg, envs, agent, optimizer = build(cycles)
    with ppo_probe.watch(agent, optimizer, out=tempfile.mkdtemp() + "/run", every=1, flush_rows=10**9):
        example.train(cfg, envs, agent, optimizer)
    print("PROBE " + str(Path(ppo_probe.__file__).parent))
    print("LABELS " + ",".join(labels))


STEPS_PER_CYCLE = 16  # examples/ CartPole: 4 epochs x 4 minibatches
SCHEDULE_CYCLES = 42


def child_schedule() -> None:
    """Runs under callgrind: one run plain, one watched (default schedule), a dump per cycle."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from example_overhead import load_example

    import ppo_probe

    example = load_example()
    labels: list[str] = []

    def train(watched: bool, n: int, label: str | None) -> None:
        cfg = example.Config(seed=1, total_timesteps=512 * n)
        envs, agent, optimizer = example.build(cfg)
        steps = [0]

        def mark(*_: object) -> None:  # the same hook in both runs
            steps[0] += 1
            if label is None or steps[0] % STEPS_PER_CYCLE:
                return
            cycle = steps[0] // STEPS_PER_CYCLE - 1
            if cycle == 0:
                _zero()
            else:
                _dump()
                labels.append(f"{label} {cycle}")

        optimizer.register_step_post_hook(mark)
        if watched:
            with ppo_probe.watch(agent, optimizer, out=tempfile.mkdtemp() + "/run"):
                example.train(cfg, envs, agent, optimizer)
        else:
            example.train(cfg, envs, agent, optimizer)

    train(False, 1, None)
    train(True, 1, None)  # warm-up: imports, first-call paths
    train(False, SCHEDULE_CYCLES, "plain")
    train(True, SCHEDULE_CYCLES, "watched")
    print("PROBE " + str(Path(ppo_probe.__file__).parent))
    print("LABELS " + ",".join(labels))


def _callgrind(checkout: Path, child_args: list[str]) -> dict[str, list[int]]:
    """Instructions per dump label of one child run under callgrind."""
    out = Path(tempfile.mkdtemp())
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", PYTHONPATH=str(checkout))
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--zero-before=zlib_crc32*", "--dump-before=binascii_crc_hqx*",
         f"--callgrind-out-file={out}/cg", sys.executable, __file__, *child_args],
        env=env, capture_output=True, text=True, check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LABELS ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"callgrind run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    labels = lines[-1][len("LABELS "):].split(",")
    probe = [line[len("PROBE "):] for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    if not probe or not Path(probe[0]).resolve().is_relative_to(checkout.resolve()):
        raise SystemExit(f"the child imported ppo_probe from {probe}, not from {checkout}")
    dumps = sorted(glob.glob(f"{out}/cg.*"), key=lambda f: int(f.rsplit(".", 1)[1]))
    values = [int(Path(f).read_text().split("summary: ")[1].split()[0]) for f in dumps]
    shutil.rmtree(out, ignore_errors=True)
    if len(values) < len(labels):
        raise SystemExit(f"callgrind wrote {len(values)} dumps for {len(labels)} labels")
    by: dict[str, list[int]] = {}
    for label, value in zip(labels, values):
        by.setdefault(label, []).append(value)
    return by


def schedule_table(name: str, by: dict[str, list[int]]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cycle_costs import kinds

    plain = {c: by[f"plain {c}"][0] for c in range(1, SCHEDULE_CYCLES)}
    watched = {c: by[f"watched {c}"][0] for c in range(1, SCHEDULE_CYCLES)}
    print(f"{name}: examples/ CartPole, default schedule, instructions per cycle (callgrind; "
          f"cycles 1-{SCHEDULE_CYCLES - 1} of one run each)")
    print("| cycle kind | cycles | plain (median) | watched (median) | ratio |")
    print("|---|---|---|---|---|")
    for kind, cs in kinds(SCHEDULE_CYCLES).items():
        p, w = statistics.median(plain[c] for c in cs), statistics.median(watched[c] for c in cs)
        print(f"| {kind} | {' '.join(map(str, cs))} | {p / 1e6:.1f}M | {w / 1e6:.1f}M | {w / p:.4f} |")
    period = range(22, 42)
    ratio = sum(watched[c] for c in period) / sum(plain[c] for c in period)
    print(f"one period (cycles 22-41): {ratio:.4f}")
    # CleanRL's 976 cycles: 1-21 as counted, 22-961 the period 47 times, 962-975 skipped ones
    skipped_p = statistics.median(plain[c] for c in range(22, 39))
    skipped_w = statistics.median(watched[c] for c in range(22, 39))
    total_p = sum(plain[c] for c in range(1, 22)) + 47 * sum(plain[c] for c in period) + 14 * skipped_p
    total_w = sum(watched[c] for c in range(1, 22)) + 47 * sum(watched[c] for c in period) + 14 * skipped_w
    print(f"projected to 976 cycles (cycles 1-975): {total_w / total_p:.4f}")


def count(checkout: Path, cycles: int) -> dict[str, float]:
    by = _callgrind(checkout, ["--child", str(cycles)])
    return {
        "run plain": by["run plain"][0] / cycles,
        "run watched": by["run watched"][0] / cycles,
        "rollout plain": by["rollout plain"][0] / STEPS,
        "rollout watched": by["rollout watched"][0] / STEPS,
        "step plain": statistics.median(by["step plain"][1:]),
        "step watched": statistics.median(by["step watched"][1:]),
        "flush": by["flush"][0] / cycles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None, help="another checkout, counted the same way")
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--schedule", action="store_true", help="count the default schedule (see above)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-schedule", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_schedule:
        child_schedule()
        return
    if args.child is not None:
        child(args.child)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    checkouts = {"this checkout": ROOT}
    if args.base is not None:
        checkouts[f"base {args.base}"] = args.base.resolve()
    if args.schedule:
        for name, path in checkouts.items():
            schedule_table(name, _callgrind(path, ["--child-schedule"]))
        return
    results = {name: count(path, args.cycles) for name, path in checkouts.items()}
    print(f"examples/ CartPole, every=1, instructions (callgrind; {args.cycles} cycles)")
    print("| checkout | run per cycle: plain | watched | ratio | rollout step: plain | extra | "
          "optimizer step: plain | extra | flush per cycle |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['run plain'] / 1e6:.1f}M | {r['run watched'] / 1e6:.1f}M | "
              f"{r['run watched'] / r['run plain']:.4f} | {r['rollout plain'] / 1e3:.0f}k | "
              f"{(r['rollout watched'] - r['rollout plain']) / 1e3:+.0f}k | {r['step plain'] / 1e3:.0f}k | "
              f"{(r['step watched'] - r['step plain']) / 1e3:+.0f}k | {r['flush'] / 1e6:.1f}M |")


if __name__ == "__main__":
    main()
