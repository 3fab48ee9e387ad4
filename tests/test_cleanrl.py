"""The CleanRL-style example trainer, unchanged, under watch: pairing and adv_eff (issue 2)."""

from __future__ import annotations

import numpy as np
import pytest

import ppo_probe


def _run(cartpole, tmp_path, which: str, seed: int = 1):
    cfg = cartpole.Config(seed=seed, total_timesteps=2048)
    envs, agent, optimizer = cartpole.build(cfg)
    actor = {"agent": agent, "agent.actor": agent.actor, "omitted": None}[which]
    optim = None if which == "omitted" else optimizer
    with ppo_probe.watch(actor, optim, out=tmp_path / which, strict=True) as w:
        cartpole.train(cfg, envs, agent, optimizer)
    return cfg, ppo_probe.analyze(w.path)


@pytest.mark.parametrize("which", ["agent", "agent.actor", "omitted"])
def test_every_update_row_pairs(cartpole, tmp_path, which):
    cfg, report = _run(cartpole, tmp_path, which)
    run = report.run
    iterations = cfg.total_timesteps // (cfg.num_envs * cfg.num_steps)
    batch = cfg.num_envs * cfg.num_steps

    assert len(run.pairs) == iterations * cfg.update_epochs * batch
    assert run.pairs["paired"].all()
    assert run.meta["counts"]["unattributed_dists"] == 0
    # cycles, epochs and steps are recovered from the raw facts alone
    assert list(report.per_cycle["cycle"]) == list(range(iterations))
    assert (report.per_cycle["n_epochs"] == cfg.update_epochs).all()
    assert (report.per_cycle["n_steps"] == cfg.update_epochs * cfg.num_minibatches).all()
    assert (run.pairs["call_rows"] == batch // cfg.num_minibatches).all()
    # the first step of every cycle sees the sampling policy unchanged: ratio == 1
    assert report.per_cycle["first_step_max_abs_log_ratio"].max() < 1e-6
    # every optimized tensor has its own name, also in watch-everything mode (actor and critic
    # are both nn.Sequential there and must not merge)
    names = run.layers.groupby("step")["name"].agg(lambda n: n.nunique() == len(n))
    assert names.all()
    if which == "omitted":
        assert {"Sequential.0.weight", "Sequential#1.0.weight"} <= set(run.layers["name"])


def test_adv_eff_is_the_normalized_advantage(cartpole, tmp_path):
    _, report = _run(cartpole, tmp_path, "agent")
    steps = report.per_step
    unclipped = steps[steps["clip_fraction_grad"] == 0]
    assert len(unclipped) >= len(steps) // 2
    # per-minibatch normalization gives std 1 (ddof=1, as torch's std) on every unclipped step
    assert np.allclose(unclipped["adv_eff_std"], 1.0, atol=0.01)
    assert np.allclose(unclipped["adv_eff_mean"], 0.0, atol=0.01)


def test_kl_estimators_agree_with_exact_kl(cartpole, tmp_path):
    _, report = _run(cartpole, tmp_path, "agent.actor")
    steps = report.per_step[report.per_step["kl_exact"] > 1e-5]
    assert len(steps) > 10
    # k3 is an unbiased estimator of KL(old||new): on a 128-row step it lands near the exact value
    rel = (steps["kl_k3"] - steps["kl_exact"]).abs() / steps["kl_exact"]
    assert rel.median() < 0.2
    # and the exact KL is non-negative on every row
    assert (report.run.pairs["kl_exact"].dropna() >= -1e-6).all()


def test_entropy_gradient_recovers_the_coefficient(cartpole, tmp_path):
    cfg, report = _run(cartpole, tmp_path, "agent")
    update = report.run.dists[report.run.dists["grad_enabled"]]
    minibatch = cfg.num_envs * cfg.num_steps // cfg.num_minibatches
    # loss = ... - ent_coef * entropy.mean(): dLoss/dH_i = -ent_coef / B on every row
    assert np.allclose(update["grad_entropy"] * minibatch, -cfg.ent_coef, rtol=1e-5)
    assert all(list(shape) == [minibatch] for shape in update["batch_shape"])
