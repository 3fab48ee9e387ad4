"""What putting the patch in or out of Categorical costs after its own setattr (issue 5).

Assigning a class attribute invalidates what CPython cached and specialized for that class, so
the calls that follow run slower until they are specialized again. Under valgrind's callgrind, in
one process: 128 rollout steps of examples/cartpole_ppo.py (``get_action_and_value`` on 4
observations, no grad), then ``setattr(Categorical, name, <the same function>)`` for ``sample``
and ``log_prob`` (a change that changes nothing, as the watch makes when a skipped cycle opens
or takes its first step), then 128 steps again; three times. Prints the instructions of each
block of steps and the difference.

Usage: python benchmarks/type_modified.py
"""

from __future__ import annotations

import binascii
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
    _, agent, _ = example.build(cfg)
    obs = torch.randn(4, 4)

    def roll(n: int = 128) -> None:
        with torch.no_grad():
            for _ in range(n):
                agent.get_action_and_value(obs)

    roll(500)
    for _ in range(PAIRS):
        zlib.crc32(b"x")
        roll()
        binascii.crc_hqx(b"x", 0)
        for name in ("sample", "log_prob"):
            setattr(Categorical, name, Categorical.__dict__[name])
        zlib.crc32(b"x")
        roll()
        binascii.crc_hqx(b"x", 0)


def main() -> None:
    if "--child" in sys.argv:
        child()
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    out = Path(tempfile.mkdtemp())
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    subprocess.run(["valgrind", "--tool=callgrind", "--zero-before=zlib_crc32*", "--dump-before=binascii_crc_hqx*",
                    f"--callgrind-out-file={out}/cg", sys.executable, __file__, "--child"],
                   env=env, capture_output=True, check=True)
    dumps = sorted(glob.glob(f"{out}/cg.*"), key=lambda f: int(f.rsplit(".", 1)[1]))
    values = [int(Path(f).read_text().split("summary: ")[1].split()[0]) for f in dumps]
    shutil.rmtree(out, ignore_errors=True)
    print(f"Python {sys.version.split()[0]}: instructions of 128 rollout steps (callgrind)")
    print("| pair | before the setattr | after it | difference |")
    print("|---|---|---|---|")
    for i in range(PAIRS):
        before, after = values[2 * i], values[2 * i + 1]
        print(f"| {i} | {before:,} | {after:,} | {after - before:+,} |")


if __name__ == "__main__":
    main()
