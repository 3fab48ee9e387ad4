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

Reachability (``--grid``, scoring decided in session 14 for seeds not yet run; README): a rerun
that misses sends its (task, seed) through kl_vs_lr.py's 15 lrs (1e-4..3e-2), each a run from
scratch, once per (task, seed). Where none of them lands on target, the band is out of reach of
the lr on that seed; the case then counts as answered when the report said so ("may not be
reachable by the lr alone") and as missed when it did not. Where some grid lr lands, the miss
stays a miss. That scoring does not charge a wrong "out of reach", so the script also counts
the claims its own runs refute (the rerun or a grid lr of that seed landed), and prints the first
grid lr that landed for each (task, seed) it found reachable. Since 47ae752 the reading says
nothing of reachability (11 of its 13 claims on seeds 34-37 were wrong), so with this code the
claim column reads no and "answered" equals "on target"; session 16's figures, with their split
by clause, come from this script at 636780c.

Usage: python benchmarks/lr_sweep.py [--seeds 22 23 24 25] [--tasks CleanRL bandit SB3 MountainCar] [--span 300] [--grid]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo_probe  # noqa: E402
from kl_vs_lr import LRS as GRID  # noqa: E402
from recommend import CYCLES, SWEEP_NEW_TASKS, kl_of, select_tasks  # noqa: E402

UNREACHABLE = "may not be reachable by the lr alone"  # the rationale's words (analysis/recommend.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[22, 23, 24, 25])
    parser.add_argument("--tasks", nargs="+", default=None, metavar="WORD",
                        help="only the tasks whose name holds one of these words; default: all five")
    parser.add_argument("--span", type=float, default=300.0, help="last cycle's lr / first cycle's")
    parser.add_argument("--target-kl", type=float, default=0.02)
    parser.add_argument("--grid", action="store_true",
                        help="score a miss by whether any of 15 lrs reaches the band (see above)")
    args = parser.parse_args()
    tasks = select_tasks(parser, args.tasks, SWEEP_NEW_TASKS)
    target = args.target_kl
    inside = lambda kl: 0.5 * target <= kl <= 2 * target  # noqa: E731
    rows = []  # (task, seed, rerun's KL, answered: on target, or said unreachable where it is, said)
    reachable: dict[tuple[str, int], bool] = {}
    landed: list[str] = []  # the first grid lr that landed, per (task, seed) found reachable
    grid_col = " | said out of reach | band reachable (grid) | answered" if args.grid else ""
    print("| task | seed | lr | sweep's per-cycle KLs | read off a cliff | recommended lr | KL of rerun | "
          f"on target{grid_col} |")
    print("|---|---|---|---|---|---|---|---|" + "---|---|---|" * args.grid)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for task, (run, lrs) in tasks.items():
                factor = args.span ** (1 / (CYCLES[run] - 1))
                for i, lr in enumerate(lrs):
                    base = Path(tmp) / f"{run.__name__}-{seed}-{i}"
                    report = ppo_probe.analyze(run(lr, seed, base, lr_sweep=factor), target_kl=target)
                    kls = " ".join(f"{v:.3g}" for v in report.per_cycle["kl_k3"])
                    lr_rec = report.recommendation["lr"]
                    rationale = report.recommendation["rationale"]
                    cliff = "a cliff, not a slope" in rationale
                    kl1, _ = kl_of(run(lr_rec, seed, base.with_name(base.name + "-rec")), target)
                    answered, extra, said = inside(kl1), "", UNREACHABLE in rationale
                    if args.grid:
                        if not inside(kl1) and (task, seed) not in reachable:
                            grid_base = Path(tmp) / f"{run.__name__}-{seed}-grid"
                            reachable[(task, seed)] = False
                            for j, g in enumerate(GRID):  # up to the first grid lr that lands
                                path = run(g, seed, grid_base.with_name(f"{grid_base.name}-{j}"))
                                kl_g = kl_of(path, target)[0]
                                if inside(kl_g):
                                    reachable[(task, seed)] = True
                                    landed.append(f"{task}, seed {seed}: lr {g:.3g} gave {kl_g:.3g}")
                                    break
                        if not inside(kl1):
                            answered = not reachable[(task, seed)] and said
                        reach = reachable.get((task, seed))
                        extra = (f" | {'yes' if said else 'no'} | {'-' if reach is None else 'yes' if reach else 'no'}"
                                 f" | {'yes' if answered else 'no'}")
                    rows.append((task, seed, kl1, answered, said))
                    print(f"| {task} | {seed} | {lr:.3g} | {kls} | {'yes' if cliff else 'no'} | {lr_rec:.3g} | "
                          f"{kl1:.3g} | {'yes' if inside(kl1) else 'no'}{extra} |", flush=True)
    print(f"| task | rerun on target{' | answered' if args.grid else ''} |")
    print("|---|---|" + "---|" * args.grid)
    for task in tasks:
        mine = [(kl, a) for t, _, kl, a, _ in rows if t == task]
        cell = f" | {sum(a for _, a in mine)}/{len(mine)}" if args.grid else ""
        print(f"| {task} | {sum(inside(kl) for kl, _ in mine)}/{len(mine)}{cell} |")
    ours = sum(inside(kl) for _, _, kl, _, _ in rows)
    print(f"rerun at the sweep's lr on target in {ours} of {len(rows)} cases ({ours / len(rows):.0%})")
    if args.grid:
        answers = sum(a for _, _, _, a, _ in rows)
        print(f"answered (on target, or the band said and found out of reach): {answers} of {len(rows)} "
              f"({answers / len(rows):.0%})")
        # the scoring credits a true "out of reach" and does not charge a false one, so count those:
        # said where this rerun, or a grid lr of the same (task, seed), landed on target
        claims = [(t, s, kl) for t, s, kl, _, said in rows if said]
        wrong = sum(inside(kl) or reachable.get((t, s)) is True for t, s, kl in claims)
        print(f"said out of reach in {len(claims)} cases; wrongly (the band was reached) in {wrong}")
        for line in landed:
            print(f"band reached by the grid: {line}")

if __name__ == "__main__":
    main()
