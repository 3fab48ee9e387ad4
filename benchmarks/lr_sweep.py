"""The recommendation from one lr sweep run (``watch(lr_sweep=f)``): does a rerun at its lr land
the per-cycle KL on target? (issue 3)

For each task of benchmarks/recommend.py and starting lr: one run under ``watch(lr_sweep=f)``
with f = 300 ** (1 / (cycles - 1)), so the lr rises from the starting lr to 300x it over the
run's cycles (a range test); then a run from scratch at ``report.recommendation['lr']`` (the lr
where the sweep's per-cycle KL crosses the target, see ppo_probe/analysis/recommend.py
``sweep_lr``), judged as recommend.py judges its reruns: on target when its median per-cycle KL
(k3) is in [0.5, 2] x target.

Protocol: the sweep's reading was tried on seeds 0-1 (an ad hoc script, the same runs) and
fixed there; seeds 22-25, never run before, are the held-out test (README). Two runs per case;
about 1 minute per seed for the three CleanRL-style tasks and the bandit, 3 for the two SB3 ones
here (OMP_NUM_THREADS=1).

Held out in task: two MountainCar-v0 tasks (SWEEP_NEW_TASKS, the CleanRL-style and the SB3 trainer)
were added after seeds 22-25 and before any of their runs; they run only by name (--tasks
MountainCar).

Usage: python benchmarks/lr_sweep.py [--seeds 22 23 24 25] [--tasks CleanRL bandit SB3 MountainCar] [--span 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo_probe  # noqa: E402
from recommend import CYCLES, SWEEP_NEW_TASKS, kl_of, select_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[22, 23, 24, 25])
    parser.add_argument("--tasks", nargs="+", default=None, metavar="WORD",
                        help="only the tasks whose name holds one of these words; default: all five")
    parser.add_argument("--span", type=float, default=300.0, help="last cycle's lr / first cycle's")
    parser.add_argument("--target-kl", type=float, default=0.02)
    args = parser.parse_args()
    tasks = select_tasks(parser, args.tasks, SWEEP_NEW_TASKS)
    target = args.target_kl
    inside = lambda kl: 0.5 * target <= kl <= 2 * target  # noqa: E731
    rows = []
    print("| task | seed | lr | sweep's per-cycle KLs | read off a cliff | recommended lr | KL of rerun | on target |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for task, (run, lrs) in tasks.items():
                factor = args.span ** (1 / (CYCLES[run] - 1))
                for i, lr in enumerate(lrs):
                    base = Path(tmp) / f"{run.__name__}-{seed}-{i}"
                    report = ppo_probe.analyze(run(lr, seed, base, lr_sweep=factor), target_kl=target)
                    kls = " ".join(f"{v:.3g}" for v in report.per_cycle["kl_k3"])
                    lr_rec = report.recommendation["lr"]
                    cliff = "a cliff, not a slope" in report.recommendation["rationale"]
                    kl1, _ = kl_of(run(lr_rec, seed, base.with_name(base.name + "-rec")), target)
                    rows.append((task, kl1))
                    print(f"| {task} | {seed} | {lr:.3g} | {kls} | {'yes' if cliff else 'no'} | {lr_rec:.3g} | "
                          f"{kl1:.3g} | {'yes' if inside(kl1) else 'no'} |", flush=True)
    print("| task | rerun on target |")
    print("|---|---|")
    for task in tasks:
        mine = [kl for t, kl in rows if t == task]
        print(f"| {task} | {sum(map(inside, mine))}/{len(mine)} |")
    ours = sum(inside(kl) for _, kl in rows)
    print(f"rerun at the sweep's lr on target in {ours} of {len(rows)} cases ({ours / len(rows):.0%})")


if __name__ == "__main__":
    main()
