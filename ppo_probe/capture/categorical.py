"""The one patch: Categorical's __init__, sample, log_prob and entropy report to sessions.

Categorical has no hook API, so this is the only place the probe patches a class (and the
log_prob / entropy of a subclass that overrides them, from its first instance on: TorchRL's
MaskedCategorical computes its log-prob as a cross-entropy, never entering Categorical's). The patch is
installed when the first session attaches and the original functions are put back when the last
one detaches, so nested and repeated watches share one patch.

While installed, each of the four methods is a dispatcher that calls Categorical's own and
reports only the events some attached session needs now (:data:`_live`): none in the sampling
phase of a cycle the schedule skips, only ``sample`` and ``log_prob`` in that cycle's update
phase (they alone can open the next cycle), all four otherwise. What the sessions need changes a
module global, never the class: assigning a class attribute throws away what CPython cached and
specialized for the class, and on CPython >= 3.13 spends one of the class's 1,000 attribute-cache
version tags, after which its lookups are never cached again in the process (``python
benchmarks/type_modified.py --spend 1100``: +2.0% instructions a CleanRL rollout step on 3.13).
The dispatchers have Categorical's own signatures (checked at install; a torch whose signatures
differ gets ``*args, **kwargs`` ones), so a call that reports nothing costs one Python frame
and one ``torch.compiler.is_dynamo_compiling()`` check.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable
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
_sessions: tuple[Session, ...] = ()  # replaced, never mutated: the dispatchers iterate it unlocked
_originals: dict[str, Any] = {}  # Categorical's own methods while the dispatchers are installed
# What each attached session needs now, by id(): ALL (the default), BOUNDARY or NOTHING.
ALL, BOUNDARY, NOTHING = _PATCHED, ("sample", "log_prob"), ()
_needs: dict[int, tuple[str, ...]] = {}  # replaced, never mutated
#: The methods whose events some attached session needs now (read by the dispatchers, unlocked).
_live: frozenset[str] = frozenset()
_INIT_CODE = Categorical.__dict__["__init__"].__code__
# Subclasses that override log_prob or entropy without calling Categorical's (TorchRL's
# MaskedCategorical takes -cross_entropy(logits, value)): their own methods are wrapped too, from
# their first instance on, while the patch is installed. (class, name) -> the class's own function.
_OVERRIDABLE = ("log_prob", "entropy")
_sub_originals: dict[tuple[type, str], Any] = {}
_subclasses: weakref.WeakSet[type] = weakref.WeakSet()  # seen: patched again at each install
_is_compiling = dynamo.is_compiling
_traced = dynamo.is_dynamo_compiling  # the dispatchers' check (a non-strict export: see call_untraced)


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


def init_silent() -> bool:
    """Categorical.__init__ reports to no session now (a failure to build one reaches none)."""
    return "__init__" not in _live


def _sync() -> None:
    """Install the dispatchers while some session is attached; set what they report (under the lock)."""
    global _live
    dynamo.prepare()
    if _sessions and not _originals:
        _install()
    _live = frozenset(name for s in _sessions for name in _needs.get(id(s), ALL))
    if not _sessions and _originals:
        _uninstall()


def failed_init(tb: TracebackType | None) -> dict[str, Any] | None:
    """The ``logits`` / ``probs`` arguments of a Categorical.__init__ that raised the exception
    whose traceback is ``tb`` (None if it did not come from one): how a failure is still noted
    when ``__init__`` reported to no session at the time."""
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is _INIT_CODE:
            args = {k: frame.f_locals.get(k) for k in ("probs", "logits")}
            return {k: v for k, v in args.items() if v is not None}
        tb = tb.tb_next
    return None


def _install() -> None:
    originals = {name: Categorical.__dict__[name] for name in _PATCHED}
    made = _dispatchers(originals)
    if not all(_same_signature(originals[name], made[name]) for name in _PATCHED):
        made = {name: _generic(name, own) for name, own in originals.items()}
    _originals.update(originals)
    try:
        for name in _PATCHED:
            setattr(Categorical, name, _like(made[name], originals[name]))
        for cls in list(_subclasses):
            _patch_subclass(cls)
    except BaseException:
        _uninstall()
        raise


def _same_signature(original: Any, dispatcher: Any) -> bool:
    """The dispatcher takes what Categorical's own takes, with the same defaults (annotations aside)."""
    try:
        theirs, ours = inspect.signature(original).parameters, inspect.signature(dispatcher).parameters
    except (TypeError, ValueError):
        return False
    return list(theirs) == list(ours) and all(
        theirs[k].kind == ours[k].kind and _same_default(theirs[k].default, ours[k].default) for k in theirs
    )


def _same_default(a: Any, b: Any) -> bool:
    try:
        return a is b or (type(a) is type(b) and bool(a == b))
    except Exception:  # noqa: BLE001 - an exotic default: not the same
        return False


def _like(dispatcher: Any, original: Any) -> Any:
    """``dispatcher`` under ``original``'s name, docs and signature. (No ``__wrapped__``: Dynamo
    would look through it.)"""
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(dispatcher, attr, getattr(original, attr, None))
    try:
        dispatcher.__signature__ = inspect.signature(original)
    except (TypeError, ValueError):
        pass
    return dispatcher


def _patch_subclass(cls: type) -> None:
    """Wrap the log_prob / entropy that ``cls`` and its bases below Categorical define (under the
    lock, with the dispatchers installed)."""
    for klass in cls.__mro__:
        if klass is Categorical:
            break
        for name in _OVERRIDABLE:
            original = klass.__dict__.get(name)
            if original is None or (klass, name) in _sub_originals or not callable(original):
                continue
            _sub_originals[(klass, name)] = original
            wrapped = _breaking_under_compile(original)
            setattr(klass, name, wrapt.FunctionWrapper(wrapped, _SUB_WRAPPERS[name]))


def _seen_subclass(cls: type) -> None:
    with _lock:
        if cls in _subclasses:
            return
        _subclasses.add(cls)
        if _originals:
            _patch_subclass(cls)


def _nothing() -> None:
    pass


def _graph_break() -> None:
    """Under Dynamo, end the graph here: it then runs the whole call eagerly, wrapper included."""
    if dynamo.eagerly is not None:
        dynamo.eagerly(_nothing)
    else:
        torch._dynamo.graph_break()


def _breaking_under_compile(original: Any) -> Any:
    """``original``, but a graph break when Dynamo traces it (for a subclass's wrapt wrapper:
    Dynamo looks through a wrapt wrapper to the function it wraps, and would never reach the
    wrapper). Eagerly it is ``original`` and one check. (No ``__wrapped__``: Dynamo would look
    through that too; the name and signature are copied for introspection.)"""
    def call(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if _is_compiling() and not dynamo.exporting():
            _graph_break()
        return result

    return _like(call, original)


def _uninstall() -> None:
    try:
        for name, original in _originals.items():
            setattr(Categorical, name, original)
        for (klass, name), original in _sub_originals.items():
            setattr(klass, name, original)
    finally:
        _originals.clear()
        _sub_originals.clear()


# The dispatchers run Categorical's own method first: if it raises, the trainer sees its own error
# untouched. The session methods never raise (they count their failures) unless the session is strict.
# Their reports go through dynamo.call_untraced: traced by Dynamo, they would raise into the trainer.


def _report_init(instance: Any, source: Any) -> None:
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


def _init_reported(instance: Any, own: Any, args: tuple, kwargs: dict[str, Any], source: Any) -> None:
    try:
        own(instance, *args, **kwargs)
    except Exception:
        # The trainer is about to crash (e.g. validation of NaN logits): note why, then re-raise.
        dynamo.call_untraced(_report_init_failed, args, kwargs)
        raise
    dynamo.call_untraced(_report_init, instance, source)


_EMPTY = torch.Size()


def _dispatchers(own: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """Categorical's four methods, with their own signatures, reporting what :data:`_live` names.

    Under Dynamo each runs itself through :data:`.dynamo.eagerly`, a graph break: traced, its
    reads of :data:`_live` and the event count would become guards of the trainer's compiled code
    (recompiled at each change) and its reports graph breaks inside it. Before Dynamo is prepared
    (a torch.compile made inside the watch) it is traced as plain code, reports untraced. Traced
    by torch.export (:func:`.dynamo.exporting`) it is Categorical's own method, reporting nothing:
    a strict export is Dynamo's trace; a non-strict one runs the dispatcher as eager code on fake
    tensors, and :func:`.dynamo.call_untraced` drops its reports.
    """
    own_init, own_sample, own_log_prob, own_entropy = (own[name] for name in _PATCHED)

    def __init__(self: Any, probs: Any = None, logits: Any = None, validate_args: Any = None) -> None:
        if _traced():
            if dynamo.exporting():
                own_init(self, probs, logits, validate_args)
                return
            if dynamo.eagerly is not None:
                dynamo.eagerly(__init__, self, probs, logits, validate_args)
                return
        if "__init__" not in _live:
            own_init(self, probs, logits, validate_args)
        else:
            source = logits if logits is not None else probs
            _init_reported(self, own_init, (probs, logits, validate_args), {}, source)

    def sample(self: Any, sample_shape: Any = _EMPTY) -> Any:
        if _traced():
            if dynamo.exporting():
                return own_sample(self, sample_shape)
            if dynamo.eagerly is not None:
                return dynamo.eagerly(sample, self, sample_shape)
        result = own_sample(self, sample_shape)
        if "sample" in _live:
            dynamo.call_untraced(_report_sample, self, result)
        return result

    def log_prob(self: Any, value: Any) -> Any:
        if _traced():
            if dynamo.exporting():
                return own_log_prob(self, value)
            if dynamo.eagerly is not None:
                return dynamo.eagerly(log_prob, self, value)
        result = own_log_prob(self, value)
        if "log_prob" in _live:
            _events.n += 1
            dynamo.call_untraced(_report_log_prob_event, self, value, result)
        return result

    def entropy(self: Any) -> Any:
        if _traced():
            if dynamo.exporting():
                return own_entropy(self)
            if dynamo.eagerly is not None:
                return dynamo.eagerly(entropy, self)
        result = own_entropy(self)
        if "entropy" in _live:
            _events.n += 1
            dynamo.call_untraced(_report_entropy_event, self, result)
        return result

    return {"__init__": __init__, "sample": sample, "log_prob": log_prob, "entropy": entropy}


def _generic(name: str, own: Any) -> Callable[..., Any]:
    """A dispatcher taking any arguments: for a torch whose Categorical methods take others than
    :func:`_dispatchers` knows (packing them costs more a call: ~1 us, measured ad hoc)."""
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _traced():
            if dynamo.exporting():
                return own(self, *args, **kwargs)
            if dynamo.eagerly is not None:
                return dynamo.eagerly(functools.partial(method, self, *args, **kwargs))
        if name not in _live:
            return own(self, *args, **kwargs)
        if name == "__init__":
            source = kwargs.get("logits", kwargs.get("probs", args[0] if args else None))
            return _init_reported(self, own, args, kwargs, source)
        result = own(self, *args, **kwargs)
        if name == "sample":
            dynamo.call_untraced(_report_sample, self, result)
            return result
        _events.n += 1
        if name == "log_prob":
            value = args[0] if args else kwargs.get("value")
            dynamo.call_untraced(_report_log_prob_event, self, value, result)
        else:
            dynamo.call_untraced(_report_entropy_event, self, result)
        return result

    return method


def _reported_once(name: str, report: Any) -> Any:
    """The wrapt wrapper of a subclass's own log_prob / entropy: while some session needs
    ``name``, ``report(instance, args, kwargs, result)`` runs when the call reported nothing
    itself (it never reached Categorical's method, nor an inner override's)."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if name not in _live:
            return wrapped(*args, **kwargs)
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


_SUB_WRAPPERS = {
    "log_prob": _reported_once("log_prob", _report_log_prob),
    "entropy": _reported_once("entropy", _report_entropy),
}
