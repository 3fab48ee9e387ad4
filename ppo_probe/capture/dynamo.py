"""torch.compile: the probe's hooks are Python bookkeeping that Dynamo must not trace.

Traced, a hook's state becomes guards (Dynamo recompiles as it changes) and its untraceable calls
become graph breaks with warnings in the user's log. Under compile a hook therefore hands its work
to :func:`eagerly`, which Dynamo runs as it is, at a graph break.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: True while Dynamo traces (torch >= 2.3; before it, hooks are traced as plain code).
is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


#: ``eagerly(fn, *args)`` calls ``fn(*args)``, never traced (nor anything it calls).
eagerly: Callable[..., Any] = torch.compiler.disable(_call, recursive=True)
