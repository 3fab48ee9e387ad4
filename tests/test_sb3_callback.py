"""ppo_probe.integrations.sb3.ProbeCallback on SB3 PPO and sb3-contrib MaskablePPO, unchanged."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
from test_invariants import _assert_no_trace

import ppo_probe

sb3 = pytest.importorskip("stable_baselines3")
from ppo_probe.integrations.sb3 import ProbeCallback  # noqa: E402


def _ppo(env="CartPole-v1", **kw):
    return sb3.PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=3, seed=0, device="cpu",
                   verbose=0, **kw)


def _no_trace(model):
    _assert_no_trace([model.policy], model.policy.optimizer)
    assert "train" not in vars(model) and "collect_rollouts" not in vars(model)


def test_callback_watches_learn_and_leaves_no_trace(tmp_path):
    model = _ppo()
    probe = ProbeCallback(out=tmp_path / "run", strict=True)
    model.learn(128 * 4, callback=probe)
    _no_trace(model)
    assert probe.path == tmp_path / "run"
    report = probe.analyze()
    meta = report.run.meta
    assert meta["status"] == "complete" and meta["actors"] == {"actor": "ActorCriticPolicy"}
    assert len(report.run.pairs) == 4 * 3 * 128 and report.paired_fraction >= 0.99
    assert len(report.per_cycle) == 4
    assert not set(report.ids) & {"sampling-update-mismatch", "unpaired-samples", "logprob-detached"}


class _Crashing(gym.Wrapper):
    def __init__(self, env, at):
        super().__init__(env)
        self.n, self.at = 0, at

    def step(self, action):
        self.n += 1
        if self.n == self.at:
            raise RuntimeError("env crashed")
        return self.env.step(action)


@pytest.mark.parametrize("where", ["env", "train"])
def test_an_exception_inside_learn_closes_the_watch(tmp_path, where):
    """SB3 skips on_training_end when learn() raises: the callback still removes every hook."""
    env = _Crashing(gym.make("CartPole-v1"), at=300 if where == "env" else 10**9)
    model = _ppo(env)
    if where == "train":
        calls = {"n": 0}
        real = model.policy.optimizer.step

        def failing_step(*a, **k):  # the third cycle's update fails, as a NaN check would
            calls["n"] += 1
            if calls["n"] == 2 * 3 * 2 + 1:
                raise FloatingPointError("loss is NaN")
            return real(*a, **k)

        model.policy.optimizer.step = failing_step
    probe = ProbeCallback(out=tmp_path / "run")
    with pytest.raises((RuntimeError, FloatingPointError)):
        model.learn(128 * 6, callback=probe)
    if where == "train":
        del model.policy.optimizer.step
    _no_trace(model)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    expected = "RuntimeError" if where == "env" else "FloatingPointError"
    assert meta["status"] == f"interrupted: {expected}"
    report = ppo_probe.analyze(tmp_path / "run")
    assert len(report.per_cycle) == 2 and report.paired_fraction >= 0.99


def test_context_manager_form_and_a_second_learn(tmp_path):
    model = _ppo()
    with ProbeCallback(out=tmp_path / "a") as probe:
        model.learn(128 * 2, callback=probe)
    _no_trace(model)
    first = probe.analyze()
    assert len(first.per_cycle) == 2
    probe2 = ProbeCallback(out=tmp_path / "b")
    model.learn(128 * 2, callback=probe2, reset_num_timesteps=False)
    _no_trace(model)
    assert len(probe2.analyze().per_cycle) == 2


def test_maskable_ppo_through_the_callback(tmp_path):
    contrib = pytest.importorskip("sb3_contrib")
    from test_sb3_contrib import MaskedChoice

    model = contrib.MaskablePPO("MlpPolicy", MaskedChoice(), n_steps=128, batch_size=64, n_epochs=3,
                                seed=0, device="cpu", verbose=0)
    probe = ProbeCallback(out=tmp_path / "run", strict=True)
    model.learn(128 * 3, callback=probe)
    _no_trace(model)
    report = probe.analyze()
    assert report.paired_fraction >= 0.95
    assert "sampling-update-mismatch" not in report.ids


def test_bad_keyword_and_no_run_yet():
    with pytest.raises(TypeError, match="unexpected keyword"):
        ProbeCallback(actor=None)
    with pytest.raises(RuntimeError, match="no run yet"):
        ProbeCallback().analyze()
