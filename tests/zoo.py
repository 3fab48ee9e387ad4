"""A bug zoo: small REAL PPO trainers, each with exactly one classic bug, for diagnostic tests.

``run_case(name, out, seed)`` trains one case under ``ppo_probe.watch`` and returns the run
directory; ``CASES`` maps every buggy case to the diagnostic id it must trigger and ``HEALTHY``
lists the cases that must trigger no error and no warning other than ``update-too-small`` /
``update-too-large`` where the KL really is outside the band (info findings are allowed).

Three trainers, all self-contained (nothing is imported from ``examples/``):

- a CleanRL-style PPO on gymnasium ``CartPole-v1`` (4 envs x 128 steps, 4 epochs x 4 minibatches,
  5 iterations). A ``Bugs`` dataclass of flags is threaded through ``build`` and ``train``: with
  every flag at its default the loop is exactly the standard CleanRL PPO, and each case flips one;
- a MAPPO-style trainer: two actors, one optimizer, action masks, on a synthetic one-step task;
- Stable-Baselines3 PPO, unchanged.

Every case takes about a second on an idle 2-core machine. Where a case needed more than the flag
its name suggests for the bug to show in the recorded data, a comment at its entry in ``_CLEANRL``
(or at the flag) says why: ``adamw_decay_no_grad`` preallocates gradient buffers (zero_grad with
set_to_none=False alone never creates a gradient for a head that no loss reaches),
``tiny_advantages`` starts the value head at zero, ``huge_lr`` uses lr 0.05.
"""

from __future__ import annotations

import copy
import pathlib
import random
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

import ppo_probe

# --------------------------------------------------------------------------------------------
# CleanRL-style PPO on CartPole with injectable bugs
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    seed: int = 0
    num_envs: int = 4
    num_steps: int = 128
    num_iterations: int = 5
    learning_rate: float = 2.5e-4
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


@dataclass(frozen=True)
class Bugs:
    """One flag per injectable bug; all defaults = the standard, healthy PPO."""

    # update-time Categorical built from logits.detach(): no gradient reaches the actor
    detach_logits: bool = False
    # optimizer over agent.critic.parameters() only
    critic_only_optimizer: bool = False
    # learning rate override (None: Config.learning_rate)
    lr: float | None = None
    # rewards multiplied by this before GAE
    reward_scale: float = 1.0
    # per-minibatch advantage normalization
    norm_adv: bool = True
    # minibatch advantages taken with a second, independent permutation
    second_permutation: bool = False
    # sampling uses Categorical(logits=logits / T); the update uses plain logits
    sample_temperature: float = 1.0
    # actor head padded to `padded_actions` logits; sampling over the first `action_subset` only,
    # the update over all of them
    action_subset: int | None = None
    padded_actions: int = 5
    # policy loss reduced with .sum() instead of .mean()
    sum_reduction: bool = False
    # loss = pg_loss + ent_coef * entropy (sign flipped)
    entropy_sign_flipped: bool = False
    # old log-prob recomputed at update time from the current network, with grad
    old_logp_with_grad: bool = False
    # actor weights restored from a copy taken before training after every optimizer step
    reload_actor_every_step: bool = False
    # unused aux head, AdamW(weight_decay=0.1) over all parameters, gradient buffers kept as zeros
    adamw_unused_head: bool = False
    # at this iteration one observation entry becomes NaN before the sampling forward
    nan_obs_at_iteration: int | None = None
    nan_obs_at_step: int = 0  # ... at this rollout step of it
    # SB3-style KL guard: break out of the update before the step when approx_kl > 1.5 * target
    target_kl: float | None = None
    # the update feeds b_obs * this (a recomputed state encoding)
    obs_scale_at_update: float = 1.0
    # std of the orthogonal init of the actor's last layer
    actor_head_std: float = 0.01
    # std of the orthogonal init of the critic's last layer
    value_head_std: float = 1.0


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(
        self, obs_dim: int, n_logits: int, actor_head_std: float = 0.01, value_head_std: float = 1.0
    ) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=value_head_std),
        )  # fmt: skip
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, n_logits), std=actor_head_std),
        )  # fmt: skip

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(
        self,
        x: torch.Tensor,
        action: torch.Tensor | None = None,
        *,
        detach: bool = False,
        temperature: float = 1.0,
        n_valid: int | None = None,
    ):
        logits = self.actor(x)
        if detach:  # bug: detached_logits
            logits = logits.detach()
        if n_valid is not None:  # bug: action_subset (a local K at sampling only)
            logits = logits[..., :n_valid]
        if temperature != 1.0:  # bug: temperature_one_path
            logits = logits / temperature
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def make_env() -> gym.Env:
    return gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))


def build(cfg: Config, bugs: Bugs) -> tuple[gym.vector.SyncVectorEnv, Agent, torch.optim.Optimizer]:
    """Seed everything and build the environments, the agent and its optimizer."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    envs = gym.vector.SyncVectorEnv([make_env for _ in range(cfg.num_envs)])
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)
    n_logits = bugs.padded_actions if bugs.action_subset is not None else n_actions
    agent = Agent(obs_dim, n_logits, bugs.actor_head_std, bugs.value_head_std)
    if bugs.adamw_unused_head:
        agent.aux = nn.Linear(64, 2)  # never called: no gradient ever reaches it
    lr = cfg.learning_rate if bugs.lr is None else bugs.lr
    params = agent.critic.parameters() if bugs.critic_only_optimizer else agent.parameters()
    if bugs.adamw_unused_head:
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=lr, eps=cfg.adam_eps, weight_decay=0.1
        )
    else:
        optimizer = torch.optim.Adam(params, lr=lr, eps=cfg.adam_eps)
    return envs, agent, optimizer


def train(
    cfg: Config, bugs: Bugs, envs, agent: Agent, optimizer: torch.optim.Optimizer
) -> list[float]:
    """Run PPO (CleanRL's ppo.py) with the bugs in ``bugs``; returns the episodic returns seen."""
    try:
        return _train(cfg, bugs, envs, agent, optimizer)
    finally:
        envs.close()


def _train(
    cfg: Config, bugs: Bugs, envs, agent: Agent, optimizer: torch.optim.Optimizer
) -> list[float]:
    batch_size = cfg.num_envs * cfg.num_steps
    minibatch_size = batch_size // cfg.num_minibatches
    obs = torch.zeros((cfg.num_steps, cfg.num_envs) + envs.single_observation_space.shape)
    actions = torch.zeros((cfg.num_steps, cfg.num_envs) + envs.single_action_space.shape)
    logprobs = torch.zeros((cfg.num_steps, cfg.num_envs))
    rewards = torch.zeros((cfg.num_steps, cfg.num_envs))
    dones = torch.zeros((cfg.num_steps, cfg.num_envs))
    values = torch.zeros((cfg.num_steps, cfg.num_envs))
    episode_returns: list[float] = []

    initial_actor_state = None
    if bugs.reload_actor_every_step:
        initial_actor_state = copy.deepcopy(agent.actor.state_dict())
    if bugs.adamw_unused_head:
        # gradient buffers allocated up front and only ever zeroed, never freed: the unused head
        # carries an all-zero gradient at every step, so AdamW treats it as a parameter to step
        for p in agent.parameters():
            p.grad = torch.zeros_like(p)

    next_obs, _ = envs.reset(seed=cfg.seed)
    next_obs = torch.Tensor(next_obs)
    next_done = torch.zeros(cfg.num_envs)
    for iteration in range(cfg.num_iterations):
        # ---- rollout
        for step in range(cfg.num_steps):
            if bugs.nan_obs_at_iteration == iteration and step == bugs.nan_obs_at_step:
                next_obs[0, 0] = float("nan")  # bug: a corrupt observation reaches the actor
            obs[step] = next_obs
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(
                    next_obs, temperature=bugs.sample_temperature, n_valid=bugs.action_subset
                )
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob
            next_obs_np, reward, terminations, truncations, infos = envs.step(action.numpy())
            next_done = torch.Tensor(np.logical_or(terminations, truncations).astype(np.float32))
            rewards[step] = torch.tensor(reward).view(-1) * bugs.reward_scale
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
        if bugs.obs_scale_at_update != 1.0:
            b_obs = b_obs * bugs.obs_scale_at_update  # bug: a re-encoded state at update time

        # ---- update
        b_inds = np.arange(batch_size)
        stop = False
        for _epoch in range(cfg.update_epochs):
            np.random.shuffle(b_inds)
            adv_inds = np.random.permutation(batch_size) if bugs.second_permutation else b_inds
            for start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[start : start + minibatch_size]
                mb_obs, mb_actions = b_obs[mb_inds], b_actions.long()[mb_inds]
                if bugs.old_logp_with_grad:  # bug: "old" log-prob from the current net, with grad
                    _, mb_oldlogprob, _, _ = agent.get_action_and_value(mb_obs, mb_actions)
                else:
                    mb_oldlogprob = b_logprobs[mb_inds]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    mb_obs, mb_actions, detach=bugs.detach_logits
                )
                logratio = newlogprob - mb_oldlogprob
                ratio = logratio.exp()
                if bugs.target_kl is not None:
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - logratio).mean()
                    if approx_kl > 1.5 * bugs.target_kl:  # SB3-style guard, before the step
                        stop = True
                        break

                mb_advantages = b_advantages[adv_inds[start : start + minibatch_size]]
                if bugs.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                        mb_advantages.std() + 1e-8
                    )
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
                pg_max = torch.max(pg_loss1, pg_loss2)
                pg_loss = pg_max.sum() if bugs.sum_reduction else pg_max.mean()
                v_loss = 0.5 * ((newvalue.view(-1) - b_returns[mb_inds]) ** 2).mean()
                ent_sign = 1.0 if bugs.entropy_sign_flipped else -1.0
                loss = pg_loss + ent_sign * cfg.ent_coef * entropy.mean() + v_loss * cfg.vf_coef

                optimizer.zero_grad(set_to_none=not bugs.adamw_unused_head)
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if initial_actor_state is not None:
                    agent.actor.load_state_dict(initial_actor_state)  # bug: outside the step
            if stop:
                break
    return episode_returns


# --------------------------------------------------------------------------------------------
# MAPPO-style: two actors, one optimizer, action masks, a synthetic one-step task
# --------------------------------------------------------------------------------------------


@dataclass
class MappoConfig:
    seed: int = 0
    obs_dim: int = 8
    n_actions: int = 5
    batch: int = 256
    minibatch: int = 64
    epochs: int = 4
    cycles: int = 5
    lr: float = 3e-4  # kl_k3 ~0.0025 and clip ~0.002 per cycle when healthy
    clip: float = 0.2
    ent_coef: float = 0.01
    # each action is invalid with this probability (one random action per row is always valid;
    # ~2.6% of rows keep a single valid action, as dead/stunned agents do)
    p_invalid: float = 0.4
    # bug: at update the mask is rebuilt as all-valid (i.e. not applied)
    mask_rebuilt_at_update: bool = False


def make_mappo_actors(cfg: MappoConfig) -> dict[str, nn.Module]:
    torch.manual_seed(cfg.seed)
    return {
        f"agent_{i}": nn.Sequential(
            nn.Linear(cfg.obs_dim, 64), nn.Tanh(),
            nn.Linear(64, 64), nn.Tanh(),
            nn.Linear(64, cfg.n_actions),
        )  # fmt: skip
        for i in range(2)
    }


def train_mappo(
    cfg: MappoConfig, actors: dict[str, nn.Module], optim: torch.optim.Optimizer
) -> None:
    """Each agent sees its own observation and its own valid-action mask, is rewarded 1 for the
    argmax of a fixed linear map among its valid actions. Rollout under no_grad storing obs,
    actions, log-probs and masks; advantage = normalized (reward - mean); epochs of shuffled
    minibatches; clipped surrogate summed over agents; one optimizer step per minibatch."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    target = torch.randn(cfg.obs_dim, cfg.n_actions, generator=gen)
    rows = torch.arange(cfg.batch)
    for _ in range(cfg.cycles):
        rollout = {}
        for name, actor in actors.items():
            obs = torch.randn(cfg.batch, cfg.obs_dim, generator=gen)
            mask = torch.rand(cfg.batch, cfg.n_actions, generator=gen) > cfg.p_invalid
            mask[rows, torch.randint(cfg.n_actions, (cfg.batch,), generator=gen)] = True
            best = (obs @ target).masked_fill(~mask, float("-inf")).argmax(-1)
            with torch.no_grad():
                dist = Categorical(logits=actor(obs).masked_fill(~mask, -1e8))
                action = dist.sample()
                logp = dist.log_prob(action)
            reward = (action == best).float()
            adv = (reward - reward.mean()) / (reward.std() + 1e-8)
            rollout[name] = (obs, mask, action, logp, adv)
        for _epoch in range(cfg.epochs):
            perm = torch.randperm(cfg.batch, generator=gen)
            for start in range(0, cfg.batch, cfg.minibatch):
                idx = perm[start : start + cfg.minibatch]
                loss = torch.zeros(())
                for name, actor in actors.items():
                    obs, mask, action, old_logp, adv = rollout[name]
                    mb_mask = mask[idx]
                    if cfg.mask_rebuilt_at_update:  # bug: the mask is rebuilt, all valid
                        mb_mask = torch.ones_like(mb_mask)
                    dist = Categorical(logits=actor(obs[idx]).masked_fill(~mb_mask, -1e8))
                    ratio = (dist.log_prob(action[idx]) - old_logp[idx]).exp()
                    mb_adv = adv[idx]
                    clipped = ratio.clamp(1 - cfg.clip, 1 + cfg.clip)
                    surrogate = torch.min(mb_adv * ratio, mb_adv * clipped)
                    loss = loss - surrogate.mean() - cfg.ent_coef * dist.entropy().mean()
                optim.zero_grad()
                loss.backward()
                optim.step()


# --------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------

_CLEANRL: dict[str, Bugs] = {
    "healthy": Bugs(),
    "healthy_auto": Bugs(),  # watched with watch(): no actor, no optimizer
    "detached_logits": Bugs(detach_logits=True),
    "critic_only_optimizer": Bugs(critic_only_optimizer=True),
    "lr_zero": Bugs(lr=1e-9),
    "rewards_x1000": Bugs(reward_scale=1000.0, norm_adv=False),
    "second_permutation": Bugs(second_permutation=True),
    "temperature_one_path": Bugs(sample_temperature=2.0),
    "action_subset": Bugs(action_subset=2, padded_actions=5),
    "sum_reduction": Bugs(sum_reduction=True),
    "entropy_sign": Bugs(entropy_sign_flipped=True),
    "old_logp_with_grad": Bugs(old_logp_with_grad=True),
    "reload_every_step": Bugs(reload_actor_every_step=True),
    "adamw_decay_no_grad": Bugs(adamw_unused_head=True),
    "nan_input": Bugs(nan_obs_at_iteration=2),
    # a guard at 1.5 x 0.0003: this trainer's per-cycle KL is 0.0002-0.0006 on torch 2.2-2.14, so
    # it stops some cycles and not others on each (at 0.0005, torch 2.2's run never reached it)
    "kl_guard": Bugs(target_kl=0.0003),
    # A trainer that logs / guards on mean(old - new). The probe sees the facts of the standard
    # loop: at CleanRL's lr, k1 < 0.5 k3 on 30-60% of steps (k1 is noise-dominated at low KL);
    # at lr 2.5e-3 only on ~0-20% of cycles, since k1's relative noise shrinks as the KL grows.
    "k1_cancellation": Bugs(),
    # the value head starts at zero, i.e. in the same tiny units as the rewards: with CleanRL's
    # std-1 value head the untrained critic's own errors (~0.05) would be the advantages instead
    "tiny_advantages": Bugs(reward_scale=1e-6, norm_adv=False, value_head_std=0.0),
    "obs_rescaled_at_update": Bugs(obs_scale_at_update=1.0001),
    # entropy / log K = 1.0000 and logit spread < 1e-4 throughout; the spread still varies ~3-8x
    # between cycles (visited states change and Adam moves the 1e-4-scale head by ~lr per step)
    "flat_head": Bugs(lr=1e-7, actor_head_std=1e-4),
    # lr 0.02 only reaches kl_k3 ~0.0175 / clip ~0.18 per cycle (the clipped objective limits it);
    # 0.05 gives kl_k3 0.03-0.25 and clip 0.3-0.7 on seeds 0-2 without collapsing the policy
    "huge_lr": Bugs(lr=0.05),
}

#: buggy case -> the diagnostic id it must trigger
CASES: dict[str, str] = {
    "detached_logits": "logprob-detached",
    "critic_only_optimizer": "actor-not-in-optimizer",
    "lr_zero": "actor-not-in-optimizer",
    "rewards_x1000": "advantages-not-normalized",
    "second_permutation": "advantages-misaligned",
    "temperature_one_path": "sampling-update-mismatch",
    "action_subset": "sampling-update-mismatch",
    "sum_reduction": "loss-sum-reduction",
    "entropy_sign": "entropy-bonus-sign",
    "old_logp_with_grad": "logprob-grads-cancel",
    "reload_every_step": "params-changed-outside-step",
    "adamw_decay_no_grad": "update-without-gradient",
    "nan_input": "nonfinite-values",
    "kl_guard": "kl-early-stop",
    "k1_cancellation": "kl-sign-cancellation",
    "tiny_advantages": "adam-eps-dominates",
    "obs_rescaled_at_update": "unpaired-samples",
    "flat_head": "policy-head-flat",
    "huge_lr": "update-too-large",
    "mappo_mask_rebuilt": "sampling-update-mismatch",
}

#: cases that must trigger no diagnostic
HEALTHY: list[str] = ["healthy", "healthy_auto", "mappo_healthy", "sb3_healthy"]

ALL_CASES: list[str] = [*HEALTHY, *CASES]


def run_case(name: str, out: pathlib.Path, seed: int = 0, *, strict: bool = False) -> pathlib.Path:
    """Train case ``name`` under ``ppo_probe.watch(out=out)`` and return the run directory.

    ``nan_input`` crashes inside the trainer (Categorical validation raises ``ValueError``); the
    exception is caught here, outside the watch block, and the run directory is returned."""
    out = pathlib.Path(out)
    if name in _CLEANRL:
        return _run_cleanrl(name, out, seed, strict)
    if name in ("mappo_healthy", "mappo_mask_rebuilt"):
        cfg = MappoConfig(seed=seed, mask_rebuilt_at_update=name == "mappo_mask_rebuilt")
        actors = make_mappo_actors(cfg)
        optim = torch.optim.Adam([p for a in actors.values() for p in a.parameters()], lr=cfg.lr)
        with ppo_probe.watch(actors, optim, out=out, overwrite=True, strict=strict) as w:
            train_mappo(cfg, actors, optim)
        return pathlib.Path(w.path)
    if name == "sb3_healthy":
        from stable_baselines3 import PPO

        model = PPO(
            "MlpPolicy", "CartPole-v1", n_steps=256, batch_size=64, n_epochs=4,
            seed=seed, device="cpu", verbose=0,
        )  # fmt: skip
        probe = ppo_probe.watch(
            model.policy, model.policy.optimizer, out=out, overwrite=True, strict=strict
        )
        with probe as w:
            model.learn(total_timesteps=256 * 5)
        return pathlib.Path(w.path)
    raise KeyError(f"unknown zoo case {name!r}; known: {', '.join(ALL_CASES)}")


def _run_cleanrl(name: str, out: pathlib.Path, seed: int, strict: bool) -> pathlib.Path:
    bugs = _CLEANRL[name]
    cfg = Config(seed=seed)
    envs, agent, optimizer = build(cfg, bugs)
    if name == "healthy_auto":
        probe = ppo_probe.watch(out=out, overwrite=True, strict=strict)
    else:
        probe = ppo_probe.watch(agent, optimizer, out=out, overwrite=True, strict=strict)
    try:
        with probe:
            train(cfg, bugs, envs, agent, optimizer)
    except (ValueError, RuntimeError):  # nan_input: Categorical's argument validation rejects the
        # NaN logits (ValueError), or with validation off, multinomial refuses them (RuntimeError)
        if bugs.nan_obs_at_iteration is None:
            raise
    return pathlib.Path(probe.path)


__all__ = ["ALL_CASES", "CASES", "HEALTHY", "Bugs", "Config", "MappoConfig", "run_case"]
