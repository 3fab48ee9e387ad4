"""Small real PPO trainers for tests: a contextual bandit solved by clipped PPO, one or more actors.

The task is synthetic (observations drawn from a seeded generator, reward for matching the argmax
of a fixed projection) so that no environment package is needed, but the loop is real PPO:
sampling under no_grad, advantage normalization per minibatch, several epochs of shuffled
minibatches, clipped surrogate, optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Categorical


@dataclass
class BanditConfig:
    seed: int = 0
    obs_dim: int = 6
    n_actions: int = 4
    batch: int = 256
    minibatch: int = 64
    epochs: int = 3
    cycles: int = 4
    lr: float = 3e-3
    clip: float = 0.2
    # in-place mutation of the obs buffer between the actor call and the Categorical
    mutate_before_dist: bool = False
    # noise added to the observations the update feeds the actor (they no longer match sampling)
    update_obs_noise: float = 0.0


def make_actor(cfg: BanditConfig) -> nn.Module:
    return nn.Sequential(nn.Linear(cfg.obs_dim, 32), nn.Tanh(), nn.Linear(32, cfg.n_actions))


def train_bandit(cfg: BanditConfig, actors: dict[str, nn.Module], optim: torch.optim.Optimizer) -> None:
    """PPO on the bandit. With several actors each agent sees the same observations (so only the
    actor tells their rows apart) and acts from its own policy."""
    gen = torch.Generator().manual_seed(cfg.seed)
    target = torch.randn(cfg.obs_dim, cfg.n_actions, generator=gen)
    for _ in range(cfg.cycles):
        obs = torch.randn(cfg.batch, cfg.obs_dim, generator=gen)
        best = (obs @ target).argmax(-1)
        rollout = {}
        with torch.no_grad():
            for name, actor in actors.items():
                logits = actor(obs)
                if cfg.mutate_before_dist:
                    obs.add_(0.0)  # an in-place write (no value change) bumps the version counter
                dist = Categorical(logits=logits)
                action = dist.sample()
                rollout[name] = (action, dist.log_prob(action), (action == best).float())
        for _epoch in range(cfg.epochs):
            perm = torch.randperm(cfg.batch, generator=gen)
            for start in range(0, cfg.batch, cfg.minibatch):
                idx = perm[start : start + cfg.minibatch]
                loss = torch.zeros(())
                for name, actor in actors.items():
                    action, old_logp, reward = rollout[name]
                    adv = reward[idx]
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    x = obs[idx] + cfg.update_obs_noise if cfg.update_obs_noise else obs[idx]
                    new_logp = Categorical(logits=actor(x)).log_prob(action[idx])
                    ratio = (new_logp - old_logp[idx]).exp()
                    surrogate = torch.min(adv * ratio, adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip))
                    loss = loss - surrogate.mean()
                optim.zero_grad()
                loss.backward()
                optim.step()


def precision_mlp(logit_scale: float = 1.0) -> nn.Module:
    """A 3-layer MLP policy (16 inputs, 6 actions); ``logit_scale`` multiplies its last layer's
    weights, and so the spread of its logits."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 6))
    with torch.no_grad():
        net[-1].weight.mul_(logit_scale)
    return net


def train_bf16_update(net: nn.Module, optim: torch.optim.Optimizer, temperature: float = 1.0) -> None:
    """PPO that samples in fp32 (logits / ``temperature``) and updates under CPU bf16 autocast: 3
    cycles of 512 rows, one epoch of minibatches of 128."""
    for _cycle in range(3):
        obs = torch.randn(512, 16)
        with torch.no_grad():
            dist = Categorical(logits=net(obs) / temperature)
            action = dist.sample()
            old = dist.log_prob(action)
        adv = torch.randn(512)
        for idx in torch.randperm(512).split(128):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = net(obs[idx])
            ratio = (Categorical(logits=logits.float()).log_prob(action[idx]) - old[idx]).exp()
            loss = -torch.min(ratio * adv[idx], ratio.clamp(0.8, 1.2) * adv[idx]).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
