"""Stable-Baselines3 PPO, unchanged, watched via model.policy: its own logs are the reference."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import ppo_probe

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3.common.logger import KVWriter, Logger  # noqa: E402


class _Capture(KVWriter):
    """An SB3 logger output format that keeps every dump holding the train/ metrics."""

    def __init__(self) -> None:
        self.dumps: list[dict] = []

    def write(self, key_values, key_excluded, step=0) -> None:
        if "train/approx_kl" in key_values:
            self.dumps.append(dict(key_values))

    def close(self) -> None:
        pass


def _learn_logged(env, n_epochs: int, cycles: int, out, policy: str = "MlpPolicy", **ppo):
    """SB3 PPO (lr high enough that clipping happens, so clip-fraction comparisons are not
    0 == 0) under the probe; returns the report and what SB3 itself logged per update."""
    model = sb3.PPO(
        policy, env, n_steps=256, batch_size=64, n_epochs=n_epochs,
        learning_rate=3e-3, seed=0, device="cpu", verbose=0, **ppo,
    )  # fmt: skip
    capture = _Capture()
    model.set_logger(Logger(folder=None, output_formats=[capture]))
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=out, strict=True) as w:
        model.learn(total_timesteps=256 * cycles)
    return ppo_probe.analyze(w.path), capture.dumps


@pytest.fixture(scope="module")
def sb3_run(tmp_path_factory):
    return _learn_logged("CartPole-v1", 6, 6, tmp_path_factory.mktemp("sb3") / "run")


def test_sb3_pairs_every_update_row(sb3_run):
    report, _ = sb3_run
    pairs = report.run.pairs
    assert len(pairs) == 6 * 6 * 256
    assert pairs["paired"].mean() >= 0.99
    assert report.run.meta["counts"]["unattributed_dists"] == 0


def _assert_matches_sb3_logs(report, dumps, kl_rtol: float) -> None:
    """Per-cycle kl_k3 and clip_fraction equal SB3's train/approx_kl and train/clip_fraction."""
    cycles = report.per_cycle.iloc[: len(dumps)]
    logged_kl = np.array([d["train/approx_kl"] for d in dumps], dtype=np.float64)
    logged_clip = np.array([d["train/clip_fraction"] for d in dumps], dtype=np.float64)
    assert logged_clip.max() > 0.01, "the comparison needs clipping to happen"
    np.testing.assert_allclose(cycles["kl_k3"], logged_kl, rtol=kl_rtol)
    np.testing.assert_allclose(cycles["clip_fraction"], logged_clip, rtol=0, atol=1e-6)


def test_sb3_logged_kl_and_clip_fraction_match(sb3_run):
    report, dumps = sb3_run
    # SB3 dumps train/ metrics of iteration i at the start of iteration i + 1: the last is never dumped
    assert len(dumps) == 5
    _assert_matches_sb3_logs(report, dumps, kl_rtol=1e-4)


def test_sb3_target_kl_stop_counts_the_minibatch_it_stopped_on(tmp_path):
    """With target_kl, SB3 takes the minibatch's log-probs and approx_kl, then breaks before its
    step; its logged approx_kl and clip fraction count that minibatch. Leaving it out (its rows
    reach no step) read 0.0088 for SB3's 0.0125 in such a cycle."""
    report, dumps = _learn_logged("CartPole-v1", 10, 6, tmp_path / "run", target_kl=0.01)
    stopped = report.per_cycle["n_epochs"].iloc[: len(dumps)] < 10
    assert stopped.any(), "the comparison needs the guard to stop some cycle early"
    assert "kl-early-stop" in report.ids
    _assert_matches_sb3_logs(report, dumps, kl_rtol=1e-4)


def test_sb3_clip_range_schedule_is_inferred_per_cycle(tmp_path):
    """clip_range=lambda p: 0.2 * p shrinks eps every update: no single eps brackets the run's
    clipped rows, so clip_coef fell back to 0.2 and the clip fractions read half of SB3's (0.0275
    for its 0.0561) or less. Each cycle brackets its own eps."""
    report, dumps = _learn_logged("CartPole-v1", 10, 6, tmp_path / "run", clip_range=lambda p: 0.2 * p)
    assert report.settings["clip_coef_source"] == "inferred per cycle (a clip schedule)"
    per_cycle = report.settings["clip_coef_per_cycle"]
    expected = [0.2 * (1 - (c + 1) / 6) for c in range(6)]  # progress_remaining after rollout c
    assert [per_cycle[c] for c in range(6)] == pytest.approx(expected, abs=0.005)
    # the inferred eps is the simplest decimal its cycle brackets (0.067 for 0.0667): a row or two
    # of a cycle may fall between
    logged = np.array([d["train/clip_fraction"] for d in dumps])
    np.testing.assert_allclose(report.per_cycle["clip_fraction"].iloc[: len(dumps)], logged, rtol=0, atol=2e-3)
    logged_kl = np.array([d["train/approx_kl"] for d in dumps])
    np.testing.assert_allclose(report.per_cycle["kl_k3"].iloc[: len(dumps)], logged_kl, rtol=1e-4)


def test_sb3_first_step_of_each_cycle_has_ratio_one(sb3_run):
    report, _ = sb3_run
    pairs = report.run.pairs
    first = pairs["step"] == pairs.groupby("cycle")["step"].transform("min")
    assert first.sum() == 6 * 64
    assert pairs.loc[first, "log_ratio"].abs().max() < 1e-6


class _TwoHeadBandit:
    """A contextual bandit with a MultiDiscrete([3, 4]) action: one Categorical per dimension."""

    def __new__(cls):
        import gymnasium as gym

        class Env(gym.Env):
            observation_space = gym.spaces.Box(0.0, 1.0, (6,), np.float32)
            action_space = gym.spaces.MultiDiscrete([3, 4])

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.t = 0
                return self._obs(), {}

            def _obs(self):
                self.state = int(self.np_random.integers(6))
                obs = np.zeros(6, np.float32)
                obs[self.state] = 1.0
                return obs

            def step(self, action):
                reward = float(action[0] == self.state % 3) + float(action[1] == self.state % 4)
                self.t += 1
                return self._obs(), reward, self.t >= 8, False, {}

        return Env()


@pytest.fixture(scope="module")
def sb3_multidiscrete_run(tmp_path_factory):
    return _learn_logged(_TwoHeadBandit(), 4, 5, tmp_path_factory.mktemp("sb3md") / "run")


def test_sb3_multidiscrete_pairs_each_head(sb3_multidiscrete_run):
    report, _ = sb3_multidiscrete_run
    run = report.run
    assert run.meta["counts"]["unattributed_dists"] == 0
    samples = run.samples
    # every log_prob of the sum is one head: 5 cycles x 256 sampled + 5 x 4 epochs x 256 updated
    for phase, rows in (("sampling", 5 * 256), ("update", 5 * 4 * 256)):
        heads = samples.loc[samples["phase"] == phase, "head"].value_counts().sort_index()
        assert heads.to_dict() == {0: rows, 1: rows}
    pairs = run.pairs
    assert pairs["paired"].mean() >= 0.99
    # each head pairs with its own sampled row: the action ranges of the two heads differ
    assert pairs.loc[pairs["head"] == 0, "action"].max() <= 2
    assert pairs.loc[pairs["head"] == 1, "action"].max() == 3
    first = pairs["step"] == pairs.groupby("cycle")["step"].transform("min")
    assert pairs.loc[first, "log_ratio"].abs().max() < 1e-6
    found = set(report.diagnostics["id"])
    assert not found & {"sampling-update-mismatch", "unpaired-samples", "advantages-misaligned"}


def test_sb3_multidiscrete_kl_is_the_joint_actions(sb3_multidiscrete_run):
    """Per-cycle KL and clip fraction are those of the summed log-prob SB3 clips, not per head."""
    report, dumps = sb3_multidiscrete_run
    assert len(dumps) == 4
    logged_kl = np.array([d["train/approx_kl"] for d in dumps], dtype=np.float64)
    assert logged_kl.min() > 0  # the policy moved, so the KL comparison is not 0 == 0
    np.testing.assert_allclose(report.per_cycle["kl_k3"].iloc[: len(dumps)], logged_kl, rtol=1e-4)
    assert report.settings["clip_coef"] == pytest.approx(0.2, abs=0.02)


class _DictObsBandit:
    """A contextual bandit with a Dict observation (SB3's MultiInputPolicy, CombinedExtractor)."""

    def __new__(cls):
        import gymnasium as gym

        class Env(gym.Env):
            observation_space = gym.spaces.Dict({
                "state": gym.spaces.Box(0.0, 1.0, (5,), np.float32),
                "noise": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
            })  # fmt: skip
            action_space = gym.spaces.Discrete(3)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.t = 0
                return self._obs(), {}

            def _obs(self):
                self.state = int(self.np_random.integers(5))
                onehot = np.zeros(5, np.float32)
                onehot[self.state] = 1.0
                return {"state": onehot, "noise": self.np_random.uniform(-1, 1, 3).astype(np.float32)}

            def step(self, action):
                self.t += 1
                return self._obs(), float(action == self.state % 3), self.t >= 8, False, {}

        return Env()


def _learned_dict_extractor():
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class LearnedDictExtractor(BaseFeaturesExtractor):
        """Concatenate the dict's entries, then a trained Linear: features move with each step."""

        def __init__(self, observation_space):
            super().__init__(observation_space, features_dim=16)
            width = sum(int(np.prod(space.shape)) for space in observation_space.spaces.values())
            self.linear = torch.nn.Linear(width, 16)

        def forward(self, observations):
            return torch.tanh(self.linear(torch.cat([observations[k] for k in sorted(observations)], dim=1)))

    return LearnedDictExtractor


def test_sb3_dict_observations_pair(tmp_path):
    """MultiInputPolicy feeds the policy a dict of tensors: the whole dict is the input row. The
    extractor is trained, so its features (the next tensor input down) differ between sampling and
    every update step after the first: only the dict itself pairs."""
    model = sb3.PPO("MultiInputPolicy", _DictObsBandit(), n_steps=128, batch_size=64, n_epochs=3,
                    seed=0, device="cpu", verbose=0,
                    policy_kwargs={"features_extractor_class": _learned_dict_extractor()})
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=tmp_path / "run", strict=True) as w:
        model.learn(total_timesteps=128 * 4)
    report = ppo_probe.analyze(w.path)
    run = report.run
    assert run.meta["counts"]["unattributed_dists"] == 0
    assert len(run.pairs) == 4 * 3 * 128 and report.paired_fraction == 1.0
    first = run.pairs["step"] == run.pairs.groupby("cycle")["step"].transform("min")
    assert run.pairs.loc[first, "log_ratio"].abs().max() < 1e-6
    assert not set(report.ids) & {"sampling-update-mismatch", "unpaired-samples", "advantages-misaligned"}


class _Images(gym.Env):
    """uint8 image observations (CnnPolicy scales them to [0, 1] in preprocess_obs); the reward
    asks for the action the image's mean brightness points at."""

    observation_space = gym.spaces.Box(0, 255, (1, 36, 36), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def _obs(self) -> np.ndarray:
        self.level = int(self.np_random.integers(3))
        return self.np_random.integers(80 * self.level, 80 * self.level + 60, (1, 36, 36), dtype=np.uint8)

    def reset(self, seed=None, options=None):  # noqa: ANN001, ANN201
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):  # noqa: ANN001, ANN201
        reward = float(action == self.level)
        self.t += 1
        return self._obs(), reward, False, self.t >= 16, {}


class _DictImages(_Images):
    """A dict observation of a uint8 image and a vector (MultiInputPolicy scales the image)."""

    observation_space = gym.spaces.Dict({"img": _Images.observation_space,
                                         "vec": gym.spaces.Box(-1, 1, (3,), np.float32)})

    def _obs(self) -> dict:
        return {"img": super()._obs(), "vec": self.np_random.uniform(-1, 1, 3).astype(np.float32)}


# Taxi-v4 from gymnasium 1.1 on, v3 before: on torch < 2.8 pip takes SB3 2.4, which caps gymnasium < 1.1
TAXI = "Taxi-v4" if "Taxi-v4" in gym.registry else "Taxi-v3"


@pytest.mark.parametrize("case", ["Taxi (Discrete observations, one-hot)", "uint8 images (CnnPolicy)",
                                  "a dict of an image and a vector (MultiInputPolicy)"])
def test_sb3_preprocessed_observations_pair(tmp_path, case):
    """SB3 samples through policy(obs) and updates through features_extractor(preprocess_obs(obs)):
    a Discrete observation becomes one-hot and an image is scaled to [0, 1] in between (also an
    image inside a dict observation), so the two calls see different tensors. Before the inner input was kept, 0 of the update rows paired."""
    if case.startswith("Taxi"):
        report, dumps = _learn_logged(TAXI, 4, 4, tmp_path / "run")
    elif case.startswith("uint8"):
        report, dumps = _learn_logged(_Images(), 4, 3, tmp_path / "run", policy="CnnPolicy")
    else:
        report, dumps = _learn_logged(_DictImages(), 4, 3, tmp_path / "run", policy="MultiInputPolicy")
    run = report.run
    assert report.paired_fraction == 1.0
    assert not (report.diagnostics["severity"] == "error").any(), report.diagnostics
    sampling = run.samples[run.samples["phase"] == "sampling"]
    assert sampling["fingerprint_inner"].notna().all()  # the preprocessed input is another tensor
    assert run.pairs["kl_exact"].notna().sum() > 0  # logits kept for the same rows at both phases
    logged_kl = np.array([d["train/approx_kl"] for d in dumps], dtype=np.float64)
    assert logged_kl.min() > 0  # the policy moved, so the KL comparison is not 0 == 0
    np.testing.assert_allclose(report.per_cycle["kl_k3"].iloc[: len(dumps)], logged_kl, rtol=1e-4)


def test_sb3_linear_lr_schedule_to_zero_is_read_without_false_errors(tmp_path):
    """SB3 sets progress_remaining = 1 - done / total before each update, so a linear schedule
    (rl-zoo's lambda, SB3's LinearSchedule) runs its last update at lr exactly 0. analyze()
    raised there (math domain error: the recommendation took the log of that lr), and the last
    step's lr 0 read as an actor not optimized (actor-not-in-optimizer, an error)."""
    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, n_epochs=4,
                    learning_rate=lambda progress: 3e-4 * progress, seed=0, device="cpu", verbose=0)
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=tmp_path / "run", strict=True) as w:
        model.learn(total_timesteps=128 * 6)
    report = ppo_probe.analyze(w.path)
    lrs = report.per_cycle["lr"].astype(float)
    assert lrs.iloc[-1] == 0 and lrs.iloc[0] > 0
    assert report.paired_fraction == 1.0
    assert {"actor-not-in-optimizer", "probe-degraded"}.isdisjoint(report.ids), report.diagnostics
    assert not report.diagnostics["severity"].eq("error").any(), report.diagnostics
    rec = report.recommendation
    assert rec is not None and 0 < rec["lr"] < 1 and rec["lr_scheduled"]


@pytest.mark.parametrize("normalized", [False, True])
def test_sb3_value_clipping_that_freezes_the_critic_is_named_as_such(tmp_path, normalized):
    """clip_range_vf=0.2 against CartPole's unnormalized returns (tens): the clipped value branch
    is taken for every row a few epochs into each update, so the critic's gradient is exactly 0
    on most steps while Adam's momentum moves it. update-without-gradient says so and points at
    the clamp (before, its fix was to leave gradient-less tensors out of the optimizer, which
    does not apply); with the returns normalized (VecNormalize) the critic learns and it is silent."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    if normalized:
        env = VecNormalize(env, norm_obs=False, norm_reward=True)
    model = sb3.PPO("MlpPolicy", env, n_steps=1024, batch_size=64, n_epochs=10, clip_range_vf=0.2,
                    seed=0, device="cpu", verbose=0)
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=tmp_path / "run", strict=True) as w:
        model.learn(total_timesteps=1024 * 6)
    report = ppo_probe.analyze(w.path)
    assert report.paired_fraction == 1.0
    assert not report.diagnostics["severity"].eq("error").any(), report.diagnostics
    if normalized:
        assert "update-without-gradient" not in report.ids, report.diagnostics
        return
    found = report.diagnostics.set_index("id").loc["update-without-gradient"]
    assert found["evidence"].startswith("mlp_extractor.value_net") and "a clamp" in found["evidence"]
    assert "action_net" not in found["evidence"] and "clip_range_vf" in found["fix"]
