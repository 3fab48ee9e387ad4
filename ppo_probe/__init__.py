"""ppo_probe: find what is silently wrong in a PPO / MAPPO training run."""

from __future__ import annotations

__version__ = "0.1.0"

from .analysis.report import Report, analyze
from .analysis.run import Run, load
from .errors import RunFormatError
from .watch import Watch, watch

__all__ = ["Report", "Run", "RunFormatError", "Watch", "analyze", "load", "watch", "__version__"]
