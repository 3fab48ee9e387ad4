"""The optimizer pre + post hooks' cost per step, in microseconds, on examples/' CartPole agent.

Times ``StepRecorder.pre`` then ``.post`` on the agent's parameters (random gradients, a stub
session), 3,000 steps per repeat. With ``--base PATH`` (another checkout, e.g. a
``git worktree add /tmp/base <rev>``) both versions are timed alternately in this process, so a
hot-path change is compared side by side.

Usage: python benchmarks/step_hooks.py [--base PATH] [--repeats 5] [--steps 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from checkouts import module_from  # noqa: E402
from example_overhead import load_example  # noqa: E402


class StubSession:
    """What the hooks ask of a session, answered at no cost."""

    seq = cycle = actor_epoch = 0
    skipping = arming = False

    def holds_actor(self, params: object) -> bool:
        return True

    def param_name(self, p: torch.Tensor) -> str:
        return "p"

    def feeds_logits(self, p: torch.Tensor) -> bool:
        return True

    def on_step_done(self, record: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None, help="another checkout to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    example = load_example()
    _, agent, optimizer = example.build(example.Config(seed=1, total_timesteps=512))
    for p in agent.parameters():
        p.grad = torch.randn_like(p)
    versions = {"this checkout": module_from(ROOT, "ppo_probe.capture.optim")}
    if args.base is not None:
        versions[f"base {args.base}"] = module_from(args.base, "ppo_probe.capture.optim")
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(args.repeats):
        for name, module in versions.items():
            recorder = module.StepRecorder(StubSession())
            start = time.perf_counter()
            for _ in range(args.steps):
                recorder.pre(optimizer, (), {})
                recorder.post(optimizer, (), {})
            times[name].append((time.perf_counter() - start) / args.steps * 1e6)
    for name, values in times.items():
        print(f"{name}: pre + post {statistics.median(values):.1f} us per step (median of "
              f"{args.repeats}; each: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
