"""A PPO trainer that stays on one device, for the capture path's host-device syncs and overhead.

The environment is a contextual bandit generated on the device (observations, rewards, everything),
so the trainer itself syncs nowhere: any host-device sync on the training thread comes from the
probe. On CUDA the run is repeated under ``torch.cuda.set_sync_debug_mode("warn")`` and each
synchronizing call is counted by thread and by whether a ppo_probe frame is on its stack:

- plain run: the trainer's own syncs on the main thread (expected 0);
- watched run: main-thread syncs with a ppo_probe frame (the target: 0) and syncs on the probe's
  writer thread (the bulk flush, allowed).

Then watched / plain wall time, alternated, median of ``--repeats``.

Usage: python benchmarks/device_ppo.py [--device cuda] [--hidden 512] [--batch 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributions import Categorical, Distribution

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import ppo_probe  # noqa: E402

PROBE_DIR = str(ROOT / "ppo_probe")


@dataclass
class Config:
    device: str = "cuda"
    obs_dim: int = 64
    n_actions: int = 18
    hidden: int = 512
    layers: int = 3
    batch: int = 4096
    minibatch: int = 1024
    epochs: int = 4
    cycles: int = 10
    lr: float = 3e-4
    clip: float = 0.2
    seed: int = 0


def make_actor(cfg: Config) -> nn.Module:
    dims = [cfg.obs_dim] + [cfg.hidden] * cfg.layers
    body: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        body += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*body, nn.Linear(dims[-1], cfg.n_actions)).to(cfg.device)


def train(cfg: Config, actor: nn.Module, optim: torch.optim.Optimizer) -> None:
    """PPO with the clipped objective; no .item(), no Python branch on a tensor, no host copy."""
    dev = cfg.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    target = torch.randn(cfg.obs_dim, cfg.n_actions, generator=gen, device=dev)
    for _ in range(cfg.cycles):
        obs = torch.randn(cfg.batch, cfg.obs_dim, generator=gen, device=dev)
        with torch.no_grad():
            dist = Categorical(logits=actor(obs))
            action = dist.sample()
            old_logp = dist.log_prob(action)
            reward = (obs @ target).softmax(-1).gather(1, action[:, None]).squeeze(1)
        for _epoch in range(cfg.epochs):
            perm = torch.randperm(cfg.batch, generator=gen, device=dev)
            for start in range(0, cfg.batch, cfg.minibatch):
                idx = perm[start : start + cfg.minibatch]
                adv = reward[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                new = Categorical(logits=actor(obs[idx]))
                ratio = (new.log_prob(action[idx]) - old_logp[idx]).exp()
                surrogate = torch.min(adv * ratio, adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip))
                loss = -surrogate.mean() - 0.01 * new.entropy().mean()
                optim.zero_grad()
                loss.backward()
                optim.step()


EXIT_TIMES: list[float] = []


def one_run(cfg: Config, out: Path | None) -> float:
    """Wall time of training, and for a watched run the watch's exit (final flush) included;
    the exit's share goes to EXIT_TIMES."""
    torch.manual_seed(cfg.seed)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    if cfg.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if out is None:
        train(cfg, actor, optim)
    else:
        with ppo_probe.watch(actor, optim, out=out):
            train(cfg, actor, optim)
            if cfg.device == "cuda":
                torch.cuda.synchronize()
            body_end = time.perf_counter()
        EXIT_TIMES.append(time.perf_counter() - body_end)
    if cfg.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def count_syncs(cfg: Config, out: Path | None) -> dict[str, int]:
    """Synchronizing CUDA calls during one run, by thread and by whether ppo_probe is on the stack."""
    counts = {"main, trainer": 0, "main, ppo_probe": 0, "writer thread": 0}
    examples: dict[str, str] = {}
    lock = threading.Lock()

    def record(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if "synchroniz" not in str(message):
            return
        stack = traceback.extract_stack()[:-1]
        main = threading.current_thread() is threading.main_thread()
        probe = [f for f in stack if f.filename.startswith(PROBE_DIR)]
        key = "writer thread" if not main else ("main, ppo_probe" if probe else "main, trainer")
        with lock:
            counts[key] += 1
            if key == "main, ppo_probe" and key not in examples:
                examples[key] = f"{probe[-1].filename}:{probe[-1].lineno} {probe[-1].line}"

    with warnings.catch_warnings():  # restores showwarning and the filters on exit
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            one_run(cfg, out)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for key, where in examples.items():
        print(f"  first {key} sync at {where}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    Distribution.set_default_validate_args(False)  # as SB3 does: validation syncs on every call
    cfg = Config(device=args.device, hidden=args.hidden, batch=args.batch, cycles=args.cycles)
    name = torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; actor 3 x {cfg.hidden} MLP, batch {cfg.batch}, "
          f"minibatch {cfg.minibatch}, {cfg.epochs} epochs, {cfg.cycles} cycles")
    with tempfile.TemporaryDirectory() as tmp:
        one_run(cfg, None)  # warm-up: kernels, allocator
        one_run(cfg, Path(tmp) / "warm")
        if cfg.device == "cuda":
            print("host-device syncs (torch.cuda.set_sync_debug_mode('warn')):")
            print(f"  plain:   {count_syncs(cfg, None)}")
            print(f"  watched: {count_syncs(cfg, Path(tmp) / 'sync')}")
        ratios = []
        for i in range(args.repeats):
            plain = one_run(cfg, None)
            watched = one_run(cfg, Path(tmp) / f"run{i}")
            ratios.append(watched / plain)
            print(f"run {i}: plain {plain:.3f}s  watched {watched:.3f}s (of which the final flush at "
                  f"exit {EXIT_TIMES[-1]:.3f}s)  ratio {watched / plain:.3f}")
        run = ppo_probe.load(Path(tmp) / f"run{args.repeats - 1}")
        print(f"median watched / plain: {statistics.median(ratios):.3f}; paired fraction "
              f"{run.paired_fraction:.4f} of {len(run.pairs)} update rows; probe errors: "
              f"{run.meta.get('probe_errors') or 'none'}")


if __name__ == "__main__":
    main()
