"""How far bf16 autocast on the update path alone moves the first step's log-ratio: the calibration
of sampling-update-mismatch's precision tolerance (ppo_probe/analysis/diagnostics.py).

tests/trainers.py's 3-layer MLP samples in fp32 and updates under CPU bf16 autocast (3 cycles of 512
rows, minibatches of 128); its last layer's weights are scaled to set the logits' spread. Prints per scale the 90th
percentile of |log r| over the rows of each cycle's first step, the update Categoricals' median
logit_spread, their ratio (the tolerance is max(0.01, 0.02 x spread)) and the ids raised.

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


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    for scale in (1, 3, 10, 20, 40):
        net = precision_mlp(scale)
        optim = torch.optim.Adam(net.parameters(), lr=3e-4)
        with ppo_probe.watch(net, optim, out=tmp / f"scale{scale}") as w:
            train_bf16_update(net, optim)
        report = ppo_probe.analyze(w.path)
        pairs = report.run.pairs
        first = pairs[pairs["step"] == pairs.groupby("cycle")["step"].transform("min")]
        q90 = float(first["log_ratio"].abs().quantile(0.9))
        dists = report.run.dists
        spread = float(dists.loc[dists["grad_enabled"], "logit_spread"].median())
        print(f"scale {scale}: 90th percentile |log r| {q90:.2e}, logit_spread {spread:.2f}, "
              f"ratio {q90 / spread:.4f}, ids {report.ids}")


if __name__ == "__main__":
    main()
