"""How the per-cycle KL responds to the learning rate: the data behind the recommendation's model.

Trains each task of benchmarks/recommend.py at lrs 1e-4..3e-2 (seeds 0 and 1), prints the median
per-cycle KL (k3, last epoch), clip fraction and the KL's growth within a cycle (slope of the
median per-step k3 on log step index, over the cycle's second half of steps) per run, then the
slope of log KL on log lr below and above the clip knee eps^2/8 (0.005 at eps 0.2). ppo_probe/analysis/recommend.py takes its
P_BELOW / P_ABOVE from these slopes. Runs whose policy collapsed (KL > 0.2, or a KL that fell
tenfold below the previous lr's) are printed but left out of the fit.

Usage: python benchmarks/kl_vs_lr.py [--seeds 0 1] [--lrs 1e-4 3e-4 ...] [--tasks cartpole ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from recommend import TASKS

import ppo_probe
from ppo_probe.analysis.recommend import clip_knee

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def within_cycle_growth(per_step) -> float:  # noqa: ANN001
    """Slope of log(median k3 at the j-th step of a cycle) on log j over the second half of the
    cycle's steps: 2 while the policy moves freely, lower once the clip holds it back."""
    steps = per_step.assign(j=per_step.groupby("cycle").cumcount())
    by_j = steps[steps["j"] > 0].groupby("j")["kl_k3"].median()
    by_j = by_j[by_j > 0].iloc[len(by_j) // 2:]
    if len(by_j) < 2:
        return float("nan")
    return float(np.polyfit(np.log(by_j.index.to_numpy(float)), np.log(by_j.to_numpy(float)), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lrs", type=float, nargs="+", default=LRS)
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="task names (or their first word) of benchmarks/recommend.py; default all")
    args = parser.parse_args()
    tasks = {name: spec for name, spec in TASKS.items()
             if args.tasks is None or any(name.startswith(t) for t in args.tasks)}
    knee = clip_knee(0.2)
    print("| task | seed | lr | median per-cycle KL | median clip fraction | KL growth within a cycle |")
    print("|---|---|---|---|---|---|")
    slopes = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, (run, _) in tasks.items():
            points = []
            for seed in args.seeds:
                previous = None
                for i, lr in enumerate(args.lrs):
                    report = ppo_probe.analyze(run(lr, seed, Path(tmp) / f"{run.__name__}-{seed}-{i}"))
                    kl = float(report.per_cycle["kl_k3"].median())
                    clip = float(report.per_cycle["clip_fraction"].median())
                    growth = within_cycle_growth(report.per_step)
                    collapsed = kl > 0.2 or (previous is not None and kl < previous / 10)
                    print(f"| {task} | {seed} | {lr:g} | {kl:.3g} | {clip:.3f} | step^{growth:.2f} |"
                          + (" collapsed, not fitted" if collapsed else ""), flush=True)
                    if not collapsed:
                        points.append((lr, kl))
                        previous = kl
            fit = {}
            for side, keep in (("below", lambda k: k < knee), ("above", lambda k: k >= knee)):
                sel = [(lr, kl) for lr, kl in points if keep(kl)]
                if len({lr for lr, _ in sel}) >= 2:
                    fit[side] = float(np.polyfit(np.log([p[0] for p in sel]), np.log([p[1] for p in sel]), 1)[0])
            slopes.append((task, fit))
    print(f"\nslope of log KL on log lr, below / above the knee {knee:g}:")
    for task, fit in slopes:
        print(f"  {task}: " + ", ".join(f"{side} {value:.2f}" for side, value in fit.items()))


if __name__ == "__main__":
    main()
