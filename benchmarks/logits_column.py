"""The flush's logits column with several K (MultiDiscrete heads of 3, 4 and 5 categories).

Records a rollout of 1,024 steps x 4 envs through three Categorical heads under a watch, takes
the flush's log_prob calls (3,072) and times ``records._logits_column`` on them with about 30% of
the rows kept. With ``--base PATH`` (another checkout, e.g. ``git worktree add /tmp/base <rev>``)
that version's function runs on the same calls, alternated in this process, and the two columns
must be equal.

Usage: python benchmarks/logits_column.py [--base PATH] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.distributions import Categorical

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from checkouts import module_from  # noqa: E402


class Policy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList([torch.nn.Linear(64, k) for k in (3, 4, 5)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.body(x)
        return [head(h) for head in self.heads]


def recorded_calls() -> list:
    """The log_prob calls of a watched rollout, as the flush receives them."""
    import ppo_probe
    from ppo_probe.capture import session

    taken: list[list] = []
    flush = session.Session.flush

    def keep_calls(self: session.Session) -> None:
        taken.append(list(self._calls))
        flush(self)

    torch.manual_seed(0)
    actor = Policy()
    optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    session.Session.flush = keep_calls
    try:
        with ppo_probe.watch(actor, optimizer, out=Path(tempfile.mkdtemp()) / "run", every=1,
                             flush_rows=10**9), torch.no_grad():
            for obs in torch.randn(1024, 4, 8):
                dists = [Categorical(logits=logits) for logits in actor(obs)]
                for d in dists:
                    d.log_prob(d.sample())
    finally:
        session.Session.flush = flush
    return max(taken, key=len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None, help="another checkout to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    calls = recorded_calls()  # recorded by this checkout
    versions = {"this checkout": module_from(ROOT, "ppo_probe.capture.records")}
    if args.base is not None:
        versions[f"base {args.base}"] = module_from(args.base, "ppo_probe.capture.records")
    counts = np.array([c.n for c in calls])
    keep = np.random.default_rng(0).random(int(counts.sum())) < 0.3
    columns = [module._logits_column(calls, counts, keep) for module in versions.values()]  # warm-up
    assert all(c.equals(columns[0]) for c in columns), "the versions' columns differ"
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(args.repeats):
        for name, module in versions.items():
            start = time.perf_counter()
            module._logits_column(calls, counts, keep)
            times[name].append((time.perf_counter() - start) * 1e3)
    print(f"{len(calls)} log_prob calls (K 3, 4, 5), {int(keep.sum())} of {len(keep)} rows kept")
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.1f} ms (median of {args.repeats}; each: "
              f"{', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
