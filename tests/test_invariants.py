"""DESIGN section 6 invariants: never break training, leave no trace, no observer effect."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.nn.modules.module as module_hooks
import torch.optim.optimizer as optimizer_hooks
from torch.distributions import Categorical

import ppo_probe
from ppo_probe.capture import session as session_module
from trainers import BanditConfig, make_actor, train_bandit

_ORIGINALS = {name: Categorical.__dict__[name] for name in ("__init__", "sample", "log_prob", "entropy")}


def _assert_no_trace(modules, optimizer):
    for name, original in _ORIGINALS.items():
        assert Categorical.__dict__[name] is original, name
    for module in modules:
        for sub in module.modules():
            assert not sub._forward_pre_hooks and not sub._forward_hooks
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    assert not module_hooks._global_forward_pre_hooks and not module_hooks._global_forward_hooks
    assert not optimizer_hooks._global_optimizer_pre_hooks
    assert not optimizer_hooks._global_optimizer_post_hooks


def _bandit(seed=0, **kw):
    """A fresh actor and optimizer; the global RNG (which sample() draws from) is re-seeded."""
    cfg = BanditConfig(seed=seed, **kw)
    torch.manual_seed(seed)
    actor = make_actor(cfg)
    return cfg, actor, torch.optim.Adam(actor.parameters(), lr=cfg.lr)


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("ending", ["normal", "exception", "keyboard_interrupt"])
def test_every_hook_and_patch_is_removed(tmp_path, explicit, ending):
    cfg, actor, optim = _bandit()
    raised = {"normal": None, "exception": ValueError, "keyboard_interrupt": KeyboardInterrupt}[ending]

    class _Stop:
        calls = 0

    def stopping_step(*args):
        _Stop.calls += 1
        if raised is not None and _Stop.calls == 6:  # five steps completed, the sixth raises
            raise raised("stop")

    optim.register_step_pre_hook(lambda *a: stopping_step())  # the trainer's own hook
    hooks_before = dict(optim._optimizer_step_pre_hooks)
    watched = (actor, optim) if explicit else (None, None)
    if raised is None:
        with ppo_probe.watch(*watched, out=tmp_path / "run") as w:
            train_bandit(cfg, {"a": actor}, optim)
    else:
        with pytest.raises(raised):
            with ppo_probe.watch(*watched, out=tmp_path / "run") as w:
                train_bandit(cfg, {"a": actor}, optim)
    assert dict(optim._optimizer_step_pre_hooks) == hooks_before
    optim._optimizer_step_pre_hooks.clear()
    _assert_no_trace([actor], optim)
    run = ppo_probe.load(w.path)
    assert run.meta["status"] == ("complete" if raised is None else f"interrupted: {raised.__name__}")
    assert run.meta["counts"]["steps"] == (cfg.cycles * cfg.epochs * 4 if raised is None else 5)
    assert len(run.steps) == run.meta["counts"]["steps"]  # everything flushed on every exit path


def test_nested_and_repeated_watches(tmp_path):
    cfg, actor, optim = _bandit()
    with ppo_probe.watch(actor, optim, out=tmp_path / "outer", strict=True) as outer:
        with ppo_probe.watch(actor, optim, out=tmp_path / "inner", strict=True) as inner:
            train_bandit(cfg, {"a": actor}, optim)
        # the inner watch left; the outer one still sees Categorical
        assert Categorical.__dict__["log_prob"] is not _ORIGINALS["log_prob"]
    _assert_no_trace([actor], optim)
    with ppo_probe.watch(actor, optim, out=tmp_path / "again", strict=True) as again:
        train_bandit(cfg, {"a": actor}, optim)
    _assert_no_trace([actor], optim)
    for path in (outer.path, inner.path, again.path):
        pairs = ppo_probe.load(path).pairs
        assert len(pairs) == cfg.cycles * cfg.epochs * cfg.batch
        assert pairs["paired"].all()


def test_a_watch_object_is_entered_once(tmp_path):
    w = ppo_probe.watch(out=tmp_path / "run")
    with w:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        with w:
            pass


def test_failing_probe_never_reaches_the_trainer(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected capture failure")

    monkeypatch.setattr(session_module.Session, "_keep_input", broken)
    cfg, reference, reference_optim = _bandit()
    train_bandit(cfg, {"a": reference}, reference_optim)
    cfg, actor, optim = _bandit()
    with pytest.warns(RuntimeWarning, match="injected capture failure") as caught:
        with ppo_probe.watch(actor, optim, out=tmp_path / "run") as w:
            train_bandit(cfg, {"a": actor}, optim)
    assert len([c for c in caught if "injected" in str(c.message)]) == 1  # reported once
    for p, q in zip(actor.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    errors = ppo_probe.load(w.path).meta["probe_errors"]
    assert set(errors) == {"Categorical capture"}  # nothing downstream failed because of it
    assert errors["Categorical capture"]["count"] == cfg.cycles * (1 + cfg.epochs * 4)
    assert "injected capture failure" in errors["Categorical capture"]["message"]


def test_strict_reraises_probe_failures(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected capture failure")

    monkeypatch.setattr(session_module.Session, "_keep_input", broken)
    cfg, actor, optim = _bandit()
    with pytest.raises(RuntimeError, match="injected capture failure"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True):
                train_bandit(cfg, {"a": actor}, optim)
    _assert_no_trace([actor], optim)


@pytest.mark.parametrize("strict", [False, True])
def test_a_watch_that_cannot_attach_leaves_training_alone(tmp_path, monkeypatch, strict):
    """A failure while attaching (here: the optimizer hooks, after the Categorical patch and the
    forward hooks are on) takes off what was attached and, unless strict, lets the body run
    unrecorded with one warning; strict re-raises the failure itself, not a follow-up error."""
    def broken(*args, **kwargs):
        raise RuntimeError("injected attach failure")

    monkeypatch.setattr(ppo_probe.watch, "_attach_optimizers", broken)  # ppo_probe.watch: the class
    cfg, reference, reference_optim = _bandit()
    train_bandit(cfg, {"a": reference}, reference_optim)
    cfg, actor, optim = _bandit()
    if strict:
        with pytest.raises(RuntimeError, match="injected attach failure"):
            with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True):
                pass
    else:
        with pytest.warns(RuntimeWarning, match="could not attach .*injected attach failure"):
            with ppo_probe.watch(actor, optim, out=tmp_path / "run") as w:
                _assert_no_trace([actor], optim)  # already off inside the body
                train_bandit(cfg, {"a": actor}, optim)
        assert w.recording is False
        for p, q in zip(actor.parameters(), reference.parameters()):
            assert torch.equal(p, q)
    _assert_no_trace([actor], optim)


@pytest.mark.parametrize(
    "explicit, timesteps, schedule",
    [(True, 1024, {}), (False, 1024, {}),
     (True, 512 * 7, {"every": 3, "first_cycles": 1})],  # cycles skipped, armed, recorded
)
def test_watched_run_is_bit_identical(cartpole, tmp_path, explicit, timesteps, schedule):
    def trained(watched: bool):
        cfg = cartpole.Config(seed=3, total_timesteps=timesteps)
        envs, agent, optimizer = cartpole.build(cfg)
        if watched:
            args = (agent, optimizer) if explicit else (None, None)
            with ppo_probe.watch(*args, out=tmp_path / "run", strict=True, **schedule):
                cartpole.train(cfg, envs, agent, optimizer)
        else:
            cartpole.train(cfg, envs, agent, optimizer)
        return [p.detach().clone() for p in agent.parameters()], torch.get_rng_state()

    plain_params, plain_rng = trained(False)
    watched_params, watched_rng = trained(True)
    assert all(torch.equal(p, q) for p, q in zip(plain_params, watched_params))
    assert torch.equal(plain_rng, watched_rng)  # the probe drew nothing from torch's RNG


def test_warnings_as_errors_still_never_reach_the_trainer(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected capture failure")

    monkeypatch.setattr(session_module.Session, "_keep_input", broken)
    cfg, actor, optim = _bandit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as `python -W error` would
        with ppo_probe.watch(actor, optim, out=tmp_path / "run") as w:
            train_bandit(cfg, {"a": actor}, optim)
    errors = ppo_probe.load(w.path).meta["probe_errors"]
    assert set(errors) == {"Categorical capture"}
    assert ppo_probe.load(w.path).meta["counts"]["steps"] == cfg.cycles * cfg.epochs * 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"actor": "policy"}, "takes a torch.nn.Module"),
        ({"actor": {}}, "empty dict"),
        ({"actor": {"a": 3}}, "got {'a': 'int'}"),
        ({"optim": [1]}, "takes a torch.optim.Optimizer"),
        ({"flush_rows": 0}, "flush_rows must be >= 1"),
        ({"out": 123}, r"watch\(out=...\) takes a directory path .* got int"),
    ],
)
def test_bad_watch_arguments_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ppo_probe.watch(**{"out": tmp_path / "run", **kwargs})
    _assert_no_trace([], torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))


def test_nested_watches_on_different_actors_each_keep_their_own(tmp_path):
    cfg = BanditConfig(seed=5, cycles=2)
    torch.manual_seed(5)
    actors = {"a": make_actor(cfg), "b": make_actor(cfg)}
    optim = torch.optim.Adam([p for m in actors.values() for p in m.parameters()], lr=cfg.lr)
    with ppo_probe.watch(actors["a"], optim, out=tmp_path / "a", strict=True) as wa:
        with ppo_probe.watch(actors["b"], optim, out=tmp_path / "b", strict=True) as wb:
            train_bandit(cfg, actors, optim)
    for w in (wa, wb):
        run = ppo_probe.load(w.path)
        attributed = run.pairs[run.pairs["actor"] != "unattributed"]
        assert len(attributed) == cfg.cycles * cfg.epochs * cfg.batch  # its own actor's rows only
        assert attributed["paired"].all()


def _call_forms(logits):
    """Categorical used every way its signatures allow (the RNG re-seeded before each draw)."""
    probs = logits.softmax(-1)
    out = []
    for dist in (Categorical(probs), Categorical(logits=logits), Categorical(None, logits),
                 Categorical(probs=probs, validate_args=False), Categorical(probs, None, True)):
        torch.manual_seed(3)
        a = dist.sample()
        torch.manual_seed(3)
        out += [a, dist.sample((2,)), dist.sample(sample_shape=torch.Size([3])), dist.log_prob(a),
                dist.log_prob(value=a), dist.entropy()]
    return out


@pytest.mark.parametrize("generic", [False, True])
def test_the_patch_answers_every_call_form_as_categorical_does(tmp_path, monkeypatch, generic):
    """Inside a watch, Categorical's methods are dispatchers with Categorical's own signatures
    (or, for a torch whose signatures differ, ones taking any arguments): every way of calling
    them gives what the originals give, errors included, and the run still pairs."""
    from ppo_probe.capture import categorical

    if generic:
        monkeypatch.setattr(categorical, "_same_signature", lambda original, dispatcher: False)
    logits = torch.randn(5, 4)
    expected = _call_forms(logits)
    cfg, actor, optim = _bandit()
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        installed = Categorical.__dict__["sample"]
        assert installed is not _ORIGINALS["sample"]
        assert (installed.__code__.co_varnames[:2] == ("self", "args")) is generic
        for name in _ORIGINALS:  # introspection sees Categorical's own
            assert Categorical.__dict__[name].__name__ == name
            assert inspect.signature(Categorical.__dict__[name]) == inspect.signature(_ORIGINALS[name])
        got = _call_forms(logits)  # reported (cycle 0 is recorded)
        live, categorical._live = categorical._live, frozenset()  # as in a skipped sampling phase
        quiet = _call_forms(logits)
        categorical._live = live
        with pytest.raises(ValueError):
            Categorical(logits=torch.tensor([[float("nan"), 0.0]]), validate_args=True)
        with pytest.raises(TypeError):
            Categorical(logits=logits, temperature=2.0)
        with pytest.raises(TypeError):
            Categorical(logits=logits).log_prob()
        train_bandit(cfg, {"a": actor}, optim)
    _assert_no_trace([actor], optim)
    assert len(got) == len(quiet) == len(expected)
    for a, b, c in zip(got, quiet, expected):
        assert torch.equal(a, c) and torch.equal(b, c)
    pairs = ppo_probe.load(w.path).pairs
    assert len(pairs) == cfg.cycles * cfg.epochs * cfg.batch and pairs["paired"].all()


def test_a_changed_torch_signature_is_noticed():
    """A dispatcher whose arguments or defaults differ from Categorical's is not installed."""
    from ppo_probe.capture import categorical

    made = categorical._dispatchers(_ORIGINALS)
    assert all(categorical._same_signature(_ORIGINALS[name], made[name]) for name in _ORIGINALS)

    def sample(self, sample_shape=torch.Size([1])):
        pass

    def log_prob(self, value, mask=None):
        pass

    def entropy(self, *, fast=False):
        pass

    assert not categorical._same_signature(_ORIGINALS["sample"], sample)
    assert not categorical._same_signature(_ORIGINALS["log_prob"], log_prob)
    assert not categorical._same_signature(_ORIGINALS["entropy"], entropy)
