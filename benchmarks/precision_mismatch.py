"""How far bf16 autocast on the update path alone moves the first step's log-ratio: the calibration
of sampling-update-mismatch's precision tolerance (ppo_probe/analysis/diagnostics.py).

tests/trainers.py's 3-layer MLP samples in fp32 and updates under CPU bf16 autocast (3 cycles of 512
rows, minibatches of 128); its last layer's weights are scaled to set the logits' spread. Prints per scale the 90th
percentile of |log r| over the rows of each cycle's first step, the update Categoricals' median
logit_spread, their ratio (the tolerance is max(0.01, 0.02 x spread)) and the ids raised. Then the
same figures for the bug zoo's temperature_one_path case (tests/zoo.py: a temperature of 2 on the
CleanRL-style CartPole's sampling path only), which must stay over the tolerance.

Usage: python benchmarks/precision_mismatch.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import ppo_probe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from trainers import precision_mlp, train_bf16_update  # noqa: E402
from zoo import run_case  # noqa: E402


def first_step_figures(path: Path) -> str:
    report = ppo_probe.analyze(path)
    pairs = report.run.pairs
    first = pairs[pairs["step"] == pairs.groupby(["rank", "cycle"])["step"].transform("min")]
    q90 = float(first["log_ratio"].abs().quantile(0.9))
    dists = report.run.dists
    spread = float(dists.loc[dists["grad_enabled"], "logit_spread"].median())
    return (f"90th percentile |log r| {q90:.2e}, logit_spread {spread:.2f}, ratio {q90 / spread:.4f}, "
            f"ids {report.ids}")


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    for scale in (1, 3, 10, 20, 40):
        net = precision_mlp(scale)
        optim = torch.optim.Adam(net.parameters(), lr=3e-4)
        with ppo_probe.watch(net, optim, out=tmp / f"scale{scale}") as w:
            train_bf16_update(net, optim)
        print(f"bf16 update, scale {scale}: {first_step_figures(w.path)}")
    print(f"zoo temperature_one_path: {first_step_figures(run_case('temperature_one_path', tmp / 'zoo'))}")


if __name__ == "__main__":
    main()
