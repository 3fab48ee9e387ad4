"""Per-step and per-cycle metrics (DESIGN section 3): every aggregation of the report in one place."""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import pandas as pd

from .formulas import clipped_by_ratio
from .pairing import resolve_steps, update_dists

STEP_KEY = ["rank", "cycle", "step"]
_STEP_COLUMNS = [
    "rank", "cycle", "step", "epoch", "rows", "paired_rows", "match_rate", "kl_k1", "kl_k2",
    "kl_k3", "kl_exact", "clip_fraction", "clip_fraction_grad", "ratio_mean",
    "max_abs_log_ratio", "entropy", "entropy_norm", "adv_eff_mean", "adv_eff_std",
    "grad_norm", "delta_norm", "lr", "optimizer_class",
]  # fmt: skip


ClipCoef: TypeAlias = "float | pd.Series"  # one eps, or eps by cycle (a clip schedule)


def _clipped(rows: pd.DataFrame, clip_coef: ClipCoef) -> np.ndarray:
    eps = clip_coef
    if isinstance(clip_coef, pd.Series):
        eps = rows["cycle"].astype("int64").map(clip_coef).astype(float).to_numpy()
    return clipped_by_ratio(rows["ratio"].to_numpy(np.float64), eps)


def per_step(pairs: pd.DataFrame, dists: pd.DataFrame, steps: pd.DataFrame, clip_coef: ClipCoef) -> pd.DataFrame:
    """One row per optimizer step, over the update rows whose gradient fed that step."""
    rows = pairs[pairs["step"].notna()].copy()
    if rows.empty:
        return pd.DataFrame(columns=_STEP_COLUMNS)
    rows["step"] = rows["step"].astype("int64")
    rows["clip_eps"] = _clipped(rows, clip_coef)
    rows["k1"] = -rows["log_ratio"]
    rows["k2"] = 0.5 * rows["log_ratio"] ** 2
    rows["abs_log_ratio"] = rows["log_ratio"].abs()
    rows["clip_grad"] = rows["clipped"].astype("float64")  # NaN where no gradient arrived
    rows["paired_f"] = rows["paired"].astype("float64")
    paired = rows[rows["paired"]]

    counts = rows.groupby(STEP_KEY).agg(rows=("paired_f", "size"), match_rate=("paired_f", "mean"))
    stats = paired.groupby(STEP_KEY).agg(
        epoch=("epoch", "max"),
        paired_rows=("k1", "size"),
        kl_k1=("k1", "mean"),
        kl_k2=("k2", "mean"),
        kl_k3=("k3", "mean"),
        kl_exact=("kl_exact", "mean"),
        clip_fraction=("clip_eps", "mean"),
        clip_fraction_grad=("clip_grad", "mean"),
        ratio_mean=("ratio", "mean"),
        max_abs_log_ratio=("abs_log_ratio", "max"),
        adv_eff_mean=("adv_eff", "mean"),
        adv_eff_std=("adv_eff", "std"),
    )
    table = counts.join(stats, how="left")
    table = table.join(_entropy_per_step(dists, steps, pairs), how="left")
    step_info = steps.set_index(["rank", "step"])[["lr", "grad_norm", "delta_norm", "optimizer_class"]]
    table = table.reset_index().merge(step_info, left_on=["rank", "step"], right_index=True, how="left")
    table = table[_STEP_COLUMNS].sort_values(["rank", "step"]).reset_index(drop=True)
    table["epoch"] = table["epoch"].astype("Int64")
    table["paired_rows"] = table["paired_rows"].fillna(0).astype("int64")
    return table


def _entropy_per_step(dists: pd.DataFrame, steps: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    update = dists[update_dists(dists, pairs)].copy()
    if update.empty:
        return pd.DataFrame(columns=["entropy", "entropy_norm"], index=pd.MultiIndex.from_tuples([], names=STEP_KEY))
    update["step"] = resolve_steps(update, steps)
    update = update[update["step"].notna()]
    update["step"] = update["step"].astype("int64")
    weight = update["rows"].astype("float64")
    for column in ("entropy", "entropy_norm"):  # row-weighted means over defined values only
        value = update[column].astype("float64")
        update[f"w_{column}"] = (value * weight).fillna(0.0)
        update[f"n_{column}"] = weight.where(value.notna(), 0.0)
    sums = update.groupby(STEP_KEY)[["w_entropy", "n_entropy", "w_entropy_norm", "n_entropy_norm"]].sum()
    return pd.DataFrame(
        {
            "entropy": sums["w_entropy"] / sums["n_entropy"].where(sums["n_entropy"] > 0),
            "entropy_norm": sums["w_entropy_norm"] / sums["n_entropy_norm"].where(sums["n_entropy_norm"] > 0),
        }
    )


_MINIBATCH_STATS = ["rank", "cycle", "epoch", "kl_k1", "kl_k2", "kl_k3", "kl_exact", "clip_fraction"]


def untaken_minibatches(pairs: pd.DataFrame, clip_coef: ClipCoef | None) -> pd.DataFrame:
    """Per log_prob call whose rows reached no optimizer step (a KL guard's last minibatch: SB3's
    target_kl computes the minibatch's log-probs and approx_kl, then breaks before its step), the
    statistics a step's rows give: one row each, keyed by rank, cycle and epoch."""
    rows = pairs[pairs["step"].isna() & pairs["paired"]]
    if rows.empty or clip_coef is None:
        return pd.DataFrame(columns=_MINIBATCH_STATS)
    rows = rows.assign(
        kl_k1=-rows["log_ratio"],
        kl_k2=0.5 * rows["log_ratio"] ** 2,
        clip_fraction=_clipped(rows, clip_coef),
    )
    return rows.groupby(["rank", "cycle", "call_id"]).agg(
        epoch=("epoch", "max"), kl_k1=("kl_k1", "mean"), kl_k2=("kl_k2", "mean"), kl_k3=("k3", "mean"),
        kl_exact=("kl_exact", "mean"), clip_fraction=("clip_fraction", "mean"),
    ).reset_index()[_MINIBATCH_STATS]


def per_cycle(step_table: pd.DataFrame, pairs: pd.DataFrame, clip_coef: ClipCoef | None = None) -> pd.DataFrame:
    """One row per cycle. ``kl_k3`` is the mean per-step k3 over the cycle's last epoch and
    ``clip_fraction`` the mean per-step ``|r-1| > eps`` over all its steps: exactly SB3's
    ``train/approx_kl`` and ``train/clip_fraction``. With ``clip_coef`` given, a minibatch whose
    log-probs reached no step (see :func:`untaken_minibatches`) counts as a step in those two
    and the other ``_end`` columns, as SB3 counts it. Other columns name their aggregation:
    ``_end`` = mean over last-epoch steps, ``_mean`` = mean over all steps."""
    if step_table.empty:
        return pd.DataFrame(columns=_CYCLE_COLUMNS)
    s = step_table.copy()
    first_step = s.groupby(["rank", "cycle"])["step"].transform("min")
    s["first_abs"] = s["max_abs_log_ratio"].where(s["step"] == first_step)
    untaken = untaken_minibatches(pairs, clip_coef)
    minibatches = pd.concat([s[_MINIBATCH_STATS], untaken], ignore_index=True) if len(untaken) else s[_MINIBATCH_STATS]
    minibatches = minibatches.astype({"kl_k1": float, "kl_k2": float, "kl_k3": float, "kl_exact": float,
                                      "clip_fraction": float})
    last_epoch = minibatches.groupby(["rank", "cycle"])["epoch"].transform("max")
    end = minibatches[(minibatches["epoch"] == last_epoch).fillna(False).astype(bool)].groupby(["rank", "cycle"]).agg(
        kl_k3=("kl_k3", "mean"),
        kl_k1_end=("kl_k1", "mean"),
        kl_k2_end=("kl_k2", "mean"),
        kl_exact_end=("kl_exact", "mean"),
    )
    clip = minibatches.groupby(["rank", "cycle"]).agg(clip_fraction=("clip_fraction", "mean"))
    every = s.groupby(["rank", "cycle"]).agg(
        n_steps=("step", "size"),
        n_epochs=("epoch", lambda e: int(e.max()) + 1 if e.notna().any() else 0),
        rows=("rows", "sum"),
        paired_rows=("paired_rows", "sum"),
        clip_fraction_grad_mean=("clip_fraction_grad", "mean"),
        kl_k3_mean=("kl_k3", "mean"),
        first_step_max_abs_log_ratio=("first_abs", "max"),
        entropy_mean=("entropy", "mean"),
        entropy_norm_mean=("entropy_norm", "mean"),
        adv_eff_std_mean=("adv_eff_std", "mean"),
        grad_norm_mean=("grad_norm", "mean"),
        delta_norm_mean=("delta_norm", "mean"),
        lr=("lr", "first"),
    )
    paired = pairs[pairs["paired"]]
    ratio = paired.groupby(["rank", "cycle"]).agg(
        ratio_mean=("ratio", "mean"), adv_eff_mean=("adv_eff", "mean")
    )
    table = every.join(end, how="left").join(clip, how="left").join(ratio, how="left").reset_index()
    table["match_rate"] = table["paired_rows"] / table["rows"].where(table["rows"] > 0)
    return table[_CYCLE_COLUMNS].sort_values(["rank", "cycle"]).reset_index(drop=True)


_CYCLE_COLUMNS = [
    "rank", "cycle", "n_steps", "n_epochs", "rows", "paired_rows", "match_rate", "kl_k3",
    "clip_fraction", "kl_k1_end", "kl_k2_end", "kl_exact_end", "kl_k3_mean",
    "clip_fraction_grad_mean", "ratio_mean", "first_step_max_abs_log_ratio", "entropy_mean",
    "entropy_norm_mean", "adv_eff_mean", "adv_eff_std_mean", "grad_norm_mean",
    "delta_norm_mean", "lr",
]  # fmt: skip
