"""What assigning to Categorical costs the calls after it (issue 5).

Assigning a class attribute invalidates what CPython cached and specialized for that class, so
the calls that follow run slower until they are specialized again. Under valgrind's callgrind, in
one process: 128 rollout steps of examples/cartpole_ppo.py (``get_action_and_value`` on 4
observations, no grad), then ``setattr(Categorical, name, <the same function>)`` for ``sample``
and ``log_prob`` (a change that changes nothing, as the watch made when a skipped cycle opened
or took its first step, until session 21), then 128 steps again; three times. Prints the instructions of each
block of steps and the difference.

With ``--spend N``, instead: 128 steps, then N such setattrs each followed by one step (a lookup
in between, so each spends one of the class's version tags, as the watch's toggles did), then
500 steps to settle, then 128 steps again. On CPython >= 3.13 a class has at most 1,000 version
tags (MAX_VERSIONS_PER_CLASS, Objects/typeobject.c); past them its lookups are never cached
again, so ``--spend 1100`` reads what that costs a rollout step, and ``--spend 900`` is its
control (same work, tags left).

With ``--watched N``: 128 steps, then a watch (default settings) around N small PPO cycles (one
rollout step, one optimizer step each), then 500 steps to settle and 128 steps again, the watch
gone: what the watch leaves behind in Categorical's attribute caches for the rest of the process.

Usage: python benchmarks/type_modified.py [--spend N | --watched N]
"""

from __future__ import annotations

import binascii
import gc
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = 3


def child() -> None:
    import torch
    from torch.distributions import Categorical

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from example_overhead import load_example

    example = load_example()
    cfg = example.Config(seed=1, total_timesteps=512)
    _, agent, optim = example.build(cfg)
    obs = torch.randn(4, 4)

    def roll(n: int = 128) -> None:
        with torch.no_grad():
            for _ in range(n):
                agent.get_action_and_value(obs)

    def counted(collect: bool = True) -> None:
        """128 steps between callgrind's zero and dump points."""
        if collect:
            gc.collect()  # a collection due in the window would count more than the steps
        zlib.crc32(b"x")
        roll()
        binascii.crc_hqx(b"x", 0)

    roll(500)
    if "--watched" in sys.argv or "--spend" in sys.argv:
        watched = "--watched" in sys.argv
        n = int(sys.argv[sys.argv.index("--watched" if watched else "--spend") + 1])
        if watched:
            import ppo_probe
        counted()
        if watched:
            with tempfile.TemporaryDirectory() as out, ppo_probe.watch(agent, optim, out=out):
                for _ in range(n):
                    with torch.no_grad():
                        action = agent.get_action_and_value(obs)[0]
                    _, logp, _, _ = agent.get_action_and_value(obs, action)
                    optim.zero_grad()
                    (-logp.mean()).backward()
                    optim.step()
        else:
            for _ in range(n):
                Categorical.sample = Categorical.__dict__["sample"]  # type: ignore[method-assign]
                roll(1)
        roll(500)
        counted()
        return
    for _ in range(PAIRS):
        counted(collect=False)
        for name in ("sample", "log_prob"):
            setattr(Categorical, name, Categorical.__dict__[name])
        counted(collect=False)


def main() -> None:
    if "--child" in sys.argv:
        child()
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    out = Path(tempfile.mkdtemp())
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    mode = [a for a in ("--spend", "--watched") if a in sys.argv]
    spend = sys.argv[sys.argv.index(mode[0]):][:2] if mode else []
    # the main thread's counts only: under valgrind a background thread's timed wake-ups (the
    # Parquet writer's memory pool, after a watch) come 50 times as often a step as natively
    subprocess.run(["valgrind", "--tool=callgrind", "--zero-before=zlib_crc32*", "--dump-before=binascii_crc_hqx*",
                    "--separate-threads=yes", f"--callgrind-out-file={out}/cg", sys.executable, __file__,
                    "--child", *spend],
                   env=env, capture_output=True, check=True)
    dumps = sorted(glob.glob(f"{out}/cg.*-01"), key=lambda f: int(f.rsplit(".", 1)[1].split("-")[0]))
    values = [int(Path(f).read_text().split("summary: ")[1].split()[0]) for f in dumps]
    shutil.rmtree(out, ignore_errors=True)
    print(f"Python {sys.version.split()[0]}: instructions of 128 rollout steps (callgrind)")
    if spend:
        before, after = values
        what = "version tags spent" if spend[0] == "--spend" else "cycles watched"
        print(f"| {spend[1]} {what} | {before:,} before | {after:,} after | "
              f"{after - before:+,} ({after / before:.4f}) |")
        return
    print("| pair | before the setattr | after it | difference |")
    print("|---|---|---|---|")
    for i in range(PAIRS):
        before, after = values[2 * i], values[2 * i + 1]
        print(f"| {i} | {before:,} | {after:,} | {after - before:+,} |")


if __name__ == "__main__":
    main()
