"""The recording schedule: the first cycles, then every n-th; skipped cycles cost next to nothing
and leave nothing behind, and what is recorded pairs and judges as if every cycle were."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Distribution

import ppo_probe
from ppo_probe.capture import categorical
from test_invariants import _assert_no_trace
from trainers import BanditConfig, make_actor, train_bandit
from zoo import Bugs, Config, build, train

QUIET = {"update-too-small", "update-too-large", "kl-sign-cancellation"}


def _cleanrl(tmp_path, bugs=Bugs(), iterations=14, **watch):
    cfg = Config(num_iterations=iterations)
    envs, agent, optimizer = build(cfg, bugs)
    with ppo_probe.watch(agent, optimizer, out=tmp_path / "run", strict=True, **watch) as w:
        train(cfg, bugs, envs, agent, optimizer)
    return ppo_probe.analyze(w.path), agent, optimizer


def test_first_cycles_then_every_nth_pair_fully(tmp_path):
    report, agent, optimizer = _cleanrl(tmp_path, every=4, first_cycles=2)
    run = report.run
    assert sorted(report.per_cycle["cycle"]) == [0, 1, 4, 8, 12]
    assert run.meta["cycles"] == 14 and run.meta["recorded_cycles"] == 5
    assert run.meta["settings"]["every"] == 4 and run.meta["settings"]["first_cycles"] == 2
    sampled = run.samples[run.samples["phase"] == "sampling"]
    assert sampled.groupby("cycle").size().to_dict() == {c: 4 * 128 for c in (0, 1, 4, 8, 12)}
    assert bool(run.pairs["paired"].all()) and len(run.pairs) == 5 * 4 * 4 * 128
    # optimizer steps keep their global numbers: 16 a cycle, none recorded from skipped cycles
    steps_per_cycle = report.per_step.groupby("cycle")["step"].agg(["min", "max", "size"])
    assert steps_per_cycle.loc[4].tolist() == [64, 79, 16]
    assert steps_per_cycle.loc[12].tolist() == [192, 207, 16]
    # the step before each recorded cycle was armed: its first step measures outside changes
    layers = run.layers[run.layers["step"].isin([64, 128, 192])]
    assert layers["outside_delta_norm"].notna().all() and (layers["outside_delta_norm"] == 0).all()
    assert set(report.diagnostics["id"]) <= QUIET, report.diagnostics[["id", "evidence"]]
    assert "recorded 5 of 14 cycles (watch schedule: the first 2, then every 4th" in str(report)
    from ppo_probe.analysis.report import _ordinal

    assert [_ordinal(n) for n in (2, 3, 11, 20, 21, 22, 113)] == [
        "2nd", "3rd", "11th", "20th", "21st", "22nd", "113th"]
    _assert_no_trace([agent], optimizer)


def test_every_one_records_every_cycle(tmp_path):
    report, _, _ = _cleanrl(tmp_path, iterations=11, every=1, first_cycles=0)
    assert sorted(report.per_cycle["cycle"]) == list(range(11))
    assert report.run.meta["recorded_cycles"] == 11
    text = str(report)
    assert "recorded 11 of" not in text and "watch schedule" not in text  # nothing was skipped
    assert "no update rows recorded" not in text and "update rows 22528, paired 22528" in text


def test_forward_hooks_are_detached_in_skipped_cycles(tmp_path):
    """Root forward pre-hooks seen right after each cycle's first sample(): attached in recorded
    cycles (0 and 3), detached in skipped ones, back during the updates of cycles 2 and 5 (armed
    for 3 and 6)."""
    cfg = BanditConfig(seed=0)
    torch.manual_seed(0)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    at_sampling, in_update, patched_at_sampling, patched_in_update, hooked = [], [], [], [], []
    names = ("__init__", "sample", "log_prob", "entropy")
    originals = {name: Categorical.__dict__[name] for name in names}
    installed = []  # the class's four methods seen at each update step (the dispatchers)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True, every=3, first_cycles=1) as w:
        for _cycle in range(6):
            obs = torch.randn(64, cfg.obs_dim)
            with torch.no_grad():
                dist = Categorical(logits=actor(obs))
                action = dist.sample()
                at_sampling.append(len(actor._forward_pre_hooks))
                patched_at_sampling.append("log_prob" in categorical._live)
                old = dist.log_prob(action)
            for _step in range(3):
                logp = Categorical(logits=actor(obs)).log_prob(action)
                hooked.append(int(logp._backward_hooks is not None))  # recorded: a gradient hook
                ratio = (logp - old).exp()
                loss = -(ratio * torch.randn(64)).mean()
                optim.zero_grad()
                loss.backward()
                optim.step()
                in_update.append(len(actor._forward_pre_hooks))
                patched_in_update.append(tuple(n in categorical._live for n in names))
                installed.append(tuple(Categorical.__dict__[n] for n in names))
    assert at_sampling == [1, 0, 0, 1, 0, 0]
    # the Categorical patch reports nothing in a skipped sampling phase; from its first step on,
    # only sample() and log_prob() (either can open the next cycle), all four when armed
    assert patched_at_sampling == [True, False, False, True, False, False]
    everything, boundary = (True, True, True, True), (False, True, True, False)
    assert patched_in_update == ([everything] * 3 + [boundary] * 3 + [everything] * 6
                                 + [boundary] * 3 + [everything] * 3)
    # ... by a module global: the class itself is assigned to only at the watch's entry and exit
    # (each assignment spends one of its attribute-cache version tags on CPython >= 3.13)
    assert len(set(installed)) == 1
    assert all(installed[0][i] is not originals[n] for i, n in enumerate(names))
    assert all(Categorical.__dict__[n] is originals[n] for n in names)
    assert in_update[6:9] == [1, 1, 1]  # cycle 2: armed from its first step on
    assert in_update[3:6] == [0, 0, 0] and in_update[12:15] == [0, 0, 0]
    assert in_update[15:] == [1, 1, 1]  # armed for cycle 6 when the watch ends: still no trace
    # an armed update phase records nothing (only the parameters' snapshots are kept current)
    assert hooked == [1, 1, 1] + [0] * 6 + [1, 1, 1] + [0] * 6
    _assert_no_trace([actor], optim)
    report = ppo_probe.analyze(w.path)
    assert sorted(report.per_cycle["cycle"]) == [0, 3]
    assert bool(report.run.pairs["paired"].all()) and len(report.run.pairs) == 2 * 3 * 64


@pytest.mark.parametrize("step", [0, 3])
def test_a_nan_crash_in_a_skipped_cycle_is_still_found(tmp_path, step):
    """At step 0 only sample() and log_prob() are wrapped (they look for the cycle's start), later
    in a skipped sampling phase nothing is: __init__ runs unwrapped either way, and the failure
    is read from the exception's traceback."""
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(True)
    try:
        cfg = Config(num_iterations=8)
        bugs = Bugs(nan_obs_at_iteration=5, nan_obs_at_step=step)
        envs, agent, optimizer = build(cfg, bugs)
        probe = ppo_probe.watch(agent, optimizer, out=tmp_path / "run", every=4, first_cycles=2)
        with pytest.raises(ValueError):
            with probe:
                train(cfg, bugs, envs, agent, optimizer)
    finally:
        Distribution.set_default_validate_args(previous)
    report = ppo_probe.analyze(probe.path)
    assert report.run.meta["status"] == "interrupted: ValueError"
    assert sorted(report.per_cycle["cycle"]) == [0, 1, 4]
    found = report.diagnostics.set_index("id")
    assert "nonfinite-values" in found.index
    assert "Categorical constructions failed" in found.loc["nonfinite-values", "evidence"]
    assert report.run.meta["counts"]["nonfinite_dist_inputs"] == 1


def test_reloaded_weights_are_found_across_skipped_cycles(tmp_path):
    report, _, _ = _cleanrl(tmp_path, Bugs(reload_actor_every_step=True), iterations=8, every=3,
                            first_cycles=1)
    assert sorted(report.per_cycle["cycle"]) == [0, 3, 6]
    found = report.diagnostics.set_index("id")
    assert "params-changed-outside-step" in found.index
    assert "a reload" in found.loc["params-changed-outside-step", "evidence"]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"every": 0}, "every must be an int >= 1"), ({"every": 2.5}, "every must be an int"),
     ({"first_cycles": -1}, "first_cycles must be an int >= 0"), ({"every": True}, "every must")],
)
def test_bad_schedules_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ppo_probe.watch(**kwargs)


def test_rl_games_rule_acts_once_per_cycle_of_the_run_not_per_recorded_one():
    import pandas as pd

    from ppo_probe.analysis.recommend import KLModel, rl_games_rule

    model = KLModel(1.0, 0.2, knee=0.005)
    kl, lr = pd.Series([0.2, 0.2]), pd.Series([1e-3, 1e-3])
    # KL 10 x target: /1.5 on every cycle while the modelled KL stays over 2 x target
    assert rl_games_rule(kl, lr, 0.02, model) == pytest.approx([1e-3 / 1.5, 1e-3 / 1.5**2])
    # recorded cycles 0 and 1 of cycles 0-4 (1 stands for 1-4): five cycles, five divisions
    assert rl_games_rule(kl, lr, 0.02, model, [1, 4])[-1] == pytest.approx(1e-3 / 1.5**5)


def test_sb3_ppo_unchanged_under_a_schedule(tmp_path):
    sb3 = pytest.importorskip("stable_baselines3")
    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, n_epochs=3, seed=0,
                    device="cpu")
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=tmp_path / "run", every=4,
                         first_cycles=2, strict=True) as w:
        model.learn(total_timesteps=128 * 12)
    report = ppo_probe.analyze(w.path)
    assert (report.run.meta["cycles"], report.run.meta["recorded_cycles"]) == (12, 4)
    assert sorted(report.per_cycle["cycle"]) == [0, 1, 4, 8]
    assert len(report.run.pairs) == 4 * 3 * 128 and bool(report.run.pairs["paired"].all())
    assert set(report.diagnostics["id"]) <= QUIET, report.diagnostics[["id", "evidence"]]


def test_nested_watches_with_different_schedules_each_get_their_cycles(tmp_path):
    """The Categorical patch comes off only while every watch is in a skipped sampling phase: an
    outer watch recording every cycle keeps all of them while the inner one skips."""
    cfg = BanditConfig(seed=3, cycles=6)
    torch.manual_seed(3)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with ppo_probe.watch(actor, optim, out=tmp_path / "all", strict=True, every=1) as outer:
        with ppo_probe.watch(actor, optim, out=tmp_path / "some", strict=True, every=4, first_cycles=1) as inner:
            train_bandit(cfg, {"a": actor}, optim)
    everything, some = ppo_probe.analyze(outer.path), ppo_probe.analyze(inner.path)
    assert sorted(everything.per_cycle["cycle"]) == list(range(6))
    assert sorted(some.per_cycle["cycle"]) == [0, 4]
    for report, cycles in ((everything, 6), (some, 2)):
        assert len(report.run.pairs) == cycles * cfg.epochs * cfg.batch
        assert bool(report.run.pairs["paired"].all())
    _assert_no_trace([actor], optim)
