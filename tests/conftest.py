"""Shared fixtures: the example CleanRL-style trainer, imported from examples/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load_example():
    spec = importlib.util.spec_from_file_location("cartpole_ppo", ROOT / "examples" / "cartpole_ppo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cartpole_ppo"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cartpole():
    """The examples/cartpole_ppo.py module (Config, build, train)."""
    return _load_example()
