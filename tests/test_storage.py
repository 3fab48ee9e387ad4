"""The run directory: format on disk, crash safety, and clear errors for every bad path."""

from __future__ import annotations

import json
import shutil
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

import ppo_probe
from ppo_probe import RunFormatError
from trainers import BanditConfig, make_actor, train_bandit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    cfg = BanditConfig(seed=1, cycles=3)
    torch.manual_seed(1)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    out = tmp_path_factory.mktemp("run") / "run"
    with ppo_probe.watch(actor, optim, out=out, flush_rows=500, strict=True):
        train_bandit(cfg, {"a": actor}, optim)
    return out


def test_layout_is_a_hive_partitioned_parquet_dataset(small_run):
    meta = json.loads((small_run / "meta.json").read_text())
    assert meta["schema_version"] == 5 and meta["status"] == "complete"
    parts = sorted((small_run / "samples" / "rank=0").iterdir())
    assert len(parts) > 1  # flush_rows=500 forces several complete part files
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in parts)
    # readable by plain pyarrow as a dataset, without ppo_probe
    table = ds.dataset(small_run / "samples", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == meta["counts"]["rows"] == meta["rows_written"]["samples"]
    # actor parameters feeding the logits were discovered and are all in the optimizer
    assert {p["name"] for p in meta["actor_params"]} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(p["feeds_logits"] and p["in_optimizer"] for p in meta["actor_params"])


def test_the_schedule_s_small_batches_share_part_files(tmp_path):
    """Recorded cycles 0, 1, 3, 6 and 9 are flushed in four small batches (and the rest at exit),
    but held and written together: one part file per table, every row in it."""
    cfg = BanditConfig(seed=3, cycles=12)
    torch.manual_seed(3)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", first_cycles=2, every=3, strict=True) as w:
        train_bandit(cfg, {"a": actor}, optim)
    for table in ("samples", "dists", "steps", "layers"):
        assert [p.name for p in (w.path / table / "rank=0").iterdir()] == ["part-00000.parquet"], table
    run = ppo_probe.load(w.path)
    assert len(run.samples) == run.meta["counts"]["rows"] == run.meta["rows_written"]["samples"]
    report = ppo_probe.analyze(run)
    assert sorted(report.per_cycle["cycle"]) == [0, 1, 3, 6, 9]
    assert bool(report.run.pairs["paired"].all())


def test_a_held_batch_is_written_after_hold_seconds_and_a_full_one_at_once(small_run, tmp_path):
    from ppo_probe.storage.writer import RunWriter

    batch = {}
    for table in ("samples", "dists", "steps", "layers"):
        part = sorted((small_run / table / "rank=0").glob("part-*.parquet"))[0]
        data = pq.ParquetFile(part).read()
        batch[table] = {name: data.column(name) for name in data.column_names}
    rows = len(batch["samples"]["call_id"])
    errors = []

    def parts(root):
        return sorted((root / "samples" / "rank=0").glob("part-*.parquet"))

    def wait_for(root, n):
        deadline = time.monotonic() + 30
        while len(parts(root)) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(parts(root))

    held = RunWriter(tmp_path / "held", 0, lambda *e: errors.append(e), batch_rows=10 * rows, hold_seconds=0.5)
    start = time.monotonic()
    held.submit(lambda: batch, hold=True)
    held.submit(lambda: batch, hold=True)
    assert wait_for(tmp_path / "held", 1) == 1
    assert time.monotonic() - start >= 0.5  # not before its time
    held.close()
    assert len(parts(tmp_path / "held")) == 1  # both batches in one file
    assert pq.read_table(parts(tmp_path / "held")[0]).num_rows == 2 * rows

    # within the hour: a held batch once the held ones reach batch_rows, and any batch that
    # cannot be held (a flush that bounds memory), with whatever was held before it
    full = RunWriter(tmp_path / "full", 0, lambda *e: errors.append(e), batch_rows=2 * rows, hold_seconds=3600)
    full.submit(lambda: batch, hold=True)
    full.submit(lambda: batch, hold=True)
    assert wait_for(tmp_path / "full", 1) == 1
    full.submit(lambda: batch, hold=True)
    full.submit(lambda: batch)
    assert wait_for(tmp_path / "full", 2) == 2
    assert [pq.read_table(p).num_rows for p in parts(tmp_path / "full")] == [2 * rows, 2 * rows]
    full.close()
    assert errors == []


def test_refuses_to_write_over_a_run(small_run):
    with pytest.raises(FileExistsError, match="already holds a run"):
        with ppo_probe.watch(out=small_run):
            pass


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "no such file or directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "the directory is empty"),
        (lambda p: (p / "junk").mkdir() or (p / "junk" / "x.txt").write_text("x") and p / "junk", "no meta.json"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "not a directory"),
    ],
    ids=["missing", "empty", "not-a-run", "a-file"],
)
def test_load_bad_paths_raise_one_clear_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(RunFormatError, match=message) as info:
        ppo_probe.load(path)
    assert str(path) in str(info.value)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_part_file_names_the_file(small_run, tmp_path):
    run = _copy(small_run, tmp_path / "copy")
    part = sorted((run / "samples" / "rank=0").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(RunFormatError, match="truncated or corrupt") as info:
        ppo_probe.load(run)
    assert str(part) in str(info.value)


def _as_older_version(small_run, path, version: int, drop: dict[str, list[str]]):
    """A copy of ``small_run`` as a run of schema ``version`` wrote it: the columns added since
    then dropped from its part files."""
    shutil.copytree(small_run, path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "schema_version": version}))
    for table, columns in drop.items():
        for part in (path / table / "rank=0").glob("part-*.parquet"):
            pq.write_table(pq.read_table(part).drop_columns(columns), part)
    return path


def test_a_version_1_run_still_loads_with_one_head(small_run, tmp_path):
    """Version 2 added the ``head`` column; runs written before read it as head 0."""
    run = _as_older_version(small_run, tmp_path / "v1", 1, {"samples": ["head"], "dists": ["head"]})
    old, new = ppo_probe.load(run), ppo_probe.load(small_run)
    assert (old.samples["head"] == 0).all() and (old.dists["head"] == 0).all()
    pd.testing.assert_frame_equal(old.pairs, new.pairs)
    assert ppo_probe.analyze(old).diagnostics["id"].tolist() == ppo_probe.analyze(new).diagnostics["id"].tolist()


def test_a_version_2_run_still_loads_without_backward_passes(small_run, tmp_path):
    """Version 3 added ``grad_pass``; runs written before read it as unknown (null), and their
    adv_eff falls back to the log_prob call's rows, the same as one pass per step gives."""
    run = _as_older_version(small_run, tmp_path / "v2", 2, {"samples": ["grad_pass"]})
    old, new = ppo_probe.load(run), ppo_probe.load(small_run)
    assert old.samples["grad_pass"].isna().all() and new.samples["grad_pass"].notna().any()
    pd.testing.assert_frame_equal(old.pairs.drop(columns="grad_pass"), new.pairs.drop(columns="grad_pass"))
    assert ppo_probe.analyze(old).diagnostics["id"].tolist() == ppo_probe.analyze(new).diagnostics["id"].tolist()


def test_a_version_4_run_still_loads_without_masks(small_run, tmp_path):
    """Version 5 added the samples' ``mask``; runs written before read it as 0 (nothing masked)
    and pair as before: by (input, action) alone."""
    run = _as_older_version(small_run, tmp_path / "v4", 4, {"samples": ["mask"]})
    old, new = ppo_probe.load(run), ppo_probe.load(small_run)
    assert (old.samples["mask"] == 0).all()
    pd.testing.assert_frame_equal(old.pairs, new.pairs)


def test_newer_schema_and_foreign_meta_are_refused(small_run, tmp_path):
    run = _copy(small_run, tmp_path / "copy")
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(RunFormatError, match="newer than this ppo_probe reads"):
        ppo_probe.load(run)
    (run / "meta.json").write_text("{not json")
    with pytest.raises(RunFormatError, match="meta.json is unreadable"):
        ppo_probe.load(run)


_KILLED_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    import ppo_probe
    from trainers import BanditConfig, make_actor, train_bandit
    cfg = BanditConfig(seed=2, cycles=10_000)
    torch.manual_seed(2)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with ppo_probe.watch(actor, optim, out={out!r}, flush_rows=300):
        train_bandit(cfg, {{"a": actor}}, optim)
    """
)


def test_sigkill_leaves_a_readable_run(tmp_path):
    out = tmp_path / "killed"
    script = _KILLED_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        parts = out / "samples" / "rank=0"
        while time.monotonic() < deadline:
            if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 6:
                break
            assert proc.poll() is None, "the training script ended before it was killed"
            time.sleep(0.05)
        else:
            pytest.fail("no part files appeared within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run = ppo_probe.load(out)
    assert run.meta["status"] == "running"  # it never reached its exit
    assert len(run.samples) >= 6 * 300
    report = ppo_probe.analyze(run)
    assert len(report.per_cycle) >= 2
    # complete cycles pair fully; only the one cut by the kill may lack its sampling rows
    complete = report.per_cycle.iloc[:-1]
    assert (complete["match_rate"] == 1.0).all()


def test_sigkill_at_random_points_never_leaves_a_half_written_file(tmp_path):
    """10 kills at random moments after the watch starts (seeded): every visible part file reads
    whole, temporary files are hidden (dot-named, ignored by readers), and load + analyze work
    on whatever was flushed."""
    import pyarrow.parquet as pq

    rng = random.Random(7)
    for trial in range(10):
        out = tmp_path / f"killed{trial}"
        script = _KILLED_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out))
        proc = subprocess.Popen([sys.executable, "-c", script])
        try:
            deadline = time.monotonic() + 120
            while not (out / "meta.json").exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        visible = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
        assert all(p.name == "meta.json" or (p.name.startswith("part-") and p.suffix == ".parquet")
                   for p in visible), visible
        for part in (p for p in visible if p.suffix == ".parquet"):
            pq.read_table(part)  # whole, or this raises
        run = ppo_probe.load(out)
        assert run.meta["status"] == "running"  # killed before its exit
        ppo_probe.analyze(run)  # works on whatever was flushed, even nothing


@pytest.mark.parametrize("kind", ["garbage bytes", "foreign schema"])
def test_a_foreign_or_corrupt_part_is_one_clear_error(small_run, tmp_path, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = _copy(small_run, tmp_path / "copy")
    bad = run / "samples" / "rank=0" / "part-09999.parquet"
    if kind == "garbage bytes":
        bad.write_bytes(os.urandom(4096))
    else:
        pq.write_table(pa.table({"user_id": [1, 2], "comment": ["a", "b"]}), bad)
    with pytest.raises(RunFormatError) as info:
        ppo_probe.load(run)
    assert str(bad) in str(info.value)
    result = subprocess.run([sys.executable, "-m", "ppo_probe", "check", str(run)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(bad) in result.stderr


def test_no_pickle_anywhere_in_the_format(small_run):
    import pyarrow.parquet as pq

    for path in small_run.rglob("*"):
        if path.suffix == ".parquet":
            assert path.read_bytes()[:4] == b"PAR1"
            metadata = pq.read_schema(path).metadata or {}
            assert b"pandas" not in metadata  # no pandas blob; plain Arrow types only
        elif path.is_file():
            assert path.name == "meta.json"
            json.loads(path.read_text())


def test_duckdb_reads_the_run_as_it_is(small_run):
    """The run is a plain hive-partitioned dataset: DuckDB reads every table with no ppo_probe code,
    rank as a partition column, and agrees with load()."""
    duckdb = pytest.importorskip("duckdb")
    run = ppo_probe.load(small_run)
    con = duckdb.connect()
    for table, frame in (("samples", run.samples), ("steps", run.steps), ("layers", run.layers)):
        glob = str(small_run / table / "*" / "*.parquet")
        rows, ranks = con.execute(
            f"SELECT count(*), list(DISTINCT rank) FROM read_parquet('{glob}', hive_partitioning = true)"
        ).fetchone()
        assert rows == len(frame) > 0 and [int(r) for r in ranks] == [0]
    kl = con.execute(
        "SELECT cycle, avg(grad_norm) FROM read_parquet(?, hive_partitioning = true) GROUP BY cycle ORDER BY cycle",
        [str(small_run / "steps" / "*" / "*.parquet")],
    ).fetchall()
    assert [c for c, _ in kl] == sorted(run.steps["cycle"].unique().tolist())
