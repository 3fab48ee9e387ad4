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


@pytest.fixture(scope="session", autouse=True)
def _trainers_temp_dir(tmp_path_factory):
    """Trainers' own temporary files in pytest's temp dir: Stable-Baselines3 makes an empty
    /tmp/SB3-<time> log folder at every learn() without a logger (about 60 a test run)."""
    import tempfile

    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempdir"))
    yield
    tempfile.tempdir = before
