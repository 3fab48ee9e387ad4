"""torch.compile: the probe's hooks are Python bookkeeping that Dynamo must not trace.

Traced, a hook's state becomes guards (Dynamo recompiles as it changes) and its untraceable calls
become graph breaks with warnings in the user's log. So every hook is wrapped by :func:`untraced`:
under compile it hands its work to :data:`eagerly`, which Dynamo runs as it is, at a graph break.

``eagerly`` needs torch._dynamo, which takes about a second to import: it is made by
:func:`prepare` once Dynamo is loaded (torch.compile loads it), never by importing ppo_probe.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

#: True while Dynamo traces (torch >= 2.3; before it, hooks are traced as plain code), and in the
#: other traces that torch.compiler counts: torch.export's, strict or not.
is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)
_is_exporting: Callable[[], bool] | None = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
_is_dynamo_compiling: Callable[[], bool] | None = getattr(torch.compiler, "is_dynamo_compiling", None)
#: True while Dynamo traces (torch.compile, strict torch.export), not in a non-strict export; one
#: Python call where :data:`is_compiling` makes two (it asks ``torch.jit.is_scripting()`` first):
#: the check the Categorical dispatchers make on every call.
is_dynamo_compiling: Callable[[], bool] = _is_dynamo_compiling or is_compiling

#: ``eagerly(fn, *args)`` calls ``fn(*args)``, never traced (nor anything it calls); None until
#: :func:`prepare` finds Dynamo loaded (until then a compiled hook is traced as plain code).
eagerly: Callable[..., Any] | None = None


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def prepare() -> None:
    """Make :data:`eagerly` if Dynamo is loaded (cheap otherwise: one dict lookup)."""
    global eagerly
    if eagerly is None and "torch._dynamo" in sys.modules and not is_compiling():
        eagerly = torch.compiler.disable(_call, recursive=True)


def exporting() -> bool:
    """Called where :data:`is_compiling` is True: whether the trace is not torch.compile's but
    torch.export's (strict, or not strict: the code runs on fake tensors and no Dynamo), or another
    trace of that kind. There the probe is the code it patches: nothing to record (a trace is not
    a training step), and a graph break, which is how it stays out of torch.compile's graphs, is an
    error (strict export), or recurses (not strict, where :data:`eagerly` changes nothing).
    torch < 2.5 has no ``is_exporting``: a strict export then looks like torch.compile."""
    if _is_exporting is not None and _is_exporting():
        return True
    return _is_dynamo_compiling is not None and not _is_dynamo_compiling()


def _noted(note: Callable[[], None] | None, fn: Callable[..., Any], a: Any, b: Any, c: Any) -> None:
    if note is not None:
        note()
    fn(a, b, c)


def untraced(fn: Callable[[Any, Any, Any], None], note: Callable[[], None] | None = None) -> Callable[..., None]:
    """``fn`` as a hook that Dynamo runs eagerly when it traces the hook's caller; ``note`` is
    called (eagerly) first each time that happens. Not compiling: ``fn`` and one check. Hooks
    take three arguments (module or optimizer, args, kwargs or output; a global forward pre-hook
    two: ``fn`` then gets None third), passed as such: no ``*args`` packing on the hot path."""
    def hook(a: Any, b: Any, c: Any = None) -> None:
        if is_compiling():
            if exporting():
                return  # nothing is recorded from an export's trace (prepared or not)
            if eagerly is not None:
                eagerly(_noted, note, fn, a, b, c)
                return
        fn(a, b, c)

    return hook


def call_untraced(fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)``, never traced: under tracing it goes to :data:`eagerly`, or, before
    :func:`prepare` has made that, the graph ends here (``torch._dynamo.graph_break``), so that
    Dynamo runs the enclosing call eagerly, ``fn`` included. For the Categorical patch's reports:
    Dynamo can trace past the patch's own graph break into its wrapper (torch 2.3 does, and traces
    any wrapper when the patch went in before Dynamo was loaded), and traced, the session's
    bookkeeping made it raise into the trainer ('getset_descriptor' object is not subscriptable,
    at a Categorical's __dict__). Not compiling: one check and one call."""
    if is_compiling():
        if exporting():
            return  # nothing is recorded from an export's trace
        if eagerly is not None:
            eagerly(fn, *args)
            return
        torch._dynamo.graph_break()
    fn(*args)
