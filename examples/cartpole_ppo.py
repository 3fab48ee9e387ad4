"""CleanRL-style PPO on CartPole, run under ppo_probe, then its report.

Usage:
    python examples/cartpole_ppo.py [--total-timesteps 20000] [--seed 1] [--out DIR] [--no-probe]

The trainer below is an ordinary PPO loop (after CleanRL's ppo.py): it knows nothing of the probe.
``main`` wraps it in ``ppo_probe.watch(agent, optimizer)`` and prints the per-cycle table.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical


@dataclass
class Config:
    seed: int = 1
    total_timesteps: int = 20_000
    num_envs: int = 4
    num_steps: int = 128
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )  # fmt: skip
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, n_actions), std=0.01),
        )  # fmt: skip

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        logits = self.actor(x)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def make_env() -> gym.Env:
    return gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))


def build(cfg: Config) -> tuple[gym.vector.SyncVectorEnv, Agent, torch.optim.Optimizer]:
    """Seed everything and build the environments, the agent and its optimizer."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    envs = gym.vector.SyncVectorEnv([make_env for _ in range(cfg.num_envs)])
    agent = Agent(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    return envs, agent, optimizer


def train(cfg: Config, envs, agent: Agent, optimizer: torch.optim.Optimizer) -> list[float]:
    """Run PPO; returns the episodic returns seen (for a glance at learning progress)."""
    batch_size = cfg.num_envs * cfg.num_steps
    minibatch_size = batch_size // cfg.num_minibatches
    num_iterations = cfg.total_timesteps // batch_size
    obs = torch.zeros((cfg.num_steps, cfg.num_envs) + envs.single_observation_space.shape)
    actions = torch.zeros((cfg.num_steps, cfg.num_envs) + envs.single_action_space.shape)
    logprobs = torch.zeros((cfg.num_steps, cfg.num_envs))
    rewards = torch.zeros((cfg.num_steps, cfg.num_envs))
    dones = torch.zeros((cfg.num_steps, cfg.num_envs))
    values = torch.zeros((cfg.num_steps, cfg.num_envs))
    episode_returns: list[float] = []

    next_obs, _ = envs.reset(seed=cfg.seed)
    next_obs = torch.Tensor(next_obs)
    next_done = torch.zeros(cfg.num_envs)
    for _ in range(num_iterations):
        # ---- rollout: sampling facts (log_prob under no_grad)
        for step in range(cfg.num_steps):
            obs[step] = next_obs
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob
            next_obs_np, reward, terminations, truncations, infos = envs.step(action.numpy())
            next_done = torch.Tensor(np.logical_or(terminations, truncations).astype(np.float32))
            rewards[step] = torch.tensor(reward).view(-1)
            next_obs = torch.Tensor(next_obs_np)
            if "episode" in infos:
                episode_returns.extend(float(r) for r in infos["episode"]["r"][infos["_episode"]])

        # ---- generalized advantage estimation
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(cfg.num_steps)):
                if t == cfg.num_steps - 1:
                    nextnonterminal, nextvalues = 1.0 - next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + cfg.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = (
                    delta + cfg.gamma * cfg.gae_lambda * nextnonterminal * lastgaelam
                )
            returns = advantages + values

        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)

        # ---- update: update facts (log_prob with grad), gradients flow into them
        b_inds = np.arange(batch_size)
        for _epoch in range(cfg.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[start : start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_actions.long()[mb_inds]
                )
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()
                mb_advantages = b_advantages[mb_inds]
                if cfg.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                v_loss = 0.5 * ((newvalue.view(-1) - b_returns[mb_inds]) ** 2).mean()
                loss = pg_loss - cfg.ent_coef * entropy.mean() + v_loss * cfg.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                optimizer.step()
    envs.close()
    return episode_returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-timesteps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: timestamped)")
    parser.add_argument("--no-probe", action="store_true", help="train without the probe")
    args = parser.parse_args()
    cfg = Config(seed=args.seed, total_timesteps=args.total_timesteps)
    envs, agent, optimizer = build(cfg)

    start = time.perf_counter()
    if args.no_probe:
        returns = train(cfg, envs, agent, optimizer)
    else:
        import ppo_probe

        with ppo_probe.watch(agent, optimizer, out=args.out) as w:
            returns = train(cfg, envs, agent, optimizer)
    elapsed = time.perf_counter() - start
    last = np.mean(returns[-20:]) if returns else float("nan")
    print(f"trained {cfg.total_timesteps} steps in {elapsed:.1f}s; mean return of last 20 episodes: {last:.1f}")
    if not args.no_probe:
        print(ppo_probe.analyze(w.path))


if __name__ == "__main__":
    main()
