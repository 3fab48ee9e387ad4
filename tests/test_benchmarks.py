"""The benchmarks that reach into the probe's internals still find what they replace.

take_apart.py, knockouts.py and turns.py time or switch off parts of the probe by replacing its
private methods. A rename in ppo_probe broke take_apart.py unnoticed for several sessions (it
patched ``RunWriter._write_batch`` after the writer had become ``_write_held``): nothing runs the
benchmarks in CI, so these tests check the names they patch, without running a benchmark.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_take_apart_finds_every_part_it_times_and_puts_them_back() -> None:
    import take_apart

    owners = (take_apart.session.Session, take_apart.entries.EntryTracker, take_apart.optim.StepRecorder,
              take_apart.writer.RunWriter, take_apart.ppo_probe.Watch)
    before = {owner: dict(vars(owner)) for owner in owners}
    timers = take_apart.Timers()
    with take_apart.timed_parts(timers):
        changed = {owner: [k for k, v in vars(owner).items() if before[owner].get(k) is not v] for owner in owners}
    assert changed[take_apart.writer.RunWriter] == ["_write_held"]
    assert set(changed[take_apart.session.Session]) >= {"on_dist_init", "on_log_prob", "flush"}
    assert changed[take_apart.ppo_probe.Watch] == ["_finish"]
    for owner in owners:
        after = dict(vars(owner))
        assert after.keys() == before[owner].keys()
        assert all(after[k] is before[owner][k] for k in after), owner


def test_every_knockout_replaces_an_attribute_that_exists() -> None:
    import turns
    from knockouts import KNOCKOUTS

    named = turns.knockouts()
    assert set(named) == {name.replace(",", "").replace(" ", "-") for name in KNOCKOUTS} | {"keep-patch"}
    for name, patches in named.items():
        for owner, attr, new in patches:
            assert attr in vars(owner), f"knock-out {name!r}: {owner!r} has no {attr!r}"
            assert callable(vars(owner)[attr]) and callable(new)
