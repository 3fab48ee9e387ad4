"""Per-cycle metrics, diagnostics and the recommendation to a TensorBoard ``SummaryWriter``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..analysis.report import Report

#: per_cycle columns written as scalars (the rest are counts and bookkeeping)
SCALARS = (
    "kl_k3", "kl_exact_end", "kl_k1_end", "clip_fraction", "clip_fraction_grad_mean",
    "entropy_norm_mean", "adv_eff_std_mean", "adv_eff_mean", "ratio_mean", "grad_norm_mean",
    "delta_norm_mean", "match_rate", "lr",
)  # fmt: skip


def write_tensorboard(report: Report, writer: Any, *, prefix: str = "ppo_probe", step_offset: int = 0) -> int:
    """Write ``report`` to ``writer`` (a ``torch.utils.tensorboard.SummaryWriter`` or anything with
    ``add_scalar`` / ``add_text``): one scalar per per-cycle metric at global step ``cycle +
    step_offset`` (rank 0's cycles; other ranks under ``{prefix}/rank{r}``), the diagnostics as a
    markdown table and the recommendation's rationale as text. Returns the number of scalars."""
    written = 0
    for _, row in report.per_cycle.iterrows():
        rank = int(row["rank"])
        tag = prefix if rank == 0 else f"{prefix}/rank{rank}"
        for column in SCALARS:
            try:
                value = float(row.get(column))
            except (TypeError, ValueError):
                continue
            if math.isnan(value):
                continue
            writer.add_scalar(f"{tag}/{column}", value, int(row["cycle"]) + step_offset)
            written += 1
    d = report.diagnostics
    lines = ["| severity | id | evidence | fix |", "|---|---|---|---|"]
    lines += [f"| {r.severity} | {r.id} | {_cell(r.evidence)} | {_cell(r.fix)} |" for r in d.itertuples()]
    writer.add_text(f"{prefix}/diagnostics", "\n".join(lines) if len(d) else "no findings", step_offset)
    rec = report.recommendation
    if rec:
        writer.add_text(f"{prefix}/recommendation", f"lr {rec['lr']:.4g} (x {rec['lr_multiplier']:.3g}): "
                        f"{rec['rationale']}", step_offset)
    return written


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
