"""Odd things trainers hand to Categorical (issue: reliability). For each: the watched run trains
exactly as the unwatched one (same parameters, or the same exception from the trainer's own
code), the probe records no failure of its own, and the run loads and analyzes."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.distributions import Categorical

import ppo_probe

B, D, K = 32, 5, 4


class LoggedCategorical(Categorical):
    """A subclass overriding log_prob, as some libraries do (e.g. to clamp)."""

    def log_prob(self, value):  # noqa: ANN001, ANN201
        return super().log_prob(value).clamp(min=-30.0)


def _plain(logits: torch.Tensor, validate: bool | None = None) -> Categorical:
    return Categorical(logits=logits, validate_args=validate)


# name -> (dist factory, action transform, logits transform)
CASES: dict[str, tuple[Callable, Callable, Callable]] = {
    "logits": (_plain, lambda a: a, lambda x: x),
    "probs": (lambda x: Categorical(probs=x.softmax(-1)), lambda a: a, lambda x: x),
    "validate_args on": (lambda x: _plain(x, True), lambda a: a, lambda x: x),
    "validate_args off": (lambda x: _plain(x, False), lambda a: a, lambda x: x),
    "int32 actions": (_plain, lambda a: a.to(torch.int32), lambda x: x),
    "float actions": (lambda x: _plain(x, False), lambda a: a.float(), lambda x: x),
    "logits [K], one row at a time": (_plain, lambda a: a, lambda x: x[0]),
    "logits [B, T, K]": (_plain, lambda a: a, lambda x: x.reshape(B // 4, 4, K)),
    "empty batch": (_plain, lambda a: a, lambda x: x[:0]),
    "every action masked on some rows": (
        lambda x: _plain(x, False), lambda a: a,
        lambda x: torch.where(torch.arange(len(x))[:, None] % 8 == 0, torch.full_like(x, -1e9), x)),
    "subclass overriding log_prob": (lambda x: LoggedCategorical(logits=x), lambda a: a, lambda x: x),
}  # fmt: skip


def _train(case: str, out=None, threads: int = 1) -> tuple[nn.Module, BaseException | None]:
    make, act, shape = CASES[case]
    torch.manual_seed(0)
    actor = nn.Linear(D, K)
    optim = torch.optim.Adam(actor.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)

    def loop() -> None:
        for _ in range(3):
            obs = torch.randn(B, D, generator=gen)
            with torch.no_grad():
                dist = make(shape(actor(obs)))
                action = act(dist.sample())
                old = dist.log_prob(action)
            adv = torch.randn(old.shape, generator=gen)
            for _ in range(2):
                new = make(shape(actor(obs))).log_prob(action)
                loss = -((new - old).exp() * adv).mean() if new.numel() else actor.weight.sum() * 0
                optim.zero_grad()
                loss.backward()
                optim.step()

    def run() -> None:
        if threads == 1:
            loop()
            return
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker() -> None:
            try:
                with lock:  # two threads take turns on one actor, as a thread pool of envs might
                    loop()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        if errors:
            raise errors[0]

    try:
        if out is None:
            run()
        else:
            with ppo_probe.watch(actor, optim, out=out):
                run()
    except Exception as exc:  # noqa: BLE001 - compared with the watched run's
        return actor, exc
    return actor, None


@pytest.mark.parametrize("case", list(CASES))
def test_odd_input_trains_identically_and_is_recorded(tmp_path, case):
    reference, ref_error = _train(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        actor, error = _train(case, tmp_path / "run")
    assert type(error) is type(ref_error) and str(error) == str(ref_error)
    for p, q in zip(actor.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert not [c for c in caught if "ppo_probe" in str(c.message)], [str(c.message) for c in caught]
    run = ppo_probe.load(tmp_path / "run")
    assert not run.meta.get("probe_errors"), run.meta["probe_errors"]
    report = ppo_probe.analyze(run)
    assert "probe-degraded" not in report.ids
    if case != "empty batch":
        assert run.paired_fraction == 1.0, case


def test_actor_used_from_two_threads(tmp_path):
    reference, _ = _train("logits", threads=2)
    actor, error = _train("logits", tmp_path / "run", threads=2)
    assert error is None
    for p, q in zip(actor.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    run = ppo_probe.load(tmp_path / "run")
    assert not run.meta.get("probe_errors") and run.paired_fraction == 1.0


def test_out_of_range_action_is_the_trainers_own_error(tmp_path):
    """An action >= K makes Categorical.log_prob raise in the trainer; the probe neither hides nor
    changes that error, and what was written before it is readable."""
    torch.manual_seed(0)
    actor = nn.Linear(D, K)
    obs = torch.randn(B, D)
    with pytest.raises((IndexError, RuntimeError, ValueError)) as raised:
        with ppo_probe.watch(actor, out=tmp_path / "run"):
            with torch.no_grad():
                Categorical(logits=actor(obs), validate_args=False).log_prob(torch.full((B,), K))
    with pytest.raises(type(raised.value)) as plain:
        Categorical(logits=actor(obs), validate_args=False).log_prob(torch.full((B,), K))
    assert str(plain.value) == str(raised.value)
    run = ppo_probe.load(tmp_path / "run")
    assert run.meta["status"].startswith("interrupted") and not run.meta.get("probe_errors")


@pytest.mark.parametrize("watched", ["compiled module", "original module"])
def test_a_torch_compiled_actor(tmp_path, monkeypatch, watched):
    """torch.compile'd actor on CPU: watching either the compiled wrapper or the module it wraps
    pairs every row (the forward hooks are honoured by dynamo)."""
    # compiling turns torch.distributions' argument validation off for the whole process;
    # restore it afterwards so later tests see the default
    from torch.distributions import Distribution

    monkeypatch.setattr(Distribution, "_validate_args", Distribution._validate_args)
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))
    compiled = torch.compile(actor)
    optim = torch.optim.Adam(actor.parameters(), lr=1e-2)
    target = compiled if watched == "compiled module" else actor
    gen = torch.Generator().manual_seed(0)
    with ppo_probe.watch(target, optim, out=tmp_path / "run") as w:
        for _ in range(3):
            obs = torch.randn(B, D, generator=gen)
            with torch.no_grad():
                dist = Categorical(logits=compiled(obs))
                action = dist.sample()
                old = dist.log_prob(action)
            for _ in range(2):
                new = Categorical(logits=compiled(obs)).log_prob(action)
                loss = -((new - old).exp() * torch.randn(B, generator=gen)).mean()
                optim.zero_grad()
                loss.backward()
                optim.step()
    run = ppo_probe.load(w.path)
    assert not run.meta.get("probe_errors") and run.paired_fraction == 1.0
    assert len(run.steps) == 6
