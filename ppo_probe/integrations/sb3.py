"""A Stable-Baselines3 callback that watches ``model.learn`` (an alternative to ``ppo_probe.watch``).

    from ppo_probe.integrations.sb3 import ProbeCallback

    probe = ProbeCallback(out="runs/probe")
    model.learn(100_000, callback=probe)
    print(probe.analyze())

The callback enters a :class:`ppo_probe.Watch` on ``model.policy`` and ``model.policy.optimizer``
when training starts and leaves it when training ends.

SB3 calls ``on_training_end`` only when ``learn`` returns normally: an exception inside ``learn``
would leave the watch installed. So that every hook is still removed on every exit path (DESIGN
invariant 2), the callback also wraps the model's own ``collect_rollouts`` and ``train`` (instance
attributes, put back when the watch closes): an exception or KeyboardInterrupt raised in either,
where a training loop spends its time, closes the watch with status "interrupted" before it
propagates. For exceptions anywhere else, use it as a context manager, which closes on any exit::

    with ProbeCallback(out="runs/probe") as probe:
        model.learn(100_000, callback=probe)

A callback whose training start comes round again (a second ``learn``) starts a new run: pass a
fresh ``out`` per ``learn``, or none (a new timestamped directory each time).
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from ..analysis.report import Report, analyze
from ..watch import Watch

_GUARDED = ("collect_rollouts", "train")


def _closing_on_error(original: Any, close: Any) -> Any:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except BaseException as exc:
            close(type(exc), exc, exc.__traceback__)
            raise

    return guarded


# Watch's keyword-only arguments but the run directory, which the callback takes itself
_WATCH_KEYWORDS = frozenset(
    name for name, p in inspect.signature(Watch).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "out"
)


class ProbeCallback(BaseCallback):
    """Watch an SB3 on-policy algorithm (PPO, A2C, sb3-contrib MaskablePPO, ...) during ``learn``.

    Args:
        out: run directory (default: a timestamped directory, as for ``ppo_probe.watch``).
        verbose: SB3's callback verbosity; 1 prints the run directory when training ends.
        **watch_kwargs: any other keyword-only argument of :class:`ppo_probe.Watch` (``every``,
            ``first_cycles``, ``keep_logits_max_k``, ``logits_one_in``, ``flush_rows``, ...).
    """

    def __init__(self, out: str | os.PathLike[str] | None = None, verbose: int = 0, **watch_kwargs: Any) -> None:
        super().__init__(verbose)
        unknown = set(watch_kwargs) - _WATCH_KEYWORDS
        if unknown:
            raise TypeError(f"ProbeCallback got unexpected keyword arguments {sorted(unknown)}")
        self._out = out
        self._watch_kwargs = watch_kwargs
        self._watch: Watch | None = None
        self._guarded: dict[str, Any] = {}
        self.path: Path | None = None  # the run directory of the latest learn()

    # ---------------------------------------------------------------- SB3 events

    def _on_training_start(self) -> None:
        self._close(None)  # a previous learn() that ended without on_training_end
        policy = self.model.policy
        optimizer = getattr(policy, "optimizer", None)
        watch = Watch(policy, optimizer, out=self._out, **self._watch_kwargs)
        watch.__enter__()
        self._watch = watch
        self.path = watch.path
        self._guard(self.model)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self._close(None)
        if self.verbose >= 1 and self.path is not None:
            print(f"ppo_probe: run written to {self.path}")

    # ---------------------------------------------------------------- closing on every path

    def _guard(self, model: Any) -> None:
        for name in _GUARDED:
            original = getattr(model, name, None)
            if original is None or name in vars(model):
                continue

            guarded = _closing_on_error(original, self._close)
            setattr(model, name, guarded)
            self._guarded[name] = guarded

    def _unguard(self) -> None:
        model = getattr(self, "model", None)
        for name, guarded in self._guarded.items():
            if model is not None and vars(model).get(name) is guarded:
                delattr(model, name)
        self._guarded.clear()

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        watch, self._watch = self._watch, None
        self._unguard()
        if watch is not None:
            watch.__exit__(exc_type, exc, tb)

    def close(self) -> None:
        """Leave the watch now if it is still open (safe to call any number of times)."""
        self._close(None)

    def __enter__(self) -> ProbeCallback:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(exc_type, exc, tb)

    # ---------------------------------------------------------------- results

    def analyze(self, **kwargs: Any) -> Report:
        """``ppo_probe.analyze`` of the latest run (keywords as for :func:`ppo_probe.analyze`)."""
        if self.path is None:
            raise RuntimeError("ProbeCallback has no run yet: pass it to model.learn(callback=...)")
        return analyze(self.path, **kwargs)
