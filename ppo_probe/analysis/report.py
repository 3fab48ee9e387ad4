"""``analyze``: metrics, diagnostics and a recommendation for a run."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import build_thresholds, find_pyproject, read_table
from .diagnostics import IDS, Context, degraded, run_checks
from .metrics import per_cycle, per_step
from .pairing import joint_rows, update_dists
from .recommend import recommend
from .run import Run, load

DIAGNOSTIC_COLUMNS = ["id", "severity", "title", "evidence", "fix", "first_step", "cycles"]
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
DEFAULT_CLIP_COEF = 0.2

_SUMMARY_COLUMNS = [
    "cycle", "n_steps", "n_epochs", "match_rate", "kl_k3", "kl_k1_end", "kl_exact_end",
    "clip_fraction", "ratio_mean", "entropy_norm_mean", "adv_eff_std_mean", "grad_norm_mean",
]  # fmt: skip


@dataclass
class Report:
    """What :func:`analyze` returns.

    Attributes:
        per_step: one row per optimizer step (metrics over the rows whose gradient fed it).
        per_cycle: one row per cycle (``kl_k3`` and ``clip_fraction`` as SB3 logs them).
        diagnostics: id, severity, title, evidence, fix, first_step, cycles; errors first.
        recommendation: lr, lr_multiplier, adv_scale, rationale (None without paired data).
        settings: the thresholds in force and where clip_coef came from.
    """

    run: Run
    per_step: pd.DataFrame
    per_cycle: pd.DataFrame
    diagnostics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DIAGNOSTIC_COLUMNS))
    recommendation: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no diagnostic of severity 'error' was raised. A run that gave the checks
        nothing to judge is ok too: see :attr:`nothing_to_check` (``ppo-probe check`` exits 2 on
        one)."""
        return not (self.diagnostics["severity"] == "error").any()

    @property
    def nothing_to_check(self) -> str | None:
        """Why the run holds no update-phase log-prob row, the facts most checks stand on (a
        watch around no training, a policy without a Categorical, update log-probs computed by
        hand); None when it holds some."""
        return nothing_to_check(self.run)

    @property
    def ids(self) -> list[str]:
        return list(self.diagnostics["id"])

    @property
    def paired_fraction(self) -> float:
        return self.run.paired_fraction

    @property
    def per_rank(self) -> pd.DataFrame:
        """One row per rank (torch.distributed): status, optimizer steps, cycles, update rows,
        paired fraction and median per-cycle KL, so that a rank that disagrees stands out."""
        return per_rank_table(self.run, self.per_cycle)

    def summary(self) -> str:
        pairs = self.run.pairs
        lines = [f"ppo_probe report: {self.run.path}"]
        if len(pairs):
            lines.append(f"  cycles {len(self.per_cycle)}, optimizer steps {len(self.per_step)}, "
                         f"update rows {len(pairs)}, paired {int(pairs['paired'].sum())} "
                         f"({self.paired_fraction:.1%})")
            if self.run.padding_rows:
                lines[-1] += (f"; {self.run.padding_rows} padding rows the loss masks out (no sample, "
                              "zero gradient) left out")
        else:
            lines.append(f"  nothing to check: {self.nothing_to_check}")
        schedule = schedule_text(self.run.meta)
        if schedule:
            lines.append(f"  {schedule}")
        sweep = (self.run.meta.get("settings") or {}).get("lr_sweep")
        if sweep:
            lines.append(f"  an lr sweep run: each cycle's lr was x{sweep:g} the one before (watch(lr_sweep=...)); "
                         "the KL band warnings are off and the recommendation reads the sweep")
        ranks = self.per_rank
        if len(ranks) > 1:
            with pd.option_context("display.width", 200, "display.max_columns", 30):
                lines.append("per rank:")
                lines.append(ranks.to_string(index=False, float_format=_fmt))
        if not self.per_cycle.empty:
            cols = (["rank"] if len(ranks) > 1 else []) + [c for c in _SUMMARY_COLUMNS if c in self.per_cycle]
            with pd.option_context("display.width", 200, "display.max_columns", 30):
                lines.append(self.per_cycle[cols].to_string(index=False, float_format=_fmt))
        if self.diagnostics.empty:
            lines.append("diagnostics: none")
        else:
            lines.append(f"diagnostics: {len(self.diagnostics)}")
            for d in self.diagnostics.itertuples():
                lines.append(f"  [{d.severity}] {d.id}: {d.title}")
                lines.append(f"      evidence: {d.evidence}")
                lines.append(f"      fix: {d.fix}")
        if self.recommendation:
            r = self.recommendation
            lr = f"{r['lr']:.3g}" if r.get("lr") is not None else "n/a"
            lines.append(f"recommendation: lr {lr} (x{r['lr_multiplier']:.3g}), advantage scale "
                         f"x{r['adv_scale']:.3g}" if r.get("adv_scale") else f"recommendation: lr {lr}")
            lines.append(f"  {r['rationale']}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-cycle table, diagnostics, recommendation, settings."""
        def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return frame.astype(object).where(frame.notna(), None).to_dict("records")

        payload = {
            "path": str(self.run.path),
            "ok": self.ok,
            "nothing_to_check": self.nothing_to_check,
            "paired_fraction": self.paired_fraction,
            "padding_rows": self.run.padding_rows,
            "per_cycle": records(self.per_cycle),
            "per_rank": records(self.per_rank),
            "diagnostics": records(self.diagnostics),
            "recommendation": self.recommendation,
            "settings": self.settings,
        }
        return json.loads(json.dumps(payload, default=_json_default))

    def to_tensorboard(self, writer: Any, *, prefix: str = "ppo_probe", step_offset: int = 0) -> int:
        """Per-cycle metrics as scalars (global step = cycle + ``step_offset``), diagnostics and
        the recommendation as text, to a ``torch.utils.tensorboard.SummaryWriter``; returns the
        number of scalars written."""
        from ..integrations.tensorboard import write_tensorboard

        return write_tensorboard(self, writer, prefix=prefix, step_offset=step_offset)

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Write a self-contained HTML report (plots embedded, no JavaScript; needs matplotlib)."""
        from ..html import write_html

        return write_html(self, path)


def schedule_text(meta: dict[str, Any]) -> str | None:
    """'recorded 11 of 39 cycles (...)' when the watch's schedule skipped cycles, else None."""
    total, recorded = meta.get("cycles"), meta.get("recorded_cycles")
    if not isinstance(total, int) or not isinstance(recorded, int) or recorded >= total:
        return None
    settings = meta.get("settings") or {}
    first, every = settings.get("first_cycles"), settings.get("every")
    return (f"recorded {recorded} of {total} cycles (watch schedule: the first {first}, then every "
            f"{_ordinal(every)}; every=1 records all)")


def nothing_to_check(run: Run) -> str | None:
    """See :attr:`Report.nothing_to_check`: the likeliest reason, read from what was recorded."""
    samples = run.samples
    if (samples["phase"] == "update").any():
        return None
    # (the schedule always records cycle 0, so it alone never leaves a run without update rows)
    dists, steps = run.dists, run.steps
    if (run.meta.get("counts") or {}).get("compiled_forwards_seen"):
        return (f"the watched modules ran under torch.compile and {len(dists)} Categoricals "
                "were seen: a Categorical that Dynamo traced into its graph past the probe's "
                "patch is not recorded; watch the same trainer without torch.compile")
    grad_dists = int(update_dists(dists).sum()) if len(dists) else 0
    if dists.empty and steps.empty:
        return ("the watch saw no torch.distributions.Categorical and no optimizer step: training "
                "ran outside the with-block (or in another process), or did not run")
    if dists.empty:
        return (f"{len(steps)} optimizer steps but no torch.distributions.Categorical: ppo_probe "
                "checks policies that build a Categorical (or a subclass) when sampling and when "
                "updating")
    if grad_dists == 0:
        return (f"{len(dists)} Categoricals, all built with grad disabled or sampled from, and "
                f"{len(steps)} optimizer steps: the update does not build a Categorical (log-probs "
                "computed by hand, e.g. log_softmax and gather, are not seen), or no update ran")
    return (f"{grad_dists} Categoricals built with grad enabled, but log_prob() was never called "
            "on them: the update's log-probs come from elsewhere")


def _ordinal(n: Any) -> str:
    if not isinstance(n, int):
        return f"{n}th"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def per_rank_table(run: Run, cycles: pd.DataFrame) -> pd.DataFrame:
    pairs, steps = run.pairs, run.steps
    ranks = sorted(set(steps["rank"].dropna().astype(int)) | set(pairs["rank"].dropna().astype(int))
                   | {int(r) for r in (run.meta.get("ranks") or {})})
    statuses = {int(r): (m or {}).get("status") for r, m in (run.meta.get("ranks") or {}).items()}
    rows = []
    for r in ranks:
        mine = pairs[pairs["rank"] == r]
        kl = cycles.loc[cycles["rank"] == r, "kl_k3"] if len(cycles) else pd.Series(dtype=float)
        rows.append({
            "rank": r,
            "status": statuses.get(r, run.meta.get("status")),
            "steps": int((steps["rank"] == r).sum()),
            "cycles": int(mine["cycle"].nunique()),
            "update_rows": len(mine),
            "paired_fraction": float(mine["paired"].mean()) if len(mine) else float("nan"),
            "kl_k3_median": float(kl.median()) if kl.notna().any() else float("nan"),
        })
    return pd.DataFrame(rows, columns=["rank", "status", "steps", "cycles", "update_rows",
                                       "paired_fraction", "kl_k3_median"])


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, (tuple, set, np.ndarray)):
        return list(value)
    return str(value)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


_RATIO_ROUNDING = 1e-6  # |r - 1| under this is float32 rounding of r = 1 (its ULP is 1.2e-7)


def infer_clip_coef(pairs: pd.DataFrame) -> float | None:
    """PPO's eps from where the clipped branch is active (zero log-prob gradient).

    Clipped rows have |r - 1| > eps; unclipped rows moving in the direction the clip would stop
    (r > 1 with a positive advantage, r < 1 with a negative one) have |r - 1| <= eps. The simplest
    decimal in that bracket is returned; None when it cannot be bracketed.
    """
    rows = pairs[pairs["paired"] & pairs["grad_logp"].notna()]
    grad = rows["grad_logp"].astype(float)
    clipped = rows[grad == 0]
    if len(clipped) < 5 or len(clipped) > 0.9 * len(rows):
        return None
    dev = (rows["ratio"].astype(float) - 1.0)
    toward = rows[(grad != 0) & (np.sign(rows["adv_eff"].astype(float)) * dev > 0)]
    lo = float((toward["ratio"].astype(float) - 1).abs().max()) if len(toward) else 0.0
    # A clipped row within float32 rounding of r = 1 brackets nothing: the trainer's exp may have
    # put its ratio an ULP off 1 where NumPy's reads exactly 1 (SB3 at eps = 0, the last cycle of
    # a clip_range schedule, read no eps on torch 2.2 and 2.14 for that)
    away = (clipped["ratio"].astype(float) - 1).abs()
    away = away[away >= _RATIO_ROUNDING]
    if away.empty:
        return None
    hi = float(away.min())
    if not lo < hi:
        return None
    for decimals in (1, 2, 3, 4):
        candidate = round((lo + hi) / 2, decimals)
        if lo <= candidate < hi:
            return candidate
    return (lo + hi) / 2


def infer_clip_schedule(pairs: pd.DataFrame) -> pd.Series | None:
    """eps by cycle, inferred as :func:`infer_clip_coef` does within each cycle, when the run's
    rows bracket no single eps but at least two cycles each bracket a different one (SB3's
    ``clip_range`` schedule); a cycle bracketing none takes its nearest cycle's. None otherwise."""
    rows = pairs.loc[pairs["paired"] & pairs["grad_logp"].notna(), ["cycle", "paired", "grad_logp", "ratio", "adv_eff"]]
    if (rows["grad_logp"].astype(float) == 0).sum() < 10:  # fewer than 2 cycles' worth of clipped rows
        return None
    found = {int(c): e for c, group in rows.groupby("cycle") if (e := infer_clip_coef(group)) is not None}
    if len(found) < 2 or max(found.values()) < 1.2 * min(found.values()):
        return None
    cycles = sorted(int(c) for c in pairs["cycle"].dropna().unique())
    known = np.array(sorted(found))
    nearest = [found[int(known[int(np.argmin(np.abs(known - c)))])] for c in cycles]
    return pd.Series(nearest, index=cycles, dtype=float)


def _previous_point(
    previous: Report | Run | str | os.PathLike[str] | None,
    target_kl: float | None,
    clip_coef: float | None,
    pyproject: str | os.PathLike[str] | None,
    thresholds: dict[str, Any],
) -> tuple[float, float] | None:
    """(lr, median per-cycle KL) of ``previous``, analyzed with the same settings; None when it
    has no KL or no lr."""
    if previous is None:
        return None
    if not isinstance(previous, Report):
        previous = analyze(previous, target_kl=target_kl, clip_coef=clip_coef, pyproject=pyproject, **thresholds)
    rec = previous.recommendation or {}
    lr, kl = rec.get("lr_of_run"), rec.get("kl_per_cycle_median")
    return (float(lr), float(kl)) if lr is not None and kl is not None else None


def analyze(
    run: Run | str | os.PathLike[str],
    *,
    target_kl: float | None = None,
    clip_coef: float | None = None,
    ignore: list[str] | tuple[str, ...] | None = None,
    severities: dict[str, str] | None = None,
    pyproject: str | os.PathLike[str] | None = None,
    previous: Report | Run | str | os.PathLike[str] | None = None,
    **thresholds: Any,
) -> Report:
    """Metrics, diagnostics and a recommendation for a run (a path or a loaded :class:`Run`).

    Settings come from the defaults (target KL 0.02, KL band 0.01-0.03, clip fraction band
    0.05-0.30, paired fraction >= 0.9), then ``[tool.ppo_probe]`` of the nearest pyproject.toml
    (or ``pyproject``), then these arguments.

    Args:
        run: a run directory or the result of :func:`ppo_probe.load`.
        target_kl: the per-cycle KL the trainer should reach.
        clip_coef: PPO's eps for ``clip_fraction``; None infers it from where the clipped branch
            is active (falling back to 0.2).
        ignore: diagnostic ids not to report.
        severities: per-id severity overrides, e.g. ``{"update-too-small": "info"}``.
        pyproject: the pyproject.toml to read instead of searching from the working directory.
        previous: an earlier run of the same trainer at another learning rate (its directory,
            :class:`Run` or :class:`Report`): the recommendation then reads the KL's slope in
            the lr from the two runs' (lr, median per-cycle KL) instead of assuming it. The way
            to use the recommendation when one rerun did not land in the band.
        **thresholds: any other field of :class:`ppo_probe.analysis.config.Thresholds`.
    """
    if not isinstance(run, Run):
        run = load(run)
    source = Path(pyproject) if pyproject is not None else find_pyproject()
    overrides = dict(thresholds, target_kl=target_kl, clip_coef=clip_coef, ignore=ignore, severities=severities)
    t = build_thresholds(read_table(source), overrides, set(IDS))
    pairs = run.pairs
    joint = joint_rows(pairs)  # per sample of the whole policy (multi-head actions summed)
    if t.clip_coef is not None:
        eps, eps_source = t.clip_coef, "setting"
    else:
        inferred = infer_clip_coef(joint)
        eps, eps_source = (inferred, "inferred") if inferred else (DEFAULT_CLIP_COEF, "default")
    schedule = infer_clip_schedule(joint) if eps_source == "default" else None
    if schedule is not None:
        eps, eps_source = float(schedule.median()), "inferred per cycle (a clip schedule)"
    steps_table = per_step(joint, run.dists, run.steps, schedule if schedule is not None else eps)
    cycles = per_cycle(steps_table, joint, schedule if schedule is not None else eps)
    sampling = run.samples[run.samples["phase"] == "sampling"]
    keys = sampling[["rank", "cycle"]].fillna({"rank": 0}).drop_duplicates()
    sampled = frozenset(zip(keys["rank"].astype(int), keys["cycle"].astype(int)))
    ctx = Context(run.meta, pairs, run.dists, run.steps, run.layers, steps_table, cycles, t, eps,
                  sampled_cycles=sampled)
    findings = run_checks(ctx)
    # a bad previous run is the caller's error (raised); only the computation itself is guarded
    point = _previous_point(previous, target_kl, clip_coef, pyproject, thresholds)
    try:
        recommendation = recommend(cycles, steps_table, run.steps, run.meta, t, eps, point)
    except Exception as exc:  # noqa: BLE001 - as a broken check: noted, the report still made
        recommendation = None
        findings = degraded(findings, t, f"the recommendation failed ({type(exc).__name__}: {exc})")
    diagnostics = pd.DataFrame(
        [{**f.__dict__, "cycles": list(f.cycles)} for f in findings], columns=DIAGNOSTIC_COLUMNS
    )
    if len(diagnostics):
        order = diagnostics["severity"].map(_SEVERITY_ORDER)
        diagnostics = diagnostics.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)
    settings = {k: v for k, v in t.__dict__.items()}
    settings.update(clip_coef=eps, clip_coef_source=eps_source, pyproject=str(source) if source else None,
                    clip_coef_per_cycle=None if schedule is None else {int(c): float(e) for c, e in schedule.items()})
    return Report(
        run=run,
        per_step=steps_table,
        per_cycle=cycles,
        diagnostics=diagnostics,
        recommendation=recommendation,
        settings=settings,
    )
