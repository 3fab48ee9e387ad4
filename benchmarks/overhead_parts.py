"""Where the probe's overhead goes: each part measured alone, side by side in one process (issue 5).

Prints, for the CleanRL-style CartPole of examples/ (8,192 steps) unless said otherwise:
- the mechanism alone: no-op forward hooks on the agent and its children, no-op optimizer step
  hooks, a pass-through wrapt patch of Categorical, no-op tensor hooks on log-probs (ratio to plain);
- the flush: the full watch with default flush_rows, and flushed every cycle (flush_rows=2560)
  with the conversion on the training thread (the CPU path) or on the writer thread (the path
  taken for accelerator tensors);
- Python's garbage collector over --repeats watched runs: collections per generation, their time;
- microbenchmarks: the probe's cost per sampling step (actor + critic MLP, 4 envs, Categorical +
  sample + log_prob + entropy under no_grad) and per optimizer step (2x64 MLP, Adam).

Usage: python benchmarks/overhead_parts.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import wrapt
from torch import nn
from torch.distributions import Categorical

sys.path.insert(0, str(Path(__file__).resolve().parent))
from example_overhead import load_example  # noqa: E402

import ppo_probe  # noqa: E402

EXAMPLE = load_example()
TMP = Path(tempfile.mkdtemp())
_runs = [0]


def _out() -> Path:
    _runs[0] += 1
    return TMP / f"run{_runs[0]}"


def cartpole(setup: Callable[[nn.Module, torch.optim.Optimizer], Callable[[], None]]) -> float:
    """Seconds of examples/ train() with ``setup`` applied before and undone after (undo timed)."""
    cfg = EXAMPLE.Config(seed=1, total_timesteps=8192)
    envs, agent, optimizer = EXAMPLE.build(cfg)
    start = time.perf_counter()
    undo = setup(agent, optimizer)
    EXAMPLE.train(cfg, envs, agent, optimizer)
    undo()
    return time.perf_counter() - start


def plain(agent, optim):  # noqa: ANN001, ANN201
    return lambda: None


def module_hooks(agent, optim):  # noqa: ANN001, ANN201
    handles = []
    for m in [agent, *agent.children()]:
        handles.append(m.register_forward_pre_hook(lambda mod, a, k: None, with_kwargs=True))
        handles.append(m.register_forward_hook(lambda mod, a, o: None, always_call=True))
    return lambda: [h.remove() for h in handles]


def optim_hooks(agent, optim):  # noqa: ANN001, ANN201
    handles = [optim.register_step_pre_hook(lambda o, a, k: None),
               optim.register_step_post_hook(lambda o, a, k: None)]
    return lambda: [h.remove() for h in handles]


def wrapt_patch(agent, optim):  # noqa: ANN001, ANN201
    saved = {n: Categorical.__dict__[n] for n in ("__init__", "sample", "log_prob", "entropy")}
    for name in saved:
        wrapt.wrap_function_wrapper(Categorical, name, lambda wrapped, instance, a, k: wrapped(*a, **k))

    def undo() -> None:
        for name, original in saved.items():
            setattr(Categorical, name, original)

    return undo


def tensor_hooks(agent, optim):  # noqa: ANN001, ANN201
    original = Categorical.log_prob

    def log_prob(self, value):  # noqa: ANN001, ANN202
        result = original(self, value)
        if result.requires_grad:
            result.register_hook(lambda g: None)
        return result

    Categorical.log_prob = log_prob
    return lambda: setattr(Categorical, "log_prob", original)


def watched(flush_rows: int = 65_536, on_writer: bool = False):  # noqa: ANN201
    def setup(agent, optim):  # noqa: ANN001, ANN202
        # every cycle recorded: this benchmark takes a recorded cycle's cost apart
        w = ppo_probe.watch(agent, optim, out=_out(), flush_rows=flush_rows, every=1)
        w.__enter__()
        if on_writer:
            w.session._off_host = True  # the accelerator path: conversion on the writer thread
        return lambda: w.__exit__(None, None, None)

    return setup


CASES = {
    "plain": plain,
    "no-op module hooks": module_hooks,
    "no-op optimizer hooks": optim_hooks,
    "pass-through Categorical patch": wrapt_patch,
    "no-op log-prob tensor hooks": tensor_hooks,
    "watch every=1, default flush_rows": watched(),
    "watch every=1, flush every cycle, conversion here": watched(2560),
    "watch every=1, flush every cycle, conversion on writer": watched(2560, on_writer=True),
}


def gc_counts(runs: int) -> tuple[list[int], list[float]]:
    counts, seconds, started = [0, 0, 0], [0.0, 0.0, 0.0], {}

    def callback(phase: str, info: dict) -> None:
        g = info["generation"]
        if phase == "start":
            started[g] = time.perf_counter()
        else:
            counts[g] += 1
            seconds[g] += time.perf_counter() - started[g]

    gc.callbacks.append(callback)
    try:
        for _ in range(runs):
            cartpole(watched())
    finally:
        gc.callbacks.remove(callback)
    return counts, seconds


def per_sampling_step_us(watch: bool, n: int = 2000) -> float:
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    critic = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    agent = nn.ModuleDict({"actor": actor, "critic": critic})
    optim = torch.optim.Adam(agent.parameters())
    obs = torch.randn(4, 4)

    def loop() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                d = Categorical(logits=actor(obs))
                d.log_prob(d.sample())
                d.entropy()
                critic(obs)
        return (time.perf_counter() - start) / n * 1e6

    if not watch:
        return loop()
    with ppo_probe.watch(agent, optim, out=_out()):
        return loop()


def per_optimizer_step_us(watch: bool, n: int = 500) -> float:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 18))
    optim = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(128, 64)

    def loop() -> float:
        start = time.perf_counter()
        for _ in range(n):
            optim.zero_grad()
            net(x).sum().backward()
            optim.step()
        return (time.perf_counter() - start) / n * 1e6

    if not watch:
        return loop()
    with ppo_probe.watch(net, optim, out=_out()):
        return loop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cartpole(plain)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, setup in CASES.items():
            times[name].append(cartpole(setup))
    base = statistics.median(times["plain"])
    print(f"examples/ CartPole, 8,192 steps, median of {args.repeats} alternated repeats")
    print("| case | seconds | / plain |")
    print("|---|---|---|")
    for name, values in times.items():
        m = statistics.median(values)
        print(f"| {name} | {m:.3f} | {m / base:.3f} |")
    counts, seconds = gc_counts(args.repeats)
    print(f"\ngarbage collections over {args.repeats} more watched CartPole runs: gen0/1/2 = "
          f"{counts}, taking {' / '.join(f'{s * 1000:.1f}' for s in seconds)} ms")
    for label, fn in (("sampling step", per_sampling_step_us), ("optimizer step (2x64 MLP)", per_optimizer_step_us)):
        fn(False)  # warm-up
        pairs = [(fn(False), fn(True)) for _ in range(args.repeats)]
        p, w = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
        print(f"per {label}: plain {p:.1f} us, watched {w:.1f} us, probe {w - p:.1f} us")


if __name__ == "__main__":
    main()
