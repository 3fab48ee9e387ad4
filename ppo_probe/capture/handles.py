"""Removable handles for everything the probe attaches, shaped like torch's RemovableHandle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Handle:
    """Calls ``undo`` once on ``remove()``; removing twice is safe; usable as a context manager."""

    def __init__(self, undo: Callable[[], Any]) -> None:
        self._undo: Callable[[], Any] | None = undo

    def remove(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
