"""Errors raised by ppo_probe's public API."""

from __future__ import annotations


class RunFormatError(ValueError):
    """A path is not a readable ppo_probe run: missing, empty, foreign, corrupt or too new."""
