"""The one wrapt patch: Categorical's __init__, sample, log_prob and entropy report to sessions.

Categorical has no hook API, so this is the only place the probe patches a class (and the
log_prob / entropy of a subclass that overrides them, from its first instance on: TorchRL's
MaskedCategorical computes its log-prob as a cross-entropy, never entering Categorical's). The patch is
installed when the first session attaches and the original functions are put back when the last
one detaches, so nested and repeated watches share one patch. Each method is wrapped only while
some attached session needs its events: none in the sampling phase of a cycle the schedule skips
(that phase then costs the trainer nothing), only ``sample`` and ``log_prob`` in that cycle's
update phase (they alone can open the next cycle), all four otherwise.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
import wrapt
from torch.distributions import Categorical

from . import dynamo
from .handles import Handle

if TYPE_CHECKING:
    from .session import Session

_PATCHED = ("__init__", "sample", "log_prob", "entropy")
_lock = threading.Lock()
_sessions: tuple[Session, ...] = ()  # replaced, never mutated: the wrappers iterate it unlocked
_originals: dict[str, Any] = {}  # the methods wrapped now -> Categorical's own
# What each attached session needs now, by id(): ALL (the default), BOUNDARY or NOTHING.
ALL, BOUNDARY, NOTHING = _PATCHED, ("sample", "log_prob"), ()
_needs: dict[int, tuple[str, ...]] = {}  # replaced, never mutated
_INIT_CODE = Categorical.__dict__["__init__"].__code__
# Subclasses that override log_prob or entropy without calling Categorical's (TorchRL's
# MaskedCategorical takes -cross_entropy(logits, value)): their own methods are wrapped too, from
# their first instance on, while the patch is installed. (class, name) -> the class's own function.
_OVERRIDABLE = ("log_prob", "entropy")
_sub_originals: dict[tuple[type, str], Any] = {}
_subclasses: weakref.WeakSet[type] = weakref.WeakSet()  # seen: patched again at each install


class _Events(threading.local):
    """log_prob / entropy events reported in this thread: a subclass's wrapper reports only
    when its call reported none (it did not reach Categorical's method, or an inner override)."""

    n = 0


_events = _Events()


def attach(session: Session) -> Handle:
    """Route Categorical events to ``session`` until the returned handle is removed."""
    global _sessions
    with _lock:
        _sessions = (*_sessions, session)
        _sync()
    return Handle(lambda: _detach(session))


def _detach(session: Session) -> None:
    global _sessions, _needs
    with _lock:
        if session in _sessions:
            _sessions = tuple(s for s in _sessions if s is not session)
        _needs = {k: v for k, v in _needs.items() if k != id(session)}
        _sync()


def set_needs(session: Session, needs: tuple[str, ...]) -> None:
    """The Categorical methods whose events ``session`` needs from now on: :data:`ALL`,
    :data:`BOUNDARY` (``sample`` and ``log_prob``) or :data:`NOTHING`."""
    global _needs
    with _lock:
        if _needs.get(id(session), ALL) != needs:
            _needs = {**_needs, id(session): needs}
            _sync()


def init_unpatched() -> bool:
    """Categorical.__init__ runs unwrapped now (a failure to build one reports to no session)."""
    return "__init__" not in _originals


def _sync() -> None:
    """Wrap each method some attached session needs; put Categorical's own back for the others."""
    needed = {name for s in _sessions for name in _needs.get(id(s), ALL)}
    gone = [name for name in _originals if name not in needed]
    if gone:
        _uninstall(gone)
    new = [name for name in _PATCHED if name in needed and name not in _originals]
    if new:
        _install(new)


def failed_init(tb: TracebackType | None) -> dict[str, Any] | None:
    """The ``logits`` / ``probs`` arguments of a Categorical.__init__ that raised the exception
    whose traceback is ``tb`` (None if it did not come from one): how a failure is still noted
    when the patch was not installed at the time."""
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is _INIT_CODE:
            args = {k: frame.f_locals.get(k) for k in ("probs", "logits")}
            return {k: v for k, v in args.items() if v is not None}
        tb = tb.tb_next
    return None


def _install(names: list[str]) -> None:
    wrappers = {"__init__": _init, "sample": _sample, "log_prob": _log_prob, "entropy": _entropy}
    dynamo.prepare()
    compilable = dynamo.eagerly is not None  # Dynamo is loaded: torch.compile may trace these
    for name in names:
        original = Categorical.__dict__[name]
        _originals[name] = original
        setattr(Categorical, name, _method(original, wrappers[name], compilable))
    for cls in list(_subclasses):
        _patch_subclass(cls)


def _patch_subclass(cls: type) -> None:
    """Wrap the log_prob / entropy that ``cls`` and its bases below Categorical define, where
    Categorical's own is wrapped now (under the lock)."""
    compilable = dynamo.eagerly is not None
    for klass in cls.__mro__:
        if klass is Categorical:
            break
        for name in _OVERRIDABLE:
            if name not in _originals:
                continue
            original = klass.__dict__.get(name)
            if original is None or (klass, name) in _sub_originals or not callable(original):
                continue
            _sub_originals[(klass, name)] = original
            # not cached as Categorical's own are: a cache would keep a user's subclass alive
            wrapped = _breaking_under_compile(original) if compilable else original
            setattr(klass, name, wrapt.FunctionWrapper(wrapped, _SUB_WRAPPERS[name]))


def _seen_subclass(cls: type) -> None:
    with _lock:
        if cls in _subclasses:
            return
        _subclasses.add(cls)
        if _originals:
            _patch_subclass(cls)


# Categorical's own (original, wrapper, graph break or None) -> its wrapper: made once, as the
# patch goes in and out at every skipped cycle (making them took ~130 of each ~150 us install +
# uninstall). The key holds the graph-break function itself, not a flag, so a replaced one
# (tests/test_compile.py replaces it) is not served a stale wrapper. Subclasses' are not kept
# here: this dict would keep a user's class alive.
_made: dict[tuple[Any, Any, Any], Any] = {}


def _method(original: Any, wrapper: Any, compilable: bool) -> Any:
    """``original`` wrapped by ``wrapper`` (around :func:`_breaking_under_compile` when
    ``compilable``)."""
    breaking = _breaking_under_compile if compilable else None
    key = (original, wrapper, breaking)
    made = _made.get(key)
    if made is None:
        wrapped = breaking(original) if breaking is not None else original
        made = _made[key] = wrapt.FunctionWrapper(wrapped, wrapper)
    return made


def _nothing() -> None:
    pass


def _breaking_under_compile(original: Any) -> Any:
    """``original``, but a graph break when Dynamo traces it.

    Dynamo looks through a wrapt wrapper to the function it wraps, so a Categorical built in
    compiled code would never reach the wrapper. Traced, this function calls into
    :data:`.dynamo.eagerly`, which Dynamo cannot trace: it then runs the Categorical call eagerly,
    wrapper included. Eagerly it is ``original`` and one check, about 0.4 us a call, so it is put
    in only where Dynamo is loaded when the patch is installed (torch.compile loads it; the patch
    is installed at the watch's entry and again after each skipped phase). (No ``__wrapped__``:
    Dynamo would look through that too; the name and signature are copied for introspection.)
    """
    def call(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if dynamo.eagerly is not None and dynamo.is_compiling():
            dynamo.eagerly(_nothing)
        return result

    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(call, attr, getattr(original, attr, None))
    call.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
    return call


def _uninstall(names: list[str]) -> None:
    subs = [key for key in _sub_originals if key[1] in names]
    try:
        for name in names:
            setattr(Categorical, name, _originals[name])
        for klass, name in subs:
            setattr(klass, name, _sub_originals[(klass, name)])
    finally:
        for name in names:
            del _originals[name]
        for key in subs:
            del _sub_originals[key]


# Each wrapper runs the original first: if it raises, the trainer sees its own error untouched.
# The session methods never raise (they count their failures) unless the session is strict.
# Their reports go through dynamo.call_untraced: traced by Dynamo, they would raise into the trainer.


def _report_init(instance: Any, args: Any, kwargs: Any) -> None:
    source = kwargs.get("logits", kwargs.get("probs", args[0] if args else None))
    cls = type(instance)
    if cls is not Categorical and cls not in _subclasses:
        _seen_subclass(cls)
    for session in _sessions:
        session.on_dist_init(instance, source)


def _report_init_failed(args: Any, kwargs: Any) -> None:
    for session in _sessions:
        session.on_dist_init_failed(args, kwargs)


def _report_sample(instance: Any, result: Any) -> None:
    for session in _sessions:
        session.on_sample(instance, result)


def _report_log_prob_event(instance: Any, value: Any, result: Any) -> None:
    for session in _sessions:
        session.on_log_prob(instance, value, result)


def _report_entropy_event(instance: Any, result: Any) -> None:
    for session in _sessions:
        session.on_entropy(instance, result)


def _init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
    try:
        wrapped(*args, **kwargs)
    except Exception:
        # The trainer is about to crash (e.g. validation of NaN logits): note why, then re-raise.
        dynamo.call_untraced(_report_init_failed, args, kwargs)
        raise
    dynamo.call_untraced(_report_init, instance, args, kwargs)


def _sample(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    dynamo.call_untraced(_report_sample, instance, result)
    return result


def _log_prob(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    _events.n += 1
    value = args[0] if args else kwargs.get("value")
    dynamo.call_untraced(_report_log_prob_event, instance, value, result)
    return result


def _entropy(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    _events.n += 1
    dynamo.call_untraced(_report_entropy_event, instance, result)
    return result


def _reported_once(report: Any) -> Any:
    """The wrapper of a subclass's own log_prob / entropy: ``report(instance, args, kwargs,
    result)`` runs only when the call reported nothing itself (it never reached Categorical's
    method, nor an inner override's)."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        before = _events.n
        result = wrapped(*args, **kwargs)
        if _events.n == before and isinstance(result, torch.Tensor):
            _events.n += 1
            dynamo.call_untraced(report, instance, args, kwargs, result)
        return result

    return wrapper


def _report_log_prob(instance: Any, args: Any, kwargs: Any, result: torch.Tensor) -> None:
    value = args[0] if args else kwargs.get("value")
    if not (isinstance(value, torch.Tensor) and value.dim() <= result.dim()):
        value = None  # not one action index per log-prob (one-hot, say): counted as untracked
    _report_log_prob_event(instance, value, result)


def _report_entropy(instance: Any, args: Any, kwargs: Any, result: torch.Tensor) -> None:
    _report_entropy_event(instance, result)


_SUB_WRAPPERS = {"log_prob": _reported_once(_report_log_prob), "entropy": _reported_once(_report_entropy)}
