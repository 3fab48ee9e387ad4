"""skrl's PPO (a library no one here wrote), unchanged: its update samples too, and its
RunningStandardScaler re-normalizes the stored observations with updated statistics."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import gymnasium as gym
import pytest
from torch import nn
from torch.distributions import Distribution

import ppo_probe

pytest.importorskip("skrl")
ROLLOUTS, CYCLES = 128, 6


def _skrl():
    """skrl's modules, imported here and not at collection: importing skrl.models.torch turns
    torch.distributions' argument validation off for the whole process, which the other tests'
    NaN cases depend on (a NaN logit then fails in multinomial, not at Categorical(...))."""
    previous = Distribution._validate_args
    try:
        import skrl
        from skrl.agents.torch.ppo import PPO, PPO_CFG
        from skrl.envs.wrappers.torch import wrap_env
        from skrl.memories.torch import RandomMemory
        from skrl.models.torch import CategoricalMixin, DeterministicMixin, Model
        from skrl.resources.preprocessors.torch import RunningStandardScaler
        from skrl.trainers.torch import SequentialTrainer
        from skrl.utils import set_seed
    finally:
        Distribution.set_default_validate_args(previous)
    # skrl logs INFO lines through a handler on the stdout it found at import; pytest closes that one
    skrl.logger.setLevel(logging.WARNING)

    class Policy(CategoricalMixin, Model):
        def __init__(self, observation_space, action_space, device):  # noqa: ANN001
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            CategoricalMixin.__init__(self, unnormalized_log_prob=True)
            self.net = nn.Sequential(nn.Linear(self.num_observations, 64), nn.Tanh(), nn.Linear(64, self.num_actions))

        def compute(self, inputs, role):  # noqa: ANN001, ANN201
            return self.net(inputs["observations"]), {}

    class Value(DeterministicMixin, Model):
        def __init__(self, observation_space, action_space, device):  # noqa: ANN001
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            DeterministicMixin.__init__(self)
            self.net = nn.Sequential(nn.Linear(self.num_observations, 64), nn.Tanh(), nn.Linear(64, 1))

        def compute(self, inputs, role):  # noqa: ANN001, ANN201
            return self.net(inputs["observations"]), {}

    return SimpleNamespace(PPO=PPO, PPO_CFG=PPO_CFG, wrap_env=wrap_env, RandomMemory=RandomMemory,
                           RunningStandardScaler=RunningStandardScaler, SequentialTrainer=SequentialTrainer,
                           set_seed=set_seed, Policy=Policy, Value=Value)


def _train(out, scaler: bool):
    k = _skrl()
    PPO, PPO_CFG, RandomMemory, SequentialTrainer = k.PPO, k.PPO_CFG, k.RandomMemory, k.SequentialTrainer
    Policy, Value, wrap_env = k.Policy, k.Value, k.wrap_env
    k.set_seed(0)
    env = wrap_env(gym.make_vec("CartPole-v1", num_envs=4))
    device = env.device
    models = {"policy": Policy(env.observation_space, env.action_space, device),
              "value": Value(env.observation_space, env.action_space, device)}
    extra = {}
    if scaler:
        extra = {"observation_preprocessor": k.RunningStandardScaler,
                 "observation_preprocessor_kwargs": {"size": env.observation_space, "device": device}}
    # skrl's own logs and checkpoints go to its experiment directory (./runs by default)
    experiment = {"directory": str(out.parent / "skrl"), "write_interval": 0, "checkpoint_interval": 0}
    cfg = PPO_CFG(rollouts=ROLLOUTS, learning_epochs=4, mini_batches=4, learning_rate=3e-4,
                  experiment=experiment, **extra)
    agent = PPO(models=models, memory=RandomMemory(memory_size=ROLLOUTS, num_envs=env.num_envs, device=device),
                cfg=cfg, observation_space=env.observation_space, action_space=env.action_space, device=device)
    trainer = SequentialTrainer(cfg={"timesteps": ROLLOUTS * CYCLES, "headless": True, "disable_progressbar": True},
                                env=env, agents=agent)
    previous = Distribution._validate_args  # skrl's Categorical module sets it off when imported
    try:
        with ppo_probe.watch(models["policy"], agent.optimizer, out=out, strict=True) as w:
            trainer.train()
    finally:
        env.close()
        Distribution.set_default_validate_args(previous)
    return ppo_probe.analyze(w.path)


def test_skrl_ppo_pairs_every_update_row(tmp_path):
    """CategoricalMixin.act calls sample() in the update as well, then log_prob(taken_actions):
    before, each of those samples opened a cycle (96 "cycles" for 6 rollouts) and the report had
    nothing to check."""
    report = _train(tmp_path / "run", scaler=False)
    assert report.nothing_to_check is None
    assert len(report.per_cycle) == CYCLES and report.run.meta["cycles"] == CYCLES
    assert report.paired_fraction == 1.0 and len(report.run.pairs) == CYCLES * 4 * ROLLOUTS * 4
    assert not (report.diagnostics["severity"] == "error").any(), report.diagnostics
    warnings = set(report.diagnostics.loc[report.diagnostics["severity"] == "warning", "id"])
    kl = float(report.per_cycle["kl_k3"].median())
    assert warnings <= ({"update-too-small"} if kl < 0.2 * 0.02 else set())
    assert report.per_step["adv_eff_std"].median() == pytest.approx(1.0, abs=0.05)


def test_skrl_running_standard_scaler_is_a_real_mismatch(tmp_path):
    """skrl stores raw observations and normalizes them again at the update, with statistics its
    first epoch has just updated (train=not epoch): the update sees other inputs than the
    rollout did, which is what unpaired-samples reports."""
    report = _train(tmp_path / "run", scaler=True)
    assert len(report.per_cycle) == CYCLES
    assert report.paired_fraction == 0.0 and "unpaired-samples" in report.ids
