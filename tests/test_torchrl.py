"""TorchRL, unchanged: a Collector, GAE and ClipPPOLoss with a Categorical ProbabilisticActor.

TorchRL's modules take TensorDicts, not tensors; the probe finds the observation tensor one level
down. ClipPPOLoss logs its own per-minibatch ``kl_approx`` (mean(old - new): k1) and
``clip_fraction``: the probe's per-step figures must equal them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ppo_probe

_VALIDATE = torch.distributions.Distribution._validate_args
torchrl = pytest.importorskip("torchrl")
from tensordict.nn import TensorDictModule  # noqa: E402
from torchrl.collectors import Collector  # noqa: E402
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement  # noqa: E402
from torchrl.data import Binary  # noqa: E402
from torchrl.envs import GymEnv, Transform, TransformedEnv  # noqa: E402
from torchrl.envs.transforms import ActionMask  # noqa: E402
from torchrl.modules import MaskedCategorical, MaskedOneHotCategorical, ProbabilisticActor, ValueOperator  # noqa: E402
from torchrl.objectives import ClipPPOLoss  # noqa: E402
from torchrl.objectives.value import GAE  # noqa: E402

# Importing torchrl.modules turns torch.distributions' argument validation off for the whole
# process; later tests (the zoo's NaN case) rely on it, as users' trainers may
torch.distributions.Distribution.set_default_validate_args(_VALIDATE)

FRAMES, MINIBATCH, EPOCHS, CYCLES = 256, 64, 3, 4


class _MaskFromAngle(Transform):
    """An ``action_mask`` from the pole's angle: one action excluded past 0.03 rad either way
    (about two rows in three), both allowed otherwise; stored at rollout, read at update."""

    def __init__(self) -> None:
        super().__init__(in_keys=["observation"], out_keys=["action_mask"])

    def _apply_transform(self, obs):
        mask = torch.ones(*obs.shape[:-1], 2, dtype=torch.bool)
        mask[..., 0] = ~(obs[..., 2] > 0.03)
        mask[..., 1] = ~(obs[..., 2] < -0.03)
        return mask

    def _reset(self, tensordict, tensordict_reset):
        return self._call(tensordict_reset)

    def transform_observation_spec(self, observation_spec):
        observation_spec["action_mask"] = Binary(n=2, shape=(*observation_spec.shape, 2), dtype=torch.bool)
        return observation_spec


def _train(which: str, out, lr=3e-3, dist: str = "categorical"):
    torch.manual_seed(0)
    env = GymEnv("CartPole-v1", categorical_action_encoding=dist != "masked_onehot")
    in_keys: list | dict = ["logits"]
    cls = torch.distributions.Categorical
    if dist != "categorical":
        env = TransformedEnv(env, _MaskFromAngle())
        env.append_transform(ActionMask())
        in_keys = {"logits": "logits", "mask": "action_mask"}
        cls = MaskedCategorical if dist == "masked" else MaskedOneHotCategorical
    env.set_seed(0)
    net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 2))
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["logits"]), in_keys=in_keys,
        spec=env.action_spec, distribution_class=cls, return_log_prob=True,
    )  # fmt: skip
    critic = ValueOperator(nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1)), in_keys=["observation"])
    loss = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=0.01)
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic, average_gae=True)
    optim = torch.optim.Adam(loss.parameters(), lr=lr)
    collector = Collector(env, actor, frames_per_batch=FRAMES, total_frames=FRAMES * CYCLES)
    buffer = ReplayBuffer(storage=LazyTensorStorage(FRAMES), sampler=SamplerWithoutReplacement(),
                          batch_size=MINIBATCH)
    logged = []
    target = {"actor": actor, "net": net, "auto": None}[which]
    with ppo_probe.watch(target, optim, out=out, strict=True) as w:
        for data in collector:
            for _ in range(EPOCHS):
                with torch.no_grad():
                    gae(data)
                buffer.extend(data.reshape(-1))
                for _ in range(FRAMES // MINIBATCH):
                    terms = loss(buffer.sample())
                    total = terms["loss_objective"] + terms["loss_critic"] + terms["loss_entropy"]
                    optim.zero_grad()
                    total.backward()
                    optim.step()
                    logged.append((float(terms["kl_approx"]), float(terms["clip_fraction"])))
    collector.shutdown()
    return ppo_probe.analyze(w.path), np.array(logged)


@pytest.fixture(scope="module")
def torchrl_run(tmp_path_factory):
    return _train("actor", tmp_path_factory.mktemp("trl") / "run")


def test_torchrl_pairs_every_update_row(torchrl_run):
    report, _ = torchrl_run
    assert report.run.meta["counts"]["unattributed_dists"] == 0
    assert len(report.run.pairs) == CYCLES * EPOCHS * FRAMES
    assert report.paired_fraction == 1.0
    first = report.run.pairs.groupby("cycle")["step"].transform("min") == report.run.pairs["step"]
    assert report.run.pairs.loc[first, "log_ratio"].abs().max() < 1e-6
    errors = report.diagnostics[report.diagnostics["severity"] == "error"]
    assert errors.empty, errors


def test_torchrl_logged_kl_and_clip_fraction_match(torchrl_run):
    report, logged = torchrl_run
    steps = report.per_step
    assert len(steps) == len(logged) == CYCLES * EPOCHS * FRAMES // MINIBATCH
    assert logged[:, 1].max() > 0.01, "the comparison needs clipping to happen"
    np.testing.assert_allclose(steps["kl_k1"], logged[:, 0], rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(steps["clip_fraction"], logged[:, 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["net", "auto"])
def test_torchrl_inner_network_or_auto_mode_pair_too(tmp_path, which):
    report, _ = _train(which, tmp_path / "run")
    assert report.paired_fraction == 1.0


@pytest.mark.parametrize("dist", ["masked", "masked_onehot"])
def test_torchrl_masked_distributions_pair_and_match_its_logged_kl(tmp_path, dist):
    """TorchRL's MaskedCategorical takes log_prob as -cross_entropy(logits, value), never
    entering Categorical.log_prob, and its entropy is its own too (MaskedOneHotCategorical
    hands the argmax to it): before the subclass's own methods were wrapped, no log-prob row
    was written and the report said only "nothing to check"."""
    report, logged = _train("actor", tmp_path / "run", dist=dist)
    assert report.nothing_to_check is None
    assert report.paired_fraction == 1.0 and len(report.run.pairs) == CYCLES * EPOCHS * FRAMES
    assert not report.diagnostics["severity"].eq("error").any(), report.diagnostics
    sampling = report.run.dists[report.run.dists["sampled"]]
    assert 0.2 < sampling["masked_mean"].mean() < 0.9  # the mask is seen on some rows, not all
    np.testing.assert_allclose(report.per_step["kl_k1"], logged[:, 0], rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(report.per_step["clip_fraction"], logged[:, 1], rtol=0, atol=1e-6)
    update = report.run.dists[report.run.dists["grad_enabled"]]
    assert update["grad_entropy"].notna().all()  # its own entropy() is seen too
