"""watch(lr_sweep=f): an lr range test in one run, and the recommendation read from it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ppo_probe
from ppo_probe.analysis.recommend import sweep_lr
from trainers import BanditConfig, make_actor, train_bandit

FACTOR = 2.0


def _sweep_run(tmp_path, cycles=6, lr=1e-4, factor=FACTOR, scheduler=False):
    cfg = BanditConfig(seed=3, batch=256, minibatch=64, epochs=3, cycles=cycles, lr=lr)
    torch.manual_seed(3)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 1.0 / (1 + step / 100)) if scheduler else None
    if sched is not None:  # the trainer's own schedule: decays the lr after every step
        optim.register_step_post_hook(lambda *_: sched.step())
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", lr_sweep=factor, strict=True) as w:
        train_bandit(cfg, {"a": actor}, optim)
    return w.path, optim, cfg


def test_each_cycle_steps_at_the_trainers_lr_times_the_factor_and_it_is_put_back(tmp_path):
    path, optim, cfg = _sweep_run(tmp_path)
    run = ppo_probe.load(path)
    steps = run.steps
    assert run.meta["settings"]["lr_sweep"] == FACTOR
    assert sorted(steps["cycle"].unique()) == list(range(cfg.cycles))  # every cycle recorded
    expected = cfg.lr * FACTOR ** steps["cycle"].astype(float)
    assert np.allclose(steps["lr"].astype(float), expected, rtol=1e-12)
    assert optim.param_groups[0]["lr"] == cfg.lr  # the trainer's lr, untouched after the watch


def test_the_trainers_own_schedule_stands(tmp_path):
    path, optim, cfg = _sweep_run(tmp_path, scheduler=True)
    steps = ppo_probe.load(path).steps
    n = np.arange(len(steps))
    own = cfg.lr / (1 + n / 100)  # what LambdaLR set before each step, unswept
    assert np.allclose(steps["lr"].astype(float), own * FACTOR ** steps["cycle"].astype(float), rtol=1e-9)
    assert optim.param_groups[0]["lr"] == pytest.approx(cfg.lr / (1 + len(steps) / 100), rel=1e-12)


def test_the_report_reads_the_crossing_and_drops_the_kl_band_warnings(tmp_path):
    path, _, cfg = _sweep_run(tmp_path, cycles=8, lr=1e-4, factor=300 ** (1 / 7))
    report = ppo_probe.analyze(path, target_kl=0.02)
    rec = report.recommendation
    assert rec["kl_exponent_source"] == "lr sweep"
    assert not {"update-too-small", "update-too-large"} & set(report.ids)
    assert "an lr sweep run" in str(report) and "lr sweep (x" in rec["rationale"]
    pc = report.per_cycle.sort_values("cycle")
    lrs, kls = pc["lr"].astype(float).to_numpy(), pc["kl_k3"].astype(float).to_numpy()
    assert kls.min() < 0.02 < kls.max()  # this sweep crosses the target
    first_over = int(np.flatnonzero(kls >= 0.02)[0])
    assert lrs[0] < rec["lr"] <= lrs[first_over]
    assert rec["lr_multiplier"] == pytest.approx(rec["lr"] / cfg.lr)


def test_a_step_that_raises_does_not_leave_the_lr_scaled(tmp_path):
    cfg = BanditConfig(seed=3, cycles=4, lr=1e-3)  # 12 steps a cycle
    torch.manual_seed(3)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    calls = {"n": 0}

    def fail_in_cycle_2(*_):
        calls["n"] += 1
        if calls["n"] == 30:
            raise RuntimeError("the trainer's step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        with ppo_probe.watch(actor, optim, out=tmp_path / "run", lr_sweep=3.0, strict=True):
            optim.register_step_pre_hook(fail_in_cycle_2)  # after the watch's: the lr is scaled by then
            train_bandit(cfg, {"a": actor}, optim)
    assert optim.param_groups[0]["lr"] == cfg.lr  # not 9 x (cycle 2's factor)


@pytest.mark.parametrize("bad", [1.0, 0.5, 0, -2, 101, True, "2", float("nan"), float("inf")])
def test_a_bad_factor_is_a_clear_error(tmp_path, bad):
    with pytest.raises(ValueError, match="lr_sweep must be None or a number in"):
        ppo_probe.watch(torch.nn.Linear(2, 2), out=tmp_path / "run", lr_sweep=bad)


def test_sweep_lr_interpolates_the_first_crossing_of_the_non_decreasing_fit():
    lrs = np.array([1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2])
    # a dip at 4e-3 (cycle-to-cycle noise) is pooled with its neighbour; the last cycle collapsed
    kls = np.array([0.004, 0.012, 0.008, 0.03, 5.0])
    lr, how = sweep_lr(lrs, kls, 0.02, knee=0.005)
    pooled = math.log(0.012 * 0.008) / 2  # the mean of the two logs
    frac = (math.log(0.02) - pooled) / (math.log(0.03) - pooled)
    assert lr == pytest.approx(math.exp(math.log(4e-3) + frac * (math.log(8e-3) - math.log(4e-3))))
    assert "crosses the target between lr 0.004" in how


def test_sweep_lr_extends_a_sweep_that_misses_the_target_with_the_model():
    lrs = np.array([1e-4, 2e-4, 4e-4])
    lr, how = sweep_lr(lrs, np.array([1e-4, 2e-4, 4e-4]), 0.02, knee=0.005)
    assert lr > 4e-4 and "never reached the target" in how
    lr, how = sweep_lr(lrs, np.array([0.05, 0.06, 0.07]), 0.02, knee=0.005)
    assert lr < 1e-4 and "started over the target" in how


def test_sweep_lr_backs_off_one_step_from_a_cliff_instead_of_reading_across_it():
    lrs = np.array([1e-3, 2e-3, 4e-3, 8e-3])
    # from 0.009 at 4e-3 to a collapse at 8e-3: interpolating would say ~4.4e-3, at the cliff's edge
    lr, how = sweep_lr(lrs, np.array([0.002, 0.006, 0.009, 19.0]), 0.02, knee=0.005)
    assert "jumps 2111x in one cycle" in how and "one sweep step below" in how
    assert lr == pytest.approx(2e-3)  # 4e-3, whose next cycle collapsed, divided by the step of 2
    assert "stayed under the band up to the jump (at most 0.009)" in how
    assert "reachable" not in how  # a claim its fresh seeds refuted 11 times in 13 (README)
    _, how = sweep_lr(lrs, np.array([0.002, 0.006, 0.015, 19.0]), 0.02, knee=0.005)
    assert "one sweep step below" in how and "under the band" not in how and "reachable" not in how
    # a slope over the band is read as before
    lr, how = sweep_lr(lrs, np.array([0.002, 0.006, 0.012, 0.03]), 0.02, knee=0.005)
    assert "jumps" not in how and 4e-3 < lr < 8e-3
