"""Report.to_tensorboard with a real SummaryWriter, read back from the event files."""

from __future__ import annotations

import pytest

import ppo_probe
from zoo import run_case

pytest.importorskip("tensorboard")


def test_metrics_and_findings_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    report = ppo_probe.analyze(run_case("sum_reduction", tmp_path / "run"))
    with SummaryWriter(log_dir=str(tmp_path / "tb")) as writer:
        written = report.to_tensorboard(writer, step_offset=100)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    kl = events.Scalars("ppo_probe/kl_k3")
    assert [e.step for e in kl] == [100 + c for c in report.per_cycle["cycle"]]
    assert [e.value for e in kl] == pytest.approx(report.per_cycle["kl_k3"].tolist(), rel=1e-6)
    assert written == sum(len(events.Scalars(tag)) for tag in events.Tags()["scalars"])
    text = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    assert "loss-sum-reduction" in text["ppo_probe/diagnostics/text_summary"]
    assert "lr" in text["ppo_probe/recommendation/text_summary"]
