"""``analyze``: per-step and per-cycle metrics of a run, and (next) its diagnostics."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .metrics import per_cycle, per_step
from .run import Run, load

DIAGNOSTIC_COLUMNS = ["id", "severity", "title", "evidence", "fix", "first_step", "cycles"]

_SUMMARY_COLUMNS = [
    "cycle", "n_steps", "n_epochs", "match_rate", "kl_k3", "kl_k1_end", "kl_exact_end",
    "clip_fraction", "ratio_mean", "entropy_norm_mean", "adv_eff_std_mean", "grad_norm_mean",
]  # fmt: skip


@dataclass
class Report:
    """What ``analyze`` returns. ``diagnostics`` stays empty until the analyzer lands its catalog."""

    run: Run
    per_step: pd.DataFrame
    per_cycle: pd.DataFrame
    diagnostics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DIAGNOSTIC_COLUMNS))
    recommendation: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no diagnostic of severity 'error' was raised."""
        return not (self.diagnostics["severity"] == "error").any()

    @property
    def paired_fraction(self) -> float:
        return self.run.paired_fraction

    def summary(self) -> str:
        pairs = self.run.pairs
        lines = [
            f"ppo_probe report: {self.run.path}",
            f"  cycles {len(self.per_cycle)}, optimizer steps {len(self.per_step)}, "
            f"update rows {len(pairs)}, paired {int(pairs['paired'].sum())} "
            f"({self.paired_fraction:.1%})" if len(pairs) else f"  no update rows recorded",
        ]
        errors = self.run.meta.get("probe_errors") or {}
        for place, info in errors.items():
            lines.append(f"  probe failed in {place} x{info.get('count')}: {info.get('message')}")
        if not self.per_cycle.empty:
            cols = [c for c in _SUMMARY_COLUMNS if c in self.per_cycle]
            with pd.option_context("display.width", 200, "display.max_columns", 30):
                lines.append(self.per_cycle[cols].to_string(index=False, float_format=_fmt))
        lines.append(f"  diagnostics: {len(self.diagnostics)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-cycle table, diagnostics, recommendation, settings."""
        return json.loads(
            json.dumps(
                {
                    "path": str(self.run.path),
                    "ok": self.ok,
                    "paired_fraction": self.paired_fraction,
                    "per_cycle": self.per_cycle.astype(object).where(self.per_cycle.notna(), None).to_dict("records"),
                    "diagnostics": self.diagnostics.to_dict("records"),
                    "recommendation": self.recommendation,
                    "settings": self.settings,
                },
                default=str,
            )
        )


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def analyze(
    run: Run | str | os.PathLike[str],
    *,
    target_kl: float = 0.02,
    clip_coef: float = 0.2,
) -> Report:
    """Per-step and per-cycle metrics of a run (a path or a loaded :class:`Run`).

    Args:
        run: a run directory or the result of :func:`ppo_probe.load`.
        target_kl: the per-cycle KL the trainer aims at (used by diagnostics and recommendation).
        clip_coef: the PPO clip epsilon for ``clip_fraction`` (``|r - 1| > clip_coef``).
    """
    if not isinstance(run, Run):
        run = load(run)
    if not (clip_coef > 0):
        raise ValueError(f"clip_coef must be > 0, got {clip_coef}")
    if not (target_kl > 0):
        raise ValueError(f"target_kl must be > 0, got {target_kl}")
    steps_table = per_step(run.pairs, run.dists, run.steps, clip_coef)
    cycles = per_cycle(steps_table, run.pairs)
    return Report(
        run=run,
        per_step=steps_table,
        per_cycle=cycles,
        settings={"target_kl": target_kl, "clip_coef": clip_coef},
    )
