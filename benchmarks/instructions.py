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

Usage: python benchmarks/instructions.py [--base CHECKOUT] [--cycles 4]
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


def count(checkout: Path, cycles: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp())
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", PYTHONPATH=str(checkout))
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--zero-before=zlib_crc32*", "--dump-before=binascii_crc_hqx*",
         f"--callgrind-out-file={out}/cg", sys.executable, __file__, "--child", str(cycles)],
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
    by: dict[str, list[int]] = {}
    for label, value in zip(labels, values):
        by.setdefault(label, []).append(value)
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
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    checkouts = {"this checkout": ROOT}
    if args.base is not None:
        checkouts[f"base {args.base}"] = args.base.resolve()
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
