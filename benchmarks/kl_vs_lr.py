"""How the per-cycle KL responds to the learning rate: the data behind the recommendation's model.

Trains each task of benchmarks/recommend.py (every cycle recorded) at 15 lrs 1e-4..3e-2 on seeds
0-5 (the seeds the model was chosen on; benchmarks/recommend.py holds out 6-9). Prints per run the
median per-cycle KL (k3, last epoch), the median clip fraction and the KL's growth within a cycle
(slope of the median per-step k3 on log step index, over the cycle's second half of steps); then
the geometric mean of the KL over the seeds per lr; then the slopes of log KL on log lr: one
regression over the runs on each side of the clip knee eps^2/8 (0.005 at eps 0.2), intercepts
free (how the slopes were first measured), and the recommendation's own model fitted to each
task's curves (log KL piecewise linear in log lr, p_below left of the knee and p_above right of
it, continuous through it, one knee lr per curve as the recommendation anchors it on a run):
per task, pooled, the midpoint of the tasks' extremes, and where the extreme tasks' KL lands when
that midpoint is aimed at --target-kl. Runs whose policy collapsed (KL > 0.2, or a KL that fell
tenfold below the previous lr's) are printed but left out of the mean and the fits. About 5
minutes on 2 cores.

Usage: python benchmarks/kl_vs_lr.py [--seeds 0 1 2 3 4 5] [--lrs 1e-4 3e-4 ...] [--tasks cartpole ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from recommend import TASKS

import ppo_probe
from ppo_probe.analysis.recommend import clip_knee

LRS = [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8.5e-3, 1e-2, 1.25e-2, 1.5e-2, 2e-2, 3e-2]


def within_cycle_growth(per_step) -> float:  # noqa: ANN001
    """Slope of log(median k3 at the j-th step of a cycle) on log j over the second half of the
    cycle's steps: 2 while the policy moves freely, lower once the clip holds it back."""
    steps = per_step.assign(j=per_step.groupby("cycle").cumcount())
    by_j = steps[steps["j"] > 0].groupby("j")["kl_k3"].median()
    by_j = by_j[by_j > 0].iloc[len(by_j) // 2:]
    if len(by_j) < 2:
        return float("nan")
    return float(np.polyfit(np.log(by_j.index.to_numpy(float)), np.log(by_j.to_numpy(float)), 1)[0])


def fit_piecewise(curves: list[list[tuple[float, float]]], knee: float) -> tuple[float, float, float]:
    """Least-squares (p_below, p_above, rms of log KL) of log KL = log knee + p (log lr - u_c), p =
    p_below left of curve c's knee lr u_c and p_above right of it: shared slopes, one u_c per curve.
    Alternates the slopes' linear least squares with a search of each u_c on a 0.005 grid in log lr."""
    xs = [np.log([lr for lr, _ in c]) for c in curves]
    ys = [np.log([kl for _, kl in c]) - np.log(knee) for c in curves]
    p_below, p_above = 2.0, 0.7
    for _ in range(200):
        us = []
        for x, y in zip(xs, ys):
            u = np.arange(x.min() - 3.0, x.max() + 3.0, 0.005)
            d = x[None, :] - u[:, None]
            sse = ((np.where(d <= 0, p_below * d, p_above * d) - y[None, :]) ** 2).sum(1)
            us.append(u[np.argmin(sse)])
        d = np.concatenate([x - u for x, u in zip(xs, us)])
        design = np.stack([np.minimum(d, 0.0), np.maximum(d, 0.0)], 1)
        (new_below, new_above), *_ = np.linalg.lstsq(design, np.concatenate(ys), rcond=None)
        done = abs(new_below - p_below) < 1e-6 and abs(new_above - p_above) < 1e-6
        p_below, p_above = float(new_below), float(new_above)
        if done:
            break
    d = np.concatenate([x - u for x, u in zip(xs, us)])
    residual = np.where(d <= 0, p_below * d, p_above * d) - np.concatenate(ys)
    return p_below, p_above, float(np.sqrt(np.mean(residual**2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--lrs", type=float, nargs="+", default=LRS)
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="task names (or their first word) of benchmarks/recommend.py; default all")
    parser.add_argument("--target-kl", type=float, default=0.02)
    args = parser.parse_args()
    tasks = {name: spec for name, spec in TASKS.items()
             if args.tasks is None or any(name.startswith(t) for t in args.tasks)}
    knee = clip_knee(0.2)
    print("| task | seed | lr | median per-cycle KL | median clip fraction | KL growth within a cycle |")
    print("|---|---|---|---|---|---|")
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task, (run, _) in tasks.items():
            curves[task] = []
            for seed in args.seeds:
                previous, curve = None, []
                for i, lr in enumerate(args.lrs):
                    report = ppo_probe.analyze(run(lr, seed, Path(tmp) / f"{run.__name__}-{seed}-{i}"))
                    kl = float(report.per_cycle["kl_k3"].median())
                    clip = float(report.per_cycle["clip_fraction"].median())
                    growth = within_cycle_growth(report.per_step)
                    collapsed = kl > 0.2 or (previous is not None and kl < previous / 10)
                    print(f"| {task} | {seed} | {lr:g} | {kl:.3g} | {clip:.3f} | step^{growth:.2f} |"
                          + (" collapsed, not fitted" if collapsed else ""), flush=True)
                    if not collapsed:
                        curve.append((lr, kl))
                        previous = kl
                if len(curve) >= 3:
                    curves[task].append(curve)
    print("\ngeometric mean over the seeds of the median per-cycle KL (runs not collapsed):")
    print("| task | " + " | ".join(f"{lr:g}" for lr in args.lrs) + " |")
    print("|---|" + "---|" * len(args.lrs))
    for task, cs in curves.items():
        at = {lr: [kl for c in cs for x, kl in c if x == lr] for lr in args.lrs}
        print(f"| {task} | " + " | ".join(f"{np.exp(np.mean(np.log(at[lr]))):.3g}" if at[lr] else "-"
                                          for lr in args.lrs) + " |")
    print(f"\nslope of log KL on log lr, runs below / above the knee {knee:g} (one regression each side, "
          "intercepts free):")
    for task, cs in curves.items():
        fit = {}
        for side, keep in (("below", lambda k: k < knee), ("above", lambda k: k >= knee)):
            sel = [(lr, kl) for c in cs for lr, kl in c if keep(kl)]
            if len({lr for lr, _ in sel}) >= 2:
                fit[side] = float(np.polyfit(np.log([p[0] for p in sel]), np.log([p[1] for p in sel]), 1)[0])
        print(f"  {task}: " + ", ".join(f"{side} {value:.2f}" for side, value in fit.items()))
    print(f"\nthe piecewise model fitted (continuous through the knee {knee:g}, one knee lr per curve):")
    fits = {}
    for task, cs in curves.items():
        if cs:
            fits[task] = fit_piecewise(cs, knee)
            print(f"  {task}: p_below {fits[task][0]:.2f}, p_above {fits[task][1]:.2f} "
                  f"(rms of log KL {fits[task][2]:.2f}, {len(cs)} curves)")
    pooled = [c for cs in curves.values() for c in cs]
    if len(fits) > 1:
        p_b, p_a, rms = fit_piecewise(pooled, knee)
        print(f"  pooled: p_below {p_b:.2f}, p_above {p_a:.2f} (rms of log KL {rms:.2f})")
        mid_b = (min(f[0] for f in fits.values()) + max(f[0] for f in fits.values())) / 2
        lo, hi = min(f[1] for f in fits.values()), max(f[1] for f in fits.values())
        mid_a = (lo + hi) / 2
        land = [knee * (args.target_kl / knee) ** (p / mid_a) for p in (lo, hi)]
        print(f"  midpoint of the extremes: p_below {mid_b:.2f}, p_above {mid_a:.2f}; aimed at KL "
              f"{args.target_kl:g} from the knee, the tasks with p_above {lo:.2f} and {hi:.2f} land at "
              f"{land[0]:.3g} and {land[1]:.3g} (x{land[0] / args.target_kl:.2f} and "
              f"x{land[1] / args.target_kl:.2f})")


if __name__ == "__main__":
    main()
