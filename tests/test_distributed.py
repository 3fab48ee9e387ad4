"""torch.distributed: two real DDP ranks on gloo (CPU), launched by torchrun, one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

import ppo_probe

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def _torchrun(out: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), out, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    _torchrun(str(out))
    return out


def test_each_rank_writes_its_own_partition_and_meta(healthy):
    assert (healthy / "meta.json").exists() and (healthy / "meta-rank1.json").exists()
    for table in ("samples", "dists", "steps", "layers"):
        assert sorted(p.name for p in (healthy / table).iterdir()) == ["rank=0", "rank=1"]
    rank1 = json.loads((healthy / "meta-rank1.json").read_text())
    assert rank1["rank"] == 1 and rank1["world_size"] == 2 and rank1["status"] == "complete"
    # a plain hive-partitioned dataset: rank is a partition column to pyarrow as it is to us
    table = ds.dataset(healthy / "steps", format="parquet", partitioning="hive").to_table()
    assert sorted(set(table.column("rank").to_pylist())) == [0, 1]


def test_load_merges_ranks_and_pairs_within_each(healthy):
    run = ppo_probe.load(healthy)
    assert run.meta["world_size"] == 2 and run.meta["status"] == "complete"
    assert set(run.meta["ranks"]) == {"0", "1"}
    # counts are the sum over ranks: each rank saw 3 cycles x (1 sampling + 3 epochs x 4 minibatches)
    assert run.meta["counts"]["dists"] == 2 * 3 * (1 + 3 * 4)
    pairs = run.pairs
    assert pairs.groupby("rank").size().to_dict() == {0: 3 * 3 * 256, 1: 3 * 3 * 256}
    assert pairs["paired"].all()
    steps = run.steps
    assert steps.groupby("rank").size().to_dict() == {0: 36, 1: 36}


def test_analyze_reports_per_rank_and_no_false_alarm(healthy):
    report = ppo_probe.analyze(healthy)
    ranks = report.per_rank
    assert ranks["rank"].tolist() == [0, 1]
    assert ranks["paired_fraction"].tolist() == [1.0, 1.0]
    assert ranks["steps"].tolist() == [36, 36] and ranks["status"].tolist() == ["complete"] * 2
    assert report.ok, report.summary()
    assert "per rank:" in report.summary()
    assert [r["rank"] for r in report.to_dict()["per_rank"]] == [0, 1]


def test_one_unpaired_rank_is_named(tmp_path):
    out = tmp_path / "run"
    _torchrun(str(out), "--bug-rank", "1")
    report = ppo_probe.analyze(out)
    ranks = report.per_rank.set_index("rank")
    assert ranks.loc[0, "paired_fraction"] == 1.0 and ranks.loc[1, "paired_fraction"] == 0.0
    found = report.diagnostics.set_index("id")
    assert "unpaired-samples" in found.index
    evidence = found.loc["unpaired-samples", "evidence"]
    assert "rank 0 100.0% of 2304" in evidence and "rank 1 0.0% of 2304" in evidence
    assert "below 90%: rank 1" in evidence


def test_default_out_is_shared_by_the_ranks(tmp_path):
    proc = _torchrun("-", env={"PPO_PROBE_DIR": str(tmp_path)})
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1, (runs, proc.stdout)
    paths = {line.split(" wrote ")[1] for line in proc.stdout.splitlines() if " wrote " in line}
    assert paths == {str(runs[0])}
    run = ppo_probe.load(runs[0])
    assert run.meta["world_size"] == 2 and run.pairs["paired"].all()
    assert sorted(pd.unique(run.pairs["rank"])) == [0, 1]


def test_terminal_and_html_reports_show_each_rank(healthy, tmp_path):
    proc = subprocess.run(["ppo-probe", "report", str(healthy), "--html", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "over 2 ranks" in proc.stdout and "per rank" in proc.stdout
    # per-cycle rows say which rank they belong to
    assert any(line.lstrip().startswith("rank  cycle") for line in proc.stdout.splitlines()), proc.stdout
    html = (tmp_path / "r.html").read_text()
    assert '<section id="per-rank">' in html and html.count("<td>complete</td>") == 2
