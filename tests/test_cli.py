"""The ``ppo-probe`` console script, driven in a subprocess as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys

import torch

import ppo_probe
from trainers import BanditConfig, make_actor, train_bandit


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ppo_probe", *args], capture_output=True, text=True, timeout=120
    )


def test_console_script_is_installed():
    assert shutil.which("ppo-probe") is not None
    assert "report" in subprocess.run(["ppo-probe", "--help"], capture_output=True, text=True).stdout


def test_report_prints_the_per_cycle_table(tmp_path):
    cfg = BanditConfig(seed=3, cycles=3)
    torch.manual_seed(3)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run") as w:
        train_bandit(cfg, {"a": actor}, optim)
    result = _cli("report", str(w.path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "kl_k3" in line)
    assert header.split()[:2] == ["cycle", "n_steps"]
    rows = lines[lines.index(header) + 1 : lines.index(header) + 4]
    assert [r.split()[0] for r in rows] == ["0", "1", "2"]
    assert "paired 2304 (100.0%)" in result.stdout


def test_unreadable_run_exits_2_without_traceback(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    result = _cli("report", str(tmp_path / "junk"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "not a ppo_probe run" in result.stderr and str(tmp_path / "junk") in result.stderr
