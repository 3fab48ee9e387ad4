"""Read a run directory back into Arrow tables, with one clear error for every way it can be bad."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunFormatError
from .schema import SCHEMA_VERSION, TABLES

_PART = re.compile(r"^part-\d+\.parquet$")
_RANK = re.compile(r"^rank=(\d+)$")


def read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RunFormatError(f"ppo_probe run {path}: no such file or directory")
    if not path.is_dir():
        raise RunFormatError(f"ppo_probe run {path}: not a directory (a run is a directory)")
    meta_path = path / "meta.json"
    if not meta_path.exists():
        what = "the directory is empty" if not any(path.iterdir()) else "it has no meta.json"
        raise RunFormatError(f"ppo_probe run {path}: not a ppo_probe run ({what})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFormatError(f"ppo_probe run {path}: meta.json is unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "ppo_probe-run":
        raise RunFormatError(f"ppo_probe run {path}: meta.json is not a ppo_probe run's meta")
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
                pieces.append(_read_part(part, wanted, int(match.group(1))))
    if not pieces:
        empty = wanted.empty_table()
        return empty.append_column("rank", pa.array([], type=pa.int32()))
    return pa.concat_tables(pieces)


def _read_part(part: Path, schema: pa.Schema, rank: int) -> pa.Table:
    try:
        data = pq.read_table(part, columns=schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise RunFormatError(
            f"ppo_probe run: part file {part} is truncated or corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
        ) from None
    try:
        data = data.select(schema.names).cast(schema)
    except (pa.ArrowException, KeyError) as exc:
        raise RunFormatError(f"ppo_probe run: part file {part} has foreign columns ({exc})") from None
    return data.append_column("rank", pa.array([rank] * data.num_rows, type=pa.int32()))
