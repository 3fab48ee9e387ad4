"""torch.compile: a compiled actor (its Categoricals are built eagerly, at a graph break, and
recorded; were Dynamo to trace through the patch, the run would say torch.compile instead of
passing as one with no Categorical) and a compiled optimizer.step() (measured as an eager one)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Categorical

import ppo_probe

if not hasattr(torch.compiler, "is_compiling"):  # torch < 2.3: compiled hooks go unnoticed
    pytest.skip("torch.compiler.is_compiling needs torch >= 2.3", allow_module_level=True)


class Agent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3))

    def forward(self, obs, action=None):
        dist = Categorical(logits=self.net(obs))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy()


def _train(policy, optimizer, cycles=3):
    """A small PPO loop calling ``policy`` (compiled or not): 16 rollout steps of 8 envs, 2 epochs."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(cycles):
        obs, actions, old = [], [], []
        with torch.no_grad():
            for _ in range(16):
                o = torch.randn(8, 4, generator=gen)
                a, lp, _ = policy(o)
                obs.append(o), actions.append(a), old.append(lp)
        o, a, old_lp = torch.cat(obs), torch.cat(actions), torch.cat(old)
        adv = torch.randn(len(o), generator=gen)
        for _ in range(2):
            _, lp, ent = policy(o, a)
            ratio = (lp - old_lp).exp()
            loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean() - 0.01 * ent.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _compiled_run(tmp_path, watched):
    """Train a compiled agent; returns it and the run's path."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    policy = torch.compile(agent, backend="eager")  # Dynamo traces; no C++ compiler needed
    if watched:
        with ppo_probe.watch(agent, optimizer, out=tmp_path / "run", strict=True) as w:
            _train(policy, optimizer)
    else:
        _train(policy, optimizer)
    return agent, (w.path if watched else None)


@pytest.fixture
def validation(monkeypatch):
    """Set torch.distributions' argument validation for one test (the first torch.compile of a
    process turns it off for good; validated, a Categorical is a graph break, built eagerly)."""
    from torch.distributions import Distribution

    monkeypatch.setattr(Distribution, "_validate_args", Distribution._validate_args)
    torch.compile(lambda x: x + 1, backend="eager")(torch.zeros(1))  # that first compile, now
    return Distribution.set_default_validate_args


def test_categorical_built_in_compiled_code_is_recorded(tmp_path, validation):
    validation(False)  # as torch.compile leaves it: Dynamo would trace the Categorical into the graph
    _, path = _compiled_run(tmp_path, watched=True)
    report = ppo_probe.analyze(path)
    assert report.run.meta["counts"]["compiled_forwards_seen"] == 1
    assert len(report.run.dists) == 54  # 3 cycles x (16 rollout steps + 2 epochs)
    assert report.nothing_to_check is None and report.run.paired_fraction == 1.0


def test_a_categorical_dynamo_looks_through_is_named(tmp_path, validation, monkeypatch):
    """Had Dynamo traced through the patch (its dispatchers not run eagerly under compile) and
    lost their reports in the graph, the Categorical would be invisible: the run says
    torch.compile instead of passing as one with no Categorical."""
    from ppo_probe.capture import categorical, dynamo

    def lost_when_traced(fn, *args):
        if not dynamo.is_compiling():
            fn(*args)

    monkeypatch.setattr(categorical, "_traced", lambda: False)
    monkeypatch.setattr(dynamo, "call_untraced", lost_when_traced)
    validation(False)
    _, path = _compiled_run(tmp_path, watched=True)
    report = ppo_probe.analyze(path)
    assert report.run.meta["counts"]["compiled_forwards_seen"] == 1
    assert len(report.run.dists) == 0
    assert "torch.compile" in (report.nothing_to_check or "")


def test_categorical_at_a_graph_break_is_recorded(tmp_path, validation):
    validation(True)
    _, path = _compiled_run(tmp_path, watched=True)
    report = ppo_probe.analyze(path)
    assert report.run.meta["counts"]["compiled_forwards_seen"] == 1
    assert report.nothing_to_check is None and report.run.paired_fraction == 1.0


def test_compiled_actor_trains_as_without_the_watch(tmp_path):
    watched, _ = _compiled_run(tmp_path, watched=True)
    plain, _ = _compiled_run(tmp_path / "plain", watched=False)
    for p, q in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(p, q)


def test_the_same_trainer_uncompiled_is_recorded(tmp_path):
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    with ppo_probe.watch(agent, optimizer, out=tmp_path / "run", strict=True) as w:
        _train(agent, optimizer)
    report = ppo_probe.analyze(w.path)
    assert report.run.meta["counts"]["compiled_forwards_seen"] == 0
    assert report.nothing_to_check is None
    assert "probe-degraded" not in set(report.diagnostics["id"])
    assert report.per_cycle["match_rate"].min() == 1.0


def _compiled_step_run(tmp_path, watched):
    torch._dynamo.reset()
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    optimizer.step = torch.compile(optimizer.step, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if watched:
            with ppo_probe.watch(agent, optimizer, out=tmp_path / "run", strict=True) as w:
                _train(agent, optimizer)
        else:
            _train(agent, optimizer)
    return agent, (w.path if watched else None), [str(c.message) for c in caught]


def test_a_compiled_optimizer_step_is_measured_as_an_eager_one(tmp_path):
    watched, path, messages = _compiled_step_run(tmp_path, watched=True)
    plain, _, plain_messages = _compiled_step_run(tmp_path / "plain", watched=False)
    for p, q in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(p, q)
    run = ppo_probe.load(path)
    assert len(run.steps) == 6 and run.paired_fraction == 1.0 and not run.meta.get("probe_errors")
    assert (run.steps["delta_norm"] > 0).all()  # each step measured: the snapshots were taken
    # the step hooks run eagerly: Dynamo has nothing of the probe's to warn about
    assert [m for m in messages if "Dynamo" in m] == [m for m in plain_messages if "Dynamo" in m]


def test_importing_ppo_probe_does_not_load_dynamo():
    """torch._dynamo takes about a second to import: only a torch.compile should load it."""
    import subprocess
    import sys

    code = "import sys, ppo_probe; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_compile_made_inside_the_watch(tmp_path):
    """torch.compile first called inside the watch, in a process without Dynamo loaded before:
    the patch went in without its graph breaks, yet (torch 2.13) every Categorical is still
    recorded, and the compile is noted."""
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import ppo_probe\n"
        "from test_compile import Agent, _train\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "torch.manual_seed(0)\n"
        "agent = Agent()\n"
        "optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)\n"
        f"with ppo_probe.watch(agent, optimizer, out={str(tmp_path / 'run')!r}, strict=True):\n"
        "    _train(torch.compile(agent, backend='eager'), optimizer)\n"
    )
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    report = ppo_probe.analyze(tmp_path / "run")
    assert report.run.meta["counts"]["compiled_forwards_seen"] == 1
    assert len(report.run.dists) == 54 and report.run.paired_fraction == 1.0


def test_the_schedule_does_not_drive_dynamo_to_its_recompile_limit(tmp_path):
    """A compiled policy through cycles the schedule records and skips: the patch changes what it
    reports, not the class, and runs itself eagerly under Dynamo, so neither the user's function
    nor the patch's own frames are recompiled until Dynamo gives up on them (torch 2.13: twice
    before, at the patch's event count)."""
    import logging

    class Caught(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    torch._dynamo.reset()
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    policy = torch.compile(agent, backend="eager")
    caught = Caught()
    dynamo_log = logging.getLogger("torch._dynamo")
    dynamo_log.addHandler(caught)
    try:
        with ppo_probe.watch(agent, optimizer, out=tmp_path / "run", strict=True, every=3, first_cycles=1) as w:
            _train(policy, optimizer, cycles=12)
    finally:
        dynamo_log.removeHandler(caught)
    assert not [m for m in caught.messages if "recompile_limit" in m or "cache_size_limit" in m]
    run = ppo_probe.load(w.path)
    assert sorted(run.dists["cycle"].unique()) == [0, 3, 6, 9] and run.paired_fraction == 1.0


class _Scorer(nn.Module):
    """What a user exports from a policy: the log-prob and entropy of given actions."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, obs, action):
        dist = Categorical(logits=self.agent.net(obs), validate_args=False)
        return dist.log_prob(action), dist.entropy()


@pytest.mark.parametrize("prepared", [True, False], ids=["dynamo-prepared", "dynamo-unprepared"])
@pytest.mark.parametrize("strict", [False, True])
def test_a_policy_exported_inside_the_watch(tmp_path, strict, prepared, monkeypatch):
    """torch.export of a policy between two updates of a watched run (a checkpoint for
    deployment, say): the export sees Categorical's own methods, not the patch (it used to
    recurse without end when not strict, and stop at the patch's graph break when strict), the
    exported program computes what the policy does, and the trace records nothing, also where
    the watch has not made its Dynamo helper yet (Dynamo loaded after the watch began)."""
    from ppo_probe.capture import dynamo

    if not hasattr(torch.compiler, "is_exporting"):
        # torch 2.3.1 cannot export this module unwatched either (an autograd state change while
        # exporting), and without is_exporting a strict export looks like torch.compile
        pytest.skip("torch < 2.5 has no torch.compiler.is_exporting")
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    obs, action = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with ppo_probe.watch(agent, optimizer, out=tmp_path / "run", strict=True) as w:
        _train(agent, optimizer, cycles=1)
        counts = dict(w.session.counts)
        if not prepared:
            monkeypatch.setattr(dynamo, "eagerly", None)
        exported = torch.export.export(_Scorer(agent), (obs, action), strict=strict)
        # the export's trace recorded nothing: no Categorical, no forward's input
        assert w.session.counts == counts and w.session.entries.pending == []
        monkeypatch.undo()
        got, then = exported.module()(obs, action), copy.deepcopy(agent)  # (the graph has no Categorical)
        _train(agent, optimizer, cycles=1)
    for g, want in zip(got, _Scorer(then)(obs, action)):
        torch.testing.assert_close(g, want)
    run = ppo_probe.load(w.path)
    assert run.meta["probe_errors"] == {} and run.paired_fraction == 1.0
    assert sorted(run.dists["cycle"].unique()) == [0, 1]
