"""Every diagnostic proven twice: it fires on a trainer with exactly that bug, and healthy
trainers (several seeds, SB3, two actors with masks, auto mode) stay silent (issue 3)."""

from __future__ import annotations

import pytest

import ppo_probe
from zoo import CASES, HEALTHY, run_case

_ALLOWED_ON_HEALTHY = {"update-too-small", "update-too-large"}


@pytest.fixture
def no_config(tmp_path):
    """An empty pyproject.toml, so that only the documented defaults are in force."""
    path = tmp_path / "pyproject.toml"
    path.write_text("")
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bug_raises_its_id(case, tmp_path, no_config):
    report = ppo_probe.analyze(run_case(case, tmp_path / case), pyproject=no_config)
    expected = CASES[case]
    assert expected in report.ids, f"{case}: expected {expected}, got {report.ids}"
    finding = report.diagnostics[report.diagnostics["id"] == expected].iloc[0]
    assert any(ch.isdigit() for ch in finding["evidence"]), "evidence must carry numbers"
    assert finding["fix"]
    if finding["severity"] == "error":
        assert not report.ok


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", HEALTHY)
def test_healthy_run_raises_no_false_alarm(case, seed, tmp_path, no_config):
    report = ppo_probe.analyze(run_case(case, tmp_path / case, seed=seed), pyproject=no_config)
    loud = report.diagnostics[report.diagnostics["severity"].isin(["error", "warning"])]
    assert set(loud["id"]) <= _ALLOWED_ON_HEALTHY, loud[["id", "evidence"]].to_string()
    assert report.ok
    kl = report.per_cycle["kl_k3"].median()
    target = report.settings["target_kl"]
    # the KL warnings only when the KL really is outside the band
    assert ("update-too-small" in report.ids) == (kl < 0.2 * target)
    if "update-too-large" in report.ids:
        assert kl > 2 * target or report.per_cycle["clip_fraction"].median() > 0.3
    assert report.paired_fraction >= 0.99
    # entropy over masked categories stays defined (one valid action must not blank a batch)
    assert report.per_cycle["entropy_norm_mean"].between(0.5, 1.0).all()


def test_nonfinite_values_without_argument_validation(tmp_path, no_config, monkeypatch):
    """With torch.distributions' validation off (set by torchrl's import, torch.compile or the
    user), the NaN logits build a Categorical and the crash comes later, from sample(): the NaN
    rows must still be seen, although every per-distribution mean skips them."""
    from torch.distributions import Distribution

    monkeypatch.setattr(Distribution, "_validate_args", False)
    run = ppo_probe.load(run_case("nan_input", tmp_path / "nan"))
    assert run.meta["status"] == "interrupted: RuntimeError"
    assert run.dists["nonfinite_rows"].tolist()[-1] == 1  # one env's observation of 4 is NaN
    report = ppo_probe.analyze(run, pyproject=no_config)
    evidence = report.diagnostics.set_index("id").loc["nonfinite-values", "evidence"]
    assert "1 of " in evidence and "Categoricals have NaN/Inf logits (1 rows)" in evidence


def test_sampling_update_mismatch_names_the_kind(tmp_path, no_config):
    evidence = {}
    for case in ("temperature_one_path", "action_subset", "mappo_mask_rebuilt"):
        report = ppo_probe.analyze(run_case(case, tmp_path / case), pyproject=no_config)
        rows = report.diagnostics[report.diagnostics["id"] == "sampling-update-mismatch"]
        evidence[case] = rows["evidence"].iloc[0]
    assert "logit scale" in evidence["temperature_one_path"]
    assert "temperature of 2 " in evidence["temperature_one_path"]
    assert "K = 2 at sampling vs K = 5 at update" in evidence["action_subset"]
    assert "action mask" in evidence["mappo_mask_rebuilt"]


def test_reload_is_told_apart_from_weight_decay(tmp_path, no_config):
    reload = ppo_probe.analyze(run_case("reload_every_step", tmp_path / "r"), pyproject=no_config)
    decay = ppo_probe.analyze(run_case("adamw_decay_no_grad", tmp_path / "d"), pyproject=no_config)
    changed = reload.diagnostics.set_index("id").loc["params-changed-outside-step", "evidence"]
    moved = decay.diagnostics.set_index("id").loc["update-without-gradient", "evidence"]
    assert "a reload" in changed
    assert "weight decay" in moved and "aux" in moved


def test_nonfinite_values_survive_the_trainer_crashing(tmp_path, no_config):
    run = ppo_probe.load(run_case("nan_input", tmp_path / "nan"))
    assert run.meta["status"] == "interrupted: ValueError"
    report = ppo_probe.analyze(run, pyproject=no_config)
    assert "nonfinite-values" in report.ids and not report.ok
    assert len(report.per_cycle) >= 1  # what was recorded before the crash is analyzable
