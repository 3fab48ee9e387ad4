"""Read a run directory back into Arrow tables, with one clear error for every way it can be bad."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunFormatError
from .schema import ADDED_COLUMNS, SCHEMA_VERSION, TABLES

_PART = re.compile(r"^part-\d+\.parquet$")
_RANK = re.compile(r"^rank=(\d+)$")


_RANK_META = re.compile(r"^meta-rank(\d+)\.json$")


def read_meta(path: Path) -> dict[str, Any]:
    """Rank 0's meta.json; with several ranks, merged with the others' ``meta-rank<R>.json``."""
    meta = _read_meta_file(path, "meta.json")
    others = sorted(
        (int(m.group(1)), f.name) for f in path.iterdir() if (m := _RANK_META.match(f.name))
    )
    if others:
        meta = merge_rank_metas({0: meta, **{r: _read_meta_file(path, name) for r, name in others}})
    return meta


def merge_rank_metas(metas: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One meta for a multi-rank run: rank 0's, with counts summed over ranks, probe errors of
    rank R > 0 named "<place> (rank R)", the status "complete" only when every rank completed, and
    each rank's own status, counts, rows and errors under ``ranks``."""
    merged = dict(metas[0])
    merged["ranks"] = {
        str(r): {k: m.get(k) for k in ("status", "counts", "cycles", "rows_written", "probe_errors")}
        for r, m in sorted(metas.items())
    }
    counts: dict[str, int | float] = {}
    errors: dict[str, Any] = {}
    for r, m in sorted(metas.items()):
        for k, v in (m.get("counts") or {}).items():
            if isinstance(v, (int, float)):
                counts[k] = counts.get(k, 0) + v
        for place, info in (m.get("probe_errors") or {}).items():
            errors[place if r == 0 else f"{place} (rank {r})"] = info
    merged["counts"] = counts
    merged["probe_errors"] = errors
    bad = [(r, m.get("status")) for r, m in sorted(metas.items()) if m.get("status") != "complete"]
    if bad:
        merged["status"] = f"{bad[0][1]} (rank {bad[0][0]})" if len(metas) > 1 else bad[0][1]
    merged["world_size"] = max(len(metas), int(merged.get("world_size") or 1))
    return merged


def _read_meta_file(path: Path, name: str) -> dict[str, Any]:
    if not path.exists():
        raise RunFormatError(f"ppo_probe run {path}: no such file or directory")
    if not path.is_dir():
        raise RunFormatError(f"ppo_probe run {path}: not a directory (a run is a directory)")
    meta_path = path / name
    if not meta_path.exists():
        what = "the directory is empty" if not any(path.iterdir()) else "it has no meta.json"
        raise RunFormatError(f"ppo_probe run {path}: not a ppo_probe run ({what})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFormatError(f"ppo_probe run {path}: {name} is unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "ppo_probe-run":
        raise RunFormatError(f"ppo_probe run {path}: {name} is not a ppo_probe run's meta")
    version = meta.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RunFormatError(
            f"ppo_probe run {path}: schema version {version!r} is newer than this ppo_probe reads "
            f"({SCHEMA_VERSION}); upgrade ppo_probe"
        )
    return meta


def read_table(path: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    """All rank partitions of ``table`` as one Arrow table with a ``rank`` column."""
    schema = TABLES[table]
    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    pieces: list[pa.Table] = []
    folder = path / table
    if folder.is_dir():
        for rank_dir in sorted(folder.iterdir()):
            match = _RANK.match(rank_dir.name)
            if not match or not rank_dir.is_dir():
                continue
            for part in sorted(rank_dir.iterdir()):
                if not _PART.match(part.name):
                    continue
                pieces.append(_read_part(part, table, wanted, int(match.group(1))))
    if not pieces:
        empty = wanted.empty_table()
        return empty.append_column("rank", pa.array([], type=pa.int32()))
    return pa.concat_tables(pieces)


def _read_part(part: Path, table: str, schema: pa.Schema, rank: int) -> pa.Table:
    try:
        file = pq.ParquetFile(part)
        present = set(file.schema_arrow.names)
        added = [n for n in schema.names if n not in present and (table, n) in ADDED_COLUMNS]
        data = file.read(columns=[n for n in schema.names if n not in added])
    except (pa.ArrowException, OSError) as exc:
        raise RunFormatError(
            f"ppo_probe run: part file {part} is truncated or corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
        ) from None
    for name in added:  # a part written before the column existed (older schema version)
        field = schema.field(name)
        data = data.append_column(field, pa.array([ADDED_COLUMNS[table, name]] * data.num_rows, field.type))
    try:
        data = data.select(schema.names).cast(schema)
    except (pa.ArrowException, KeyError) as exc:
        raise RunFormatError(f"ppo_probe run: part file {part} has foreign columns ({exc})") from None
    return data.append_column("rank", pa.array([rank] * data.num_rows, type=pa.int32()))
