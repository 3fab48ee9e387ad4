"""``load``: a run directory as pandas DataFrames, with update rows paired to sampling rows."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from ..storage.reader import read_meta, read_table
from ..storage.schema import TABLES
from .pairing import build_pairs

_NULLABLE = {
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def _frame(table: pa.Table) -> pd.DataFrame:
    # Nullable integer dtypes keep int64 fingerprints exact (a float64 column would round them).
    return table.to_pandas(types_mapper=_NULLABLE.get)


class Run:
    """A run read back from disk. Tables load on first access.

    Attributes:
        path: the run directory.
        meta: the parsed meta.json (settings, versions, optimizers, actor parameters, counts).
        samples: one row per log-prob row (``phase`` is 'sampling', 'update' or 'eval'); the kept
            logits are left out here (``table('samples')`` has them).
        dists, steps, layers: one row per Categorical, per optimizer step, per step and parameter.
        pairs: one row per update-phase log-prob row with its sampling row, ratio, ``adv_eff``...;
            ``paired`` is False for rows whose (input, action) was never sampled in that cycle.
            Padding the loss leaves out (a recurrent trainer's masked rows) is not in it:
            ``padding_rows`` counts it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"ppo_probe: a run is a directory path (str or os.PathLike) or a loaded "
                            f"Run; got {type(path).__name__}")
        self.path = Path(path)
        self.meta: dict[str, Any] = read_meta(self.path)
        # Read every table now so that a corrupt part file fails at load(), not later.
        self._tables = {name: read_table(self.path, name) for name in TABLES}

    def table(self, name: str) -> pa.Table:
        """The raw Arrow table (all ranks, with a ``rank`` column)."""
        return self._tables[name]

    @cached_property
    def samples(self) -> pd.DataFrame:
        frame = _frame(self._tables["samples"].drop_columns(["logits"]))
        frame.insert(0, "row", range(len(frame)))
        return frame

    @cached_property
    def dists(self) -> pd.DataFrame:
        return _frame(self._tables["dists"])

    @cached_property
    def steps(self) -> pd.DataFrame:
        return _frame(self._tables["steps"])

    @cached_property
    def layers(self) -> pd.DataFrame:
        return _frame(self._tables["layers"])

    @cached_property
    def _pairs_and_padding(self) -> tuple[pd.DataFrame, int]:
        column = self._tables["samples"].column("logits")
        logits = column.combine_chunks() if column.num_chunks else None
        return build_pairs(self.samples, self.steps, logits)

    @property
    def pairs(self) -> pd.DataFrame:
        return self._pairs_and_padding[0]

    @property
    def padding_rows(self) -> int:
        """Update rows left out of ``pairs`` as padding the loss masks out: a recurrent trainer's
        filler rows that bring sequences to one length (see ``pairing.padding_rows``)."""
        return self._pairs_and_padding[1]

    @property
    def paired_fraction(self) -> float:
        """Fraction of update rows that matched a sampled (input, action); NaN with no update rows."""
        pairs = self.pairs
        return float(pairs["paired"].mean()) if len(pairs) else float("nan")

    def __repr__(self) -> str:
        counts = {name: self._tables[name].num_rows for name in TABLES}
        return f"Run({str(self.path)!r}, {counts})"


def load(path: str | os.PathLike[str]) -> Run:
    """Read a run directory written by :func:`ppo_probe.watch`.

    Raises:
        RunFormatError: the path is missing, empty, not a run, of a newer schema, or has a
            truncated or corrupt part file; the message names the path and what is wrong.
    """
    return Run(path)
