"""GPU readiness on a CPU machine: the probe's hot path never calls a host-syncing tensor method
(``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool()`` / ``float()`` / ``int()`` of a
tensor) on the training thread. Those are the calls that block on a GPU; the bulk conversion on
the writer thread is allowed. On a GPU, benchmarks/device_ppo.py checks the same with
``torch.cuda.set_sync_debug_mode``."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import ppo_probe
from trainers import BanditConfig, make_actor, train_bandit

PROBE = str(Path(ppo_probe.__file__).resolve().parent)
SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def syncs_from_the_probe_raise(calls: list[str]):
    """Wrap the syncing methods of torch.Tensor (they still run) so that a call made directly by
    ppo_probe code on the main thread is recorded and raises."""
    main = threading.main_thread()
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def guard(name: str, original):  # noqa: ANN001, ANN202
        def method(self, *args, **kwargs):  # noqa: ANN001, ANN202
            caller = sys._getframe(1).f_code.co_filename
            if threading.current_thread() is main and caller.startswith(PROBE):
                calls.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
                raise RuntimeError(f"host sync Tensor.{name} on the hot path")
            return original(self, *args, **kwargs)

        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, guard(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_the_hot_path_calls_no_syncing_method(tmp_path):
    cfg = BanditConfig(seed=8, cycles=4)
    torch.manual_seed(8)
    actors = {"a": make_actor(cfg), "b": make_actor(cfg)}
    optim = torch.optim.Adam([p for a in actors.values() for p in a.parameters()], lr=cfg.lr)
    calls: list[str] = []
    # strict: a raising probe hook would re-raise here instead of being swallowed and counted;
    # flush_rows=300: flushes happen while training, on the path taken when a tensor lives on an
    # accelerator (on the CPU the probe converts at the flush on the training thread, a host copy
    # there being no device sync)
    with ppo_probe.watch(actors, optim, out=tmp_path / "run", strict=True, flush_rows=300) as w:
        w.session._off_host = True
        with syncs_from_the_probe_raise(calls):
            train_bandit(cfg, actors, optim)
    assert calls == []
    run = ppo_probe.load(w.path)
    assert run.paired_fraction == 1.0 and len(run.steps) == cfg.cycles * cfg.epochs * cfg.batch // cfg.minibatch


def test_the_guard_catches_a_syncing_call(tmp_path, monkeypatch):
    """The guard is not vacuous: a probe hook that calls .item() is caught."""
    from ppo_probe.capture import session as session_module

    original = session_module.Session.on_step_done

    def syncing_on_step_done(self, record):  # noqa: ANN001, ANN202
        if record.norms is not None:
            record.norms.sum().item()  # a per-step sync, as a careless hook would do
        return original(self, record)

    syncing_on_step_done.__code__ = syncing_on_step_done.__code__.replace(
        co_filename=session_module.__file__)  # attribute the call to the probe's own file
    monkeypatch.setattr(session_module.Session, "on_step_done", syncing_on_step_done)
    cfg = BanditConfig(seed=8, cycles=1)
    torch.manual_seed(8)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="host sync Tensor.item"), pytest.warns(RuntimeWarning):
        with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True):
            with syncs_from_the_probe_raise(calls):
                train_bandit(cfg, {"a": actor}, optim)
    assert calls and calls[0].startswith("item from ")
