"""The ``ppo-probe`` console script, driven in a subprocess as a user (or pre-commit) would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ppo_probe
from trainers import BanditConfig, make_actor, train_bandit
from zoo import run_case

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ppo_probe", *args], capture_output=True, text=True, timeout=300,
        cwd=cwd or ROOT,
    )


def _bug_script(tmp_path: Path, case: str) -> Path:
    """An ordinary training script (no ppo_probe in it) with the zoo's bug ``case`` injected."""
    script = tmp_path / f"train_{case}.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import zoo\n"
        "if __name__ == '__main__':\n"
        f"    bugs = zoo._CLEANRL[{case!r}]\n"
        "    cfg = zoo.Config(seed=int(sys.argv[1]))\n"
        "    envs, agent, optim = zoo.build(cfg, bugs)\n"
        "    zoo.train(cfg, bugs, envs, agent, optim)\n"
    )
    return script


def test_console_script_is_installed():
    assert shutil.which("ppo-probe") is not None
    out = subprocess.run(["ppo-probe", "--help"], capture_output=True, text=True).stdout
    assert all(command in out for command in ("report", "check", "run"))


def test_report_prints_findings_cycles_and_recommendation(tmp_path):
    cfg = BanditConfig(seed=3, cycles=3)
    torch.manual_seed(3)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run") as w:
        train_bandit(cfg, {"a": actor}, optim)
    result = _cli("report", str(w.path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "paired 100.0% of 2304 update rows; 3 cycles" in out
    header = next(line for line in out.splitlines() if "kl_k3" in line)
    assert header.split()[:2] == ["cycle", "n_steps"]
    assert "recommendation: lr" in out and "Adam" in out
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal
    # the same trainer at 4x the lr, reported with the first run as --previous
    torch.manual_seed(3)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=4 * cfg.lr)
    with ppo_probe.watch(actor, optim, out=tmp_path / "faster") as w2:
        train_bandit(cfg, {"a": actor}, optim)
    two = _cli("report", str(w2.path), "--previous", str(w.path))
    assert two.returncode == 0, two.stderr
    assert "read from this run and the previous one" in two.stdout
    missing = _cli("report", str(w2.path), "--previous", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_healthy_example_run_exits_0_and_removes_its_temporary_run():
    result = _cli("run", "--max-steps", "40", "examples/cartpole_ppo.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped after 40 optimizer steps" in result.stderr
    assert result.stdout.strip().endswith("none at or above error: ok")
    run_dir = Path(result.stderr.split("run written to ")[1].split()[0])
    assert not run_dir.exists()  # a passing check leaves nothing behind
    assert not (ROOT / "ppo_probe_runs").exists() or not any((ROOT / "ppo_probe_runs").iterdir())


def test_run_every_sets_the_schedule(tmp_path):
    out = tmp_path / "run"
    result = _cli("run", "--out", str(out), "--every", "3", "--max-steps", "176", "examples/cartpole_ppo.py")
    assert result.returncode == 0, result.stdout + result.stderr
    meta = ppo_probe.load(out).meta
    assert (meta["cycles"], meta["recorded_cycles"], meta["settings"]["every"]) == (11, 9, 3)
    assert "recorded 9 of 11 cycles" in _cli("report", str(out)).stdout
    bad = _cli("run", "--every", "0", "examples/cartpole_ppo.py")
    assert bad.returncode == 2 and "--every must be >= 1, got 0" in bad.stderr


def test_run_lr_sweep_prints_the_lr_read_from_the_sweep(tmp_path):
    out = tmp_path / "run"
    # examples/cartpole_ppo.py: 16 optimizer steps a cycle, so 160 steps are 10 cycles
    result = _cli("run", "--out", str(out), "--lr-sweep", "2", "--max-steps", "160", "examples/cartpole_ppo.py")
    assert result.returncode == 0, result.stdout + result.stderr
    run = ppo_probe.load(out)
    assert run.meta["settings"]["lr_sweep"] == 2.0 and run.meta["recorded_cycles"] == run.meta["cycles"]
    lrs = run.steps.groupby("cycle")["lr"].first()
    assert lrs.iloc[-1] / lrs.iloc[0] == pytest.approx(2.0 ** (len(lrs) - 1))
    rec = ppo_probe.analyze(out).recommendation
    assert f"lr sweep: recommended lr {rec['lr']:.3g}: lr sweep (x2 a cycle" in result.stdout
    bad = _cli("run", "--lr-sweep", "1", "examples/cartpole_ppo.py")
    assert bad.returncode == 2 and "--lr-sweep must be in (1, 100], got 1.0" in bad.stderr


def test_run_with_an_injected_bug_exits_1_and_keeps_the_run(tmp_path):
    script = _bug_script(tmp_path, "entropy_sign")
    out = tmp_path / "run"
    result = _cli("run", "--out", str(out), "--max-steps", "48", str(script), "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL error    entropy-bonus-sign" in result.stdout
    assert (out / "meta.json").is_file() and ppo_probe.load(out).meta["status"] == "interrupted: StopTraining"
    assert len(ppo_probe.load(out).steps) == 48  # the step that stopped it is recorded too


@pytest.mark.parametrize("case, expected", [("detached_logits", "logprob-detached"),
                                            ("old_logp_with_grad", "logprob-grads-cancel")])
def test_check_exits_1_and_prints_the_id(tmp_path, case, expected):
    run = run_case(case, tmp_path / case)
    result = _cli("check", str(run))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error    {expected}:" in result.stdout and expected in result.stdout.splitlines()[-1]


def test_check_json_parses_and_fail_on_and_ignore_work(tmp_path):
    run = run_case("sum_reduction", tmp_path / "run")  # a warning-level bug
    result = _cli("check", str(run), "--format", "json")
    assert result.returncode == 0, result.stderr  # default fail-on is error
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 0 and doc["fail_on"] == "error" and doc["failing"] == []
    ids = [d["id"] for d in doc["diagnostics"]]
    assert "loss-sum-reduction" in ids and doc["recommendation"]["lr"] > 0

    result = _cli("check", str(run), "--fail-on", "warning", "--format", "json")
    assert result.returncode == 1
    assert "loss-sum-reduction" in json.loads(result.stdout)["failing"]

    warnings = [d["id"] for d in doc["diagnostics"] if d["severity"] == "warning"]
    ignored = [arg for i in warnings for arg in ("--ignore", i)]
    result = _cli("check", str(run), "--fail-on", "warning", *ignored)
    assert result.returncode == 0, result.stdout


def test_pyproject_settings_apply_and_flags_override(tmp_path):
    run = run_case("sum_reduction", tmp_path / "run")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.ppo_probe]\nfail_on = "warning"\n')
    assert _cli("check", str(run), cwd=project).returncode == 1
    assert _cli("check", str(run), "--fail-on", "error", cwd=project).returncode == 0
    (project / "pyproject.toml").write_text('[tool.ppo_probe]\nfail_on = "loud"\n')
    result = _cli("check", str(run), cwd=project)
    assert result.returncode == 2 and "fail_on must be one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_module_passes_its_arguments(tmp_path):
    (tmp_path / "bugmod.py").write_text(_bug_script(tmp_path, "healthy").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "ppo_probe", "run", "--max-steps", "20", "--out", str(tmp_path / "run"),
         "-m", "bugmod", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ppo_probe.load(tmp_path / "run").meta["status"] == "interrupted: StopTraining"


def test_a_crashing_script_exits_1_with_its_traceback(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("raise RuntimeError('the trainer broke')\n")
    result = _cli("run", "--out", str(tmp_path / "run"), str(script))
    assert result.returncode == 1
    assert "RuntimeError: the trainer broke" in result.stderr  # the user's own traceback
    as_json = _cli("run", "--out", str(tmp_path / "run2"), "--format", "json", str(script))
    payload = json.loads(as_json.stdout)
    assert as_json.returncode == payload["exit_code"] == 1 and payload["script_failed"]


@pytest.mark.parametrize("args, message", [
    (("check", "{junk}"), "not a ppo_probe run"),
    (("report", "{junk}"), "not a ppo_probe run"),
    (("check", "{missing}"), "no such file or directory"),
    (("run", "{missing}"), "no such script"),
    (("run",), "exactly one of SCRIPT"),
    (("run", "--max-steps", "0", "x.py"), "--max-steps must be >= 1"),
])  # fmt: skip
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    missing = tmp_path / "missing"
    result = _cli(*(a.format(junk=junk, missing=missing) for a in args))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_progress_shows_on_a_terminal_only(tmp_path):
    """On a terminal (a pty) `run` counts optimizer steps on stderr; piped, it prints one line."""
    import os
    import pty

    script = _bug_script(tmp_path, "healthy")
    args = [sys.executable, "-m", "ppo_probe", "run", "--out", str(tmp_path / "run"), "--max-steps", "30",
            str(script), "0"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=follower, cwd=ROOT)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the pty closes when the process exits
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    assert b"optimizer step 30/30" in seen

    piped = _cli("run", "--out", str(tmp_path / "run2"), "--max-steps", "30", str(script), "0")
    assert piped.returncode == 0
    assert "optimizer step 10" not in piped.stderr
    assert piped.stderr.strip().splitlines() == [f"ppo-probe: stopped after 30 optimizer steps (--max-steps); "
                                                 f"run written to {tmp_path / 'run2'}"]


_NO_CATEGORICAL_UPDATE = """
import torch
from torch.distributions import Categorical, Normal
torch.manual_seed(0)
net = torch.nn.Linear(4, 2)
optim = torch.optim.Adam(net.parameters(), lr=1e-3)
for cycle in range(3):
    obs = torch.randn(64, 4)
    with torch.no_grad():
        {sampling}
    for epoch in range(2):
        {update}
        ratio = torch.exp(new_logp - old_logp)
        loss = -(ratio * torch.randn(64)).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
"""
_POLICIES = {  # (sampling, update, what the reason says)
    "gaussian": ("dist = Normal(net(obs), 1.0); action = dist.sample(); old_logp = dist.log_prob(action).sum(-1)",
                 "new_logp = Normal(net(obs), 1.0).log_prob(action).sum(-1)",
                 "6 optimizer steps but no torch.distributions.Categorical"),
    "hand-written update": ("dist = Categorical(logits=net(obs)); action = dist.sample(); old_logp = dist.log_prob(action)",
                            "new_logp = torch.log_softmax(net(obs), -1).gather(1, action[:, None]).squeeze(1)",
                            "all built with grad disabled or sampled from"),
}  # fmt: skip


@pytest.mark.parametrize("policy", list(_POLICIES))
def test_run_with_nothing_to_check_exits_2_and_says_why(tmp_path, policy):
    """A script the probe cannot see the policy path of passes no gate: exit 2, with the reason."""
    sampling, update, reason = _POLICIES[policy]
    script = tmp_path / "train.py"
    script.write_text(_NO_CATEGORICAL_UPDATE.format(sampling=sampling, update=update))
    result = _cli("run", str(script))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nothing to check" in result.stdout and reason in result.stderr
    kept = result.stderr.split("kept ")[1].split(" for inspection")[0]
    assert reason in ppo_probe.analyze(kept).nothing_to_check
    shutil.rmtree(Path(kept).parent)


def test_check_of_a_watch_around_no_training_exits_2(tmp_path):
    with ppo_probe.watch(out=tmp_path / "run") as w:
        pass
    result = _cli("check", str(w.path))
    assert result.returncode == 2
    assert "the watch saw no torch.distributions.Categorical and no optimizer step" in result.stderr
    payload = json.loads(_cli("check", str(w.path), "--format", "json").stdout)
    assert payload["exit_code"] == 2 and payload["nothing_to_check"].startswith("the watch saw no")
    assert "nothing to check" in _cli("report", str(w.path)).stdout
