"""Import a module of ppo_probe from a given checkout, for side-by-side benchmarks (--base)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def module_from(root: Path, name: str) -> ModuleType:
    """``name`` (e.g. "ppo_probe.capture.optim") as found under ``root``: the package is imported
    afresh from there, so two checkouts' versions can be held and timed in one process."""
    for loaded in [m for m in sys.modules if m == "ppo_probe" or m.startswith("ppo_probe.")]:
        del sys.modules[loaded]
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)
