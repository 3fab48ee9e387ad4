"""The package type-checks (it ships py.typed), and a user's mypy sees its public signatures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")
ROOT = Path(__file__).resolve().parent.parent

_USER_CODE = """
import torch
import ppo_probe

actor = torch.nn.Linear(4, 2)
optim = torch.optim.Adam(actor.parameters())
with ppo_probe.watch(actor, optim, out="runs/probe", every=5) as w:
    pass
report: ppo_probe.Report = ppo_probe.analyze(w.path, target_kl=0.01)
fraction: float = report.paired_fraction
reason: str | None = report.nothing_to_check
ok: bool = report.ok
"""


def _mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # MYPYPATH: mypy cannot follow the import hook of an editable install (`pip install -e .`);
    # from a regular install it finds the package through py.typed instead
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cwd / ".mypy_cache"), *args],
        capture_output=True, text=True, cwd=cwd, timeout=600, env={**os.environ, "MYPYPATH": str(ROOT)},
    )


def test_the_package_type_checks(tmp_path):
    result = _mypy("--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "ppo_probe"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_users_code_is_checked_against_the_public_signatures(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(_USER_CODE)
    result = _mypy("--ignore-missing-imports", str(good), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    bad = tmp_path / "bad.py"  # the same code with a wrongly typed argument: the types are seen
    bad.write_text(_USER_CODE.replace("every=5", 'every="5"').replace("target_kl=0.01", "target_kl='x'"))
    result = _mypy("--ignore-missing-imports", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert 'Argument "every" to "Watch"' in result.stdout and 'Argument "target_kl" to "analyze"' in result.stdout
