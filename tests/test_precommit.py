"""The pre-commit hook of .pre-commit-hooks.yaml, installed by pre-commit from this repository and
run on a project as a user's pre-commit config would."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_pre_commit_runs_the_sanity_check(tmp_path):
    if shutil.which("pre-commit") is None or shutil.which("git") is None:
        pytest.skip("pre-commit or git is not installed")
    rev = _git("rev-parse", "HEAD", cwd=ROOT)
    if ".pre-commit-hooks.yaml" not in _git("ls-tree", "--name-only", rev, cwd=ROOT).split():
        pytest.skip(".pre-commit-hooks.yaml is not committed yet (pre-commit installs hooks from a commit)")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "examples" / "cartpole_ppo.py", project / "train.py")
    (project / ".pre-commit-config.yaml").write_text(
        "repos:\n"
        f"  - repo: {ROOT}\n"
        f"    rev: {rev}\n"
        "    hooks:\n"
        "      - id: ppo-probe\n"
        '        args: [--max-steps, "40", train.py]\n'
    )
    _git("init", "-q", cwd=project)
    _git("add", ".", cwd=project)
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache")}
    result = subprocess.run(["pre-commit", "run", "--all-files"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ppo-probe sanity run" in result.stdout and "Passed" in result.stdout

    (project / "train.py").write_text((project / "train.py").read_text().replace(
        "loss = pg_loss - cfg.ent_coef * entropy.mean()", "loss = pg_loss + cfg.ent_coef * entropy.mean()"))
    _git("add", ".", cwd=project)
    result = subprocess.run(["pre-commit", "run", "--all-files"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Failed" in result.stdout and "entropy-bonus-sign" in result.stdout
