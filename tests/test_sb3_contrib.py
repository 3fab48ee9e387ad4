"""sb3-contrib's trainers, unchanged. MaskablePPO: masked logits at sampling and at update must
not read as a sampling/update mismatch; RecurrentPPO: see its test."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import ppo_probe

sb3_contrib = pytest.importorskip("sb3_contrib")


class MaskedChoice(gym.Env):
    """Pick the marked one of 6 actions; 2 other actions are invalid at each step."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 1, (12,), np.float32)
        self.action_space = spaces.Discrete(6)
        self.rng = np.random.default_rng(0)

    def _obs(self) -> np.ndarray:
        self.target = int(self.rng.integers(6))
        others = [i for i in range(6) if i != self.target]
        self.mask = np.ones(6, bool)
        self.mask[self.rng.choice(others, 2, replace=False)] = False
        obs = np.zeros(12, np.float32)
        obs[self.target] = 1
        obs[6:] = self.mask
        return obs

    def reset(self, seed=None, options=None):  # noqa: ANN001, ANN201
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):  # noqa: ANN001, ANN201
        reward = float(action == self.target)
        self.t += 1
        return self._obs(), reward, False, self.t >= 16, {}

    def action_masks(self) -> np.ndarray:
        return self.mask


def test_maskable_ppo_masks_are_no_mismatch(tmp_path):
    model = sb3_contrib.MaskablePPO("MlpPolicy", MaskedChoice(), n_steps=256, batch_size=64, n_epochs=4,
                                    seed=0, device="cpu", verbose=0)
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=tmp_path / "run") as w:
        model.learn(1280)
    report = ppo_probe.analyze(w.path)
    assert "sampling-update-mismatch" not in report.ids
    assert not [i for i in report.ids if report.diagnostics.set_index("id").loc[i, "severity"] == "error"]
    # every update row finds its sample: the truncated episodes' value bootstrap (a features
    # extractor call right before the next policy forward) is not taken for the sampling input
    assert report.paired_fraction == 1.0
    sampling = report.run.dists[~report.run.dists["grad_enabled"]]
    assert (sampling["entry"] == "MaskableActorCriticPolicy").all()
    dists = report.run.dists
    assert (dists["masked_mean"].dropna() > 1.5).any()  # the masks were seen (2 of 6 invalid)


def test_recurrent_ppo_pairs_every_row_its_loss_uses(tmp_path):
    """RecurrentPPO runs its two LSTM cells once per timestep between the features extractor and
    the action head (over 64 calls once episodes outgrow the sequences), and pads sequences to
    one length with zero observations that its loss masks out. The observation must still be the
    attributed input, and the padding must read as padding, not as unpaired samples."""
    model = sb3_contrib.RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=128, seed=0, device="cpu")
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=tmp_path / "run", strict=True) as w:
        model.learn(8 * 128)
    report = ppo_probe.analyze(w.path)
    run = report.run
    update = run.dists[run.dists["grad_enabled"]]
    assert (update["entry"] == "features_extractor").all()
    assert report.paired_fraction == 1.0
    assert len(run.pairs) == 8 * 128 * model.n_epochs  # every real row of every epoch
    assert run.padding_rows > 0
    assert f"{run.padding_rows} padding rows" in str(report)
    errors = report.diagnostics[report.diagnostics["severity"] == "error"]
    assert errors.empty, errors
    warnings = set(report.diagnostics.loc[report.diagnostics["severity"] == "warning", "id"])
    kl = float(report.per_cycle["kl_k3"].median())
    assert warnings <= ({"update-too-small"} if kl < 0.2 * 0.02 else set())
    # SB3 normalizes advantages over the mask: the loss divides by the real rows, not the padded
    assert report.per_step["adv_eff_std"].median() == pytest.approx(1.0, abs=1e-3)


def test_maskable_ppo_with_masks_not_given_by_the_observation(tmp_path):
    """sb3-contrib's own InvalidActionEnvDiscrete draws new invalid actions at every step, so one
    (observation, action) is sampled under several masks. Each sample's mask is recorded
    (``samples.mask``) and an update row finds the sample drawn under its own mask: per-cycle
    kl_k3 and clip fraction equal MaskablePPO's logged approx_kl and clip fraction. (Taking the
    first duplicate's log-prob read cycle 5's KL 12% high and its clip fraction 0.027 for 0.020;
    comparing its logits with the first one's read an exact KL of 1.2e7, the masked logits' -1e8
    against unmasked ones.) And each MaskableCategorical was recorded three times, two of them
    unmasked."""
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete
    from stable_baselines3.common.logger import Logger
    from test_sb3 import _Capture

    env = InvalidActionEnvDiscrete(dim=40, n_invalid_actions=30)
    model = sb3_contrib.MaskablePPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=4, seed=0,
                                    learning_rate=3e-3, device="cpu", verbose=0)
    capture = _Capture()
    model.set_logger(Logger(folder=None, output_formats=[capture]))
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=tmp_path / "run", every=1) as w:
        model.learn(256 * 6)
    report = ppo_probe.analyze(w.path)
    assert report.paired_fraction == 1.0
    sampling = report.run.samples[report.run.samples["phase"] == "sampling"]
    masks_per_sample = sampling.groupby(["cycle", "fingerprint", "action"])["mask"].nunique()
    assert (masks_per_sample > 1).sum() > 20, "the case needs (observation, action)s sampled under several masks"
    assert (sampling["mask"] != 0).all()
    logged_kl = np.array([d["train/approx_kl"] for d in capture.dumps])
    logged_clip = np.array([d["train/clip_fraction"] for d in capture.dumps])
    assert len(logged_kl) == 5 and logged_clip.max() > 0.01
    cycles = report.per_cycle.iloc[:5]
    np.testing.assert_allclose(cycles["kl_k3"], logged_kl, rtol=1e-4)
    np.testing.assert_allclose(cycles["clip_fraction"], logged_clip, rtol=0, atol=1e-6)
    # the rows whose logits are kept (about one in K = 40) are compared with their own sample's
    assert report.run.pairs["kl_exact"].notna().sum() > 100
    assert report.per_cycle["kl_exact_end"].max() < 0.05
    assert not report.diagnostics["severity"].eq("error").any(), report.diagnostics
    # MaskableCategorical runs __init__ three times (unmasked twice, then masked): one record is
    # kept, the masked one, so the entropy is over the 10 valid actions (log 10), not 3.23
    dists = report.run.dists
    assert len(dists) == report.run.meta["counts"]["dists"]
    assert (dists["masked_mean"] == 30).all()
    assert report.per_step["entropy"].iloc[0] == pytest.approx(np.log(10), abs=0.01)
