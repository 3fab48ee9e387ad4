"""analyze(): settings from [tool.ppo_probe] and arguments, clip eps inference, report forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

import ppo_probe
from ppo_probe.analysis.recommend import KLModel
from ppo_probe.capture import session as session_module
from trainers import BanditConfig, make_actor, train_bandit


@pytest.fixture(scope="module")
def clipped_run(tmp_path_factory):
    """A bandit run whose lr makes PPO's clip (eps 0.2 in the trainer) active on many rows."""
    cfg = BanditConfig(seed=11, lr=3e-2, epochs=4, cycles=4)
    torch.manual_seed(11)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    out = tmp_path_factory.mktemp("clipped") / "run"
    with ppo_probe.watch(actor, optim, out=out, strict=True) as w:
        train_bandit(cfg, {"a": actor}, optim)
    return w.path


def _config(tmp_path, text: str):
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    return path


def test_clip_coef_is_inferred_from_zero_gradient_rows(clipped_run, tmp_path):
    report = ppo_probe.analyze(clipped_run, pyproject=_config(tmp_path, ""))
    assert report.settings["clip_coef_source"] == "inferred"
    assert report.settings["clip_coef"] == pytest.approx(0.2)
    assert report.per_cycle["clip_fraction"].max() > 0.05
    # both definitions agree when eps is right: |r-1| > eps only on rows whose branch was clipped
    # or that moved against their advantage
    assert (report.per_step["clip_fraction_grad"] <= report.per_step["clip_fraction"] + 1e-9).all()


def test_settings_come_from_pyproject_then_arguments(clipped_run, tmp_path):
    config = _config(
        tmp_path,
        '[tool.ppo_probe]\ntarget_kl = 10.0\nclip_coef = 0.3\nignore = ["kl-sign-cancellation"]\n'
        'severities = { "update-too-small" = "info" }\n',
    )
    report = ppo_probe.analyze(clipped_run, pyproject=config)
    assert report.settings["target_kl"] == 10.0 and report.settings["clip_coef"] == 0.3
    assert "kl-sign-cancellation" not in report.ids
    small = report.diagnostics[report.diagnostics["id"] == "update-too-small"]
    assert len(small) == 1 and small["severity"].iloc[0] == "info"
    overridden = ppo_probe.analyze(clipped_run, pyproject=config, target_kl=0.02, ignore=[])
    assert overridden.settings["target_kl"] == 0.02
    assert "update-too-small" not in overridden.ids


@pytest.mark.parametrize(
    "text, message",
    [
        ("[tool.ppo_probe]\ntarget_kl = -1\n", "target_kl must be > 0"),
        ('[tool.ppo_probe]\nignore = ["no-such-id"]\n', "unknown diagnostic ids"),
        ("[tool.ppo_probe]\nbogus = 1\n", "unknown setting 'bogus'"),
        ('[tool.ppo_probe]\nseverities = { "unpaired-samples" = "fatal" }\n', "severities must be one of"),
        ("[tool.ppo_probe\n", "cannot read"),
        ('[tool.ppo_probe]\ntarget_kl = "0.02"\n', "target_kl must be a finite number, got '0.02'"),
        ("[tool.ppo_probe]\nclip_band = [0.3, 0.05]\n", "clip_band must be two numbers"),
        ("[tool.ppo_probe]\nadv_std_band = 2\n", "adv_std_band must be two numbers"),
        ("[tool.ppo_probe]\nignore = 3\n", "ignore must be a list of diagnostic ids"),
    ],
)
def test_bad_settings_are_one_clear_error(clipped_run, tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        ppo_probe.analyze(clipped_run, pyproject=_config(tmp_path, text))


def test_bad_arguments_are_one_clear_error(clipped_run):
    with pytest.raises(ValueError, match="clip_coef must be a finite number, got '0.2' in arguments"):
        ppo_probe.analyze(clipped_run, clip_coef="0.2")
    with pytest.raises(TypeError, match="a run is a directory path .* got int"):
        ppo_probe.analyze(42)
    with pytest.raises(TypeError, match="got float"):
        ppo_probe.analyze(clipped_run, previous=0.5)


def test_ignore_takes_one_id_as_a_string(clipped_run):
    both = ppo_probe.analyze(clipped_run, target_kl=10.0)
    assert "update-too-small" in both.ids
    assert "update-too-small" not in ppo_probe.analyze(clipped_run, target_kl=10.0, ignore="update-too-small").ids


def test_report_forms(clipped_run, tmp_path):
    report = ppo_probe.analyze(clipped_run, pyproject=_config(tmp_path, ""))
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["paired_fraction"] == 1.0
    assert report.nothing_to_check is None and payload["nothing_to_check"] is None
    assert [d["id"] for d in payload["diagnostics"]] == report.ids
    assert len(payload["per_cycle"]) == len(report.per_cycle)
    text = str(report)
    assert "kl_k3" in text and "recommendation: lr" in text
    rec = report.recommendation
    kl, knee = report.per_cycle["kl_k3"].median(), report.settings["clip_coef"] ** 2 / 8
    # by hand: slope 2 up to the clip knee eps^2/8, slope 0.7 from there to the target
    expected = (knee / kl) ** 0.5 * (0.02 / knee) ** (1 / 0.7) if kl < knee else (0.02 / kl) ** (1 / 0.7)
    assert rec["lr_multiplier"] == pytest.approx(expected, rel=1e-6)
    assert rec["kl_knee"] == pytest.approx(knee) and "clip knee" in rec["rationale"]
    assert rec["lr"] == pytest.approx(3e-2 * rec["lr_multiplier"])
    assert "Adam" in rec["rationale"] and "rl_games" in rec["rationale"]


def test_probe_failures_are_reported_as_probe_degraded(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected capture failure")

    monkeypatch.setattr(session_module.Session, "_keep_input", broken)
    cfg = BanditConfig(seed=12, cycles=2)
    torch.manual_seed(12)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with pytest.warns(RuntimeWarning):
        with ppo_probe.watch(actor, optim, out=tmp_path / "run") as w:
            train_bandit(cfg, {"a": actor}, optim)
    report = ppo_probe.analyze(w.path, pyproject=_config(tmp_path, ""))
    degraded = report.diagnostics.set_index("id").loc["probe-degraded"]
    assert degraded["severity"] == "info"
    assert "Categorical capture failed" in degraded["evidence"] and "injected" in degraded["evidence"]


def test_an_empty_run_analyzes_to_nothing(tmp_path):
    with ppo_probe.watch(out=tmp_path / "empty"):
        pass
    report = ppo_probe.analyze(tmp_path / "empty", pyproject=_config(tmp_path, ""))
    assert report.per_step.empty and report.per_cycle.empty
    assert report.diagnostics.empty and report.ok and report.recommendation is None
    assert report.nothing_to_check.startswith("the watch saw no torch.distributions.Categorical")
    assert f"nothing to check: {report.nothing_to_check}" in str(report)


@pytest.mark.parametrize("kl0", [1e-5, 0.004, 0.005, 0.02, 0.3])
def test_kl_model_is_continuous_with_its_two_slopes(kl0):
    model = KLModel(lr0=1e-3, kl0=kl0, knee=0.005)
    assert model.kl_at(1e-3) == pytest.approx(kl0)
    for kl in (1e-6, 0.001, 0.005, 0.01, 0.02, 1.0):
        assert model.kl_at(model.lr_for(kl)) == pytest.approx(kl)
    lr_knee = model.lr_for(0.005)
    assert model.kl_at(lr_knee / 10) == pytest.approx(0.005 / 100)  # slope 2 below the knee
    assert model.kl_at(lr_knee * 10) == pytest.approx(0.005 * 10**0.7)  # slope 0.7 above it


def test_a_previous_run_gives_the_recommendation_its_slope(clipped_run, tmp_path):
    """With ``previous`` (the same trainer at another lr), the KL's slope in the lr is read from
    the two runs: p = log(KL / KL_prev) / log(lr / lr_prev), clipped to [0.5, 4], and the
    multiplier is (target / KL)^(1 / p) from this run, within [1/4, 4]. A previous run at the same
    lr gives no slope."""
    config = _config(tmp_path, "")
    cfg = BanditConfig(seed=11, lr=3e-3, epochs=4, cycles=4)
    torch.manual_seed(11)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with ppo_probe.watch(actor, optim, out=tmp_path / "low", strict=True) as w:
        train_bandit(cfg, {"a": actor}, optim)
    low = ppo_probe.analyze(w.path, pyproject=config)
    high = ppo_probe.analyze(clipped_run, pyproject=config, previous=w.path)
    kl_low, kl_high = low.recommendation["kl_per_cycle_median"], high.recommendation["kl_per_cycle_median"]
    p = min(4.0, max(0.5, math.log(kl_high / kl_low) / math.log(3e-2 / 3e-3)))
    rec = high.recommendation
    assert rec["kl_exponent_source"] == "two runs" and rec["kl_exponent"] == pytest.approx(p)
    expected = min(4.0, max(0.25, (0.02 / kl_high) ** (1 / p)))  # a two-run step moves the lr 4x at most
    assert rec["lr_multiplier"] == pytest.approx(expected, rel=1e-6)
    assert "read from this run and the previous one" in rec["rationale"]
    assert "--previous" not in rec["rationale"] and "--previous" in low.recommendation["rationale"]
    assert ppo_probe.analyze(clipped_run, pyproject=config, previous=low).recommendation == rec  # a Report works too
    alone = ppo_probe.analyze(clipped_run, pyproject=config, previous=clipped_run).recommendation
    assert alone["kl_exponent_source"] is None and "clip knee" in alone["rationale"]


def test_a_two_run_recommendation_moves_the_lr_at_most_4x():
    """Two points on a plateau (KL x1.1 over an 8x lr: a secant under the 0.5 floor) would ask for
    (0.02 / 0.0066)^2 ~ 9x; the two-run step is capped at 4x, and says so."""
    import pandas as pd

    from ppo_probe.analysis.config import Thresholds
    from ppo_probe.analysis.recommend import recommend

    per_cycle = pd.DataFrame({"cycle": [0, 1, 2], "lr": [8e-3] * 3, "kl_k3": [0.0066] * 3})
    per_step = pd.DataFrame({"adv_eff_std": [1.0, 1.0]})
    steps = pd.DataFrame({"holds_actor": [True], "optimizer_class": ["Adam"]})
    rec = recommend(per_cycle, per_step, steps, {}, Thresholds(), 0.2, previous=(1e-3, 0.006))
    assert rec["kl_exponent"] == pytest.approx(0.5) and rec["kl_exponent_source"] == "two runs"
    assert rec["lr_multiplier"] == pytest.approx(4.0) and rec["lr"] == pytest.approx(0.032)
    assert "clamped from" in rec["rationale"]
    alone = recommend(per_cycle, per_step, steps, {}, Thresholds(), 0.2)
    assert alone["lr_multiplier"] == pytest.approx((0.02 / 0.0066) ** (1 / 0.7))  # no cap on one run


def _odd_run(tmp_path, cycles: int, *, old_logp: bool = True, rollout_no_grad: bool = True,
             update_by_hand: bool = False, sample_by_hand: bool = False, update_samples: bool = False,
             **schedule: int):
    """A 2-action PPO loop on a linear policy, 64 rows, 2 steps a cycle, with one of the ways a
    trainer can leave the probe without its usual facts: no old log-prob stored at sampling, a
    rollout with grad enabled (actions from ``dist.sample()`` or drawn by hand), or update
    log-probs read by hand from ``dist.logits``, or an update that also samples and discards the
    sample (skrl's ``CategoricalMixin.act``)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    optim = torch.optim.Adam(net.parameters(), lr=1e-3)
    with ppo_probe.watch(net, optim, out=tmp_path / "run", **schedule) as w:
        for _ in range(cycles):
            obs = torch.randn(64, 4)
            with torch.set_grad_enabled(not rollout_no_grad):
                dist = Categorical(logits=net(obs))
                action = torch.multinomial(dist.probs, 1).squeeze(1) if sample_by_hand else dist.sample()
                old = dist.log_prob(action).detach() if old_logp else torch.zeros(64)
            for _ in range(2):
                dist = Categorical(logits=net(obs))
                if update_samples:
                    dist.sample()  # discarded: the loss takes the stored actions
                if update_by_hand:
                    new = dist.logits.gather(1, action[:, None]).squeeze(1)
                else:
                    new = dist.log_prob(action)
                loss = -((new - old).exp() * torch.randn(64)).mean()
                optim.zero_grad()
                loss.backward()
                optim.step()
    return ppo_probe.analyze(w.path)


def test_update_rows_without_sampling_log_probs_say_so(tmp_path):
    """A trainer that samples actions but never calls log_prob at sampling gives the update rows
    nothing to pair with; unpaired-samples says that, not "the inputs differ"."""
    found = _odd_run(tmp_path, 3, old_logp=False).diagnostics.set_index("id").loc["unpaired-samples"]
    assert "the 3 cycles they fall in hold no sampling-phase log-prob row" in found["evidence"]
    assert "dist.log_prob(action) under torch.no_grad()" in found["fix"]


def test_a_categorical_whose_log_prob_is_never_called_leaves_nothing_to_check(tmp_path):
    """The update builds a Categorical with grad but reads its log-probs by hand from
    dist.logits: no update row, and the reason says so."""
    report = _odd_run(tmp_path, 2, update_by_hand=True)
    assert report.nothing_to_check.startswith("4 Categoricals built with grad enabled, but log_prob() was never called")


def test_a_rollout_with_grad_enabled_is_read_as_sampling(tmp_path):
    """Sampling without torch.no_grad() (old log-probs detached afterwards): the Categoricals
    sample() is called on are the sampling policy, whatever the grad mode; every cycle pairs."""
    report = _odd_run(tmp_path, 3, rollout_no_grad=False)
    samples = report.run.samples
    assert (samples["phase"] == "sampling").sum() == 3 * 64 and report.run.pairs["cycle"].nunique() == 3
    assert report.paired_fraction == 1.0 and "unpaired-samples" not in report.ids
    assert report.run.dists["sampled"].sum() == 3 and "logprob-detached" not in report.ids
    # under a schedule too: the armed phase records the sampled Categorical that opens a cycle
    scheduled = _odd_run(tmp_path / "scheduled", 7, rollout_no_grad=False, every=3, first_cycles=1)
    by_cycle = scheduled.run.pairs.groupby("cycle")["paired"].agg(["mean", "size"])
    assert list(by_cycle.index) == [0, 3, 6] and (by_cycle["mean"] == 1.0).all()


@pytest.mark.parametrize("rollout_no_grad", [True, False])
def test_an_update_that_also_samples_is_still_the_update(tmp_path, rollout_no_grad):
    """skrl's CategoricalMixin.act calls sample() in the update too, then log_prob(taken_actions):
    a grad-mode sample() is a rollout's only when log_prob is then taken of what it returned.
    Before, each such update step opened a cycle and nothing was left to check."""
    report = _odd_run(tmp_path, 3, rollout_no_grad=rollout_no_grad, update_samples=True)
    assert report.nothing_to_check is None
    assert len(report.per_cycle) == 3 and report.run.dists["sampled"].sum() == 3
    assert len(report.run.pairs) == 3 * 2 * 64 and report.paired_fraction == 1.0
    # (this loop redraws its advantages every step, so advantages-misaligned is its one error)
    assert not {"unpaired-samples", "logprob-detached"} & set(report.ids)


def test_a_rollout_with_grad_and_hand_drawn_actions_is_named(tmp_path):
    """Without sample() the grad-mode rollout cannot be told from an update: unpaired-samples
    names its gradient-less calls and asks for the rollout under no_grad."""
    found = _odd_run(tmp_path, 3, rollout_no_grad=False, sample_by_hand=True).diagnostics.set_index("id").loc["unpaired-samples"]
    assert "3 of the 9 grad-mode log_prob calls (192 rows) never received a gradient" in found["evidence"]
    assert found["fix"].startswith("Run the rollout under torch.no_grad()")


def test_an_lr_schedule_is_scaled_from_its_peak(tmp_path):
    """Under a decaying lr (CleanRL's anneal_lr) the multiplier applies to the whole schedule and
    is quoted against its peak, the lr the user configured, not the last cycle's lr."""
    cfg = BanditConfig(seed=4, lr=1e-4, cycles=6)
    torch.manual_seed(4)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    steps_per_cycle = cfg.epochs * cfg.batch // cfg.minibatch
    count = [0]

    def anneal(optimizer, args, kwargs):  # noqa: ANN001, ANN202 - lr x (1 - cycle / cycles)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * (1 - (count[0] // steps_per_cycle) / cfg.cycles)
        count[0] += 1

    handle = optim.register_step_pre_hook(anneal)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", every=1) as w:
        train_bandit(cfg, {"a": actor}, optim)
    handle.remove()
    rec = ppo_probe.analyze(w.path).recommendation
    assert rec["lr_scheduled"] and rec["lr_of_run"] == pytest.approx(cfg.lr)
    assert rec["lr_multiplier"] > 1 and rec["lr"] == pytest.approx(cfg.lr * rec["lr_multiplier"])
    assert "scale the whole schedule" in rec["rationale"]


def test_a_constant_lr_is_no_schedule(clipped_run):
    rec = ppo_probe.analyze(clipped_run).recommendation
    assert not rec["lr_scheduled"] and rec["lr_of_run"] == pytest.approx(3e-2)
    assert "schedule" not in rec["rationale"].split(". ")[0]


def test_a_cycle_at_lr_zero_leaves_the_recommendation_to_the_others(clipped_run):
    """The last update of a linear schedule runs at lr 0 with a KL of float noise (7e-10 in an
    SB3 run): rl_games' rule then modelled the KL from lr 0 and took its log."""
    from ppo_probe.analysis.config import Thresholds
    from ppo_probe.analysis.recommend import recommend

    report = ppo_probe.analyze(clipped_run)
    cycles = report.per_cycle.copy()
    cycles.loc[cycles.index[-1], ["lr", "kl_k3"]] = [0.0, 7e-10]
    rec = recommend(cycles, report.per_step, report.run.steps, report.run.meta, Thresholds(), 0.2)
    kept = report.per_cycle.iloc[:-1]
    assert rec is not None and math.isfinite(rec["lr"]) and rec["lr"] > 0
    assert rec["kl_per_cycle_median"] == pytest.approx(float(kept["kl_k3"].median()))


def test_a_failing_recommendation_is_probe_degraded_not_a_traceback(clipped_run, monkeypatch):
    from ppo_probe.analysis import report as report_module

    def broken(*args, **kwargs):
        raise ValueError("math domain error")

    monkeypatch.setattr(report_module, "recommend", broken)
    report = ppo_probe.analyze(clipped_run)
    assert report.recommendation is None
    found = report.diagnostics.set_index("id").loc["probe-degraded", "evidence"]
    assert "the recommendation failed (ValueError: math domain error)" in found


def _shared_actor_per_agent_loop(path, reduce: str, adv_scale: float = 1.0, n_agents: int = 8):
    """A MARL-style PPO loop: one actor shared by n agents, one log_prob call per agent, one
    backward per minibatch, advantages normalized over all agents' rows (then scaled)."""
    torch.manual_seed(0)
    actor = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    optim = torch.optim.Adam(actor.parameters(), lr=1e-3)
    rows = 64
    with ppo_probe.watch(actor, optim, out=path, every=1, strict=True) as w:
        for _ in range(4):
            obs = torch.randn(n_agents, rows, 6)
            with torch.no_grad():
                dists = [Categorical(logits=actor(obs[i])) for i in range(n_agents)]
                action = torch.stack([d.sample() for d in dists])
                old = torch.stack([d.log_prob(a) for d, a in zip(dists, action)])
            adv = (action == obs[..., :4].argmax(-1)).float()
            adv = adv_scale * (adv - adv.mean()) / (adv.std() + 1e-8)
            for _epoch in range(4):
                for idx in torch.randperm(rows).split(16):
                    terms = []
                    for i in range(n_agents):
                        ratio = (Categorical(logits=actor(obs[i, idx])).log_prob(action[i, idx]) - old[i, idx]).exp()
                        terms.append(torch.min(ratio * adv[i, idx], ratio.clamp(0.8, 1.2) * adv[i, idx]))
                    loss = -torch.cat(terms).mean() if reduce == "one mean" else -sum(t.mean() for t in terms)
                    optim.zero_grad()
                    loss.backward()
                    optim.step()
    return ppo_probe.analyze(w.path)


@pytest.mark.parametrize("reduce", ["one mean", "sum of means"])
def test_log_prob_calls_pooled_in_one_mean_read_the_pooled_rows_as_b(tmp_path, reduce):
    """8 agents' calls in one backward pass: torch.cat(terms).mean() divides by all 8 x 16 rows, a
    sum of per-agent means by each call's 16. Read per call, the first showed adv_eff std 0.125
    and fired advantages-not-normalized with an advantage scale of x8 on normalized advantages."""
    report = _shared_actor_per_agent_loop(tmp_path / "run", reduce)
    assert report.paired_fraction == 1.0
    assert report.per_step["adv_eff_std"].median() == pytest.approx(1.0, abs=0.02)
    assert report.recommendation["adv_scale"] == pytest.approx(1.0, abs=0.02)
    assert "advantages-not-normalized" not in report.ids
    expected_b = 8 * 16 if reduce == "one mean" else 16
    assert (report.run.pairs["loss_rows"] == expected_b).all()


def test_pooled_calls_with_unnormalized_advantages_still_read_as_unnormalized(tmp_path):
    """Advantages of std 100 pooled over 8 calls: neither reading gives std 1, so the rows keep
    the per-call B and read std 12.5, outside the band."""
    report = _shared_actor_per_agent_loop(tmp_path / "run", "one mean", adv_scale=100.0)
    assert "advantages-not-normalized" in report.ids
    assert report.per_step["adv_eff_std"].median() == pytest.approx(100 / 8, rel=0.02)


def test_a_grad_mode_categorical_the_loss_never_uses_is_no_update_categorical(tmp_path):
    """Tianshou's test collector takes ``dist.mode`` of Categoricals built without ``no_grad``:
    no sample, no log_prob, no entropy gradient. Before the first rollout such an evaluation
    resolved to step 0 and pulled its entropy toward the evaluation's; per-step entropy must be
    that of the Categoricals the loss used, as the trainer computed it."""
    torch.manual_seed(0)
    actor = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))
    optim = torch.optim.Adam(actor.parameters(), lr=1e-3)
    trainer_entropy = []
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", every=1, strict=True) as w:
        for _ in range(3):
            Categorical(logits=actor(10 * torch.randn(256, 4))).mode  # an evaluation, grad enabled
            obs = torch.randn(256, 4)
            with torch.no_grad():
                dist = Categorical(logits=actor(obs))
                action = dist.sample()
                old = dist.log_prob(action)
            adv = torch.randn(256)
            for idx in torch.randperm(256).split(64):
                dist = Categorical(logits=actor(obs[idx]))
                ratio = (dist.log_prob(action[idx]) - old[idx]).exp()
                entropy = dist.entropy().mean()
                loss = -torch.min(ratio * adv[idx], ratio.clamp(0.8, 1.2) * adv[idx]).mean() - 0.01 * entropy
                trainer_entropy.append(float(entropy.detach()))
                optim.zero_grad()
                loss.backward()
                optim.step()
    report = ppo_probe.analyze(w.path)
    assert report.paired_fraction == 1.0
    np.testing.assert_allclose(report.per_step["entropy"], trainer_entropy, rtol=1e-5)
