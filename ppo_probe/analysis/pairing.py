"""Pair update-phase log-prob rows with the sampling rows of the same cycle (DESIGN section 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from .formulas import MASKED_LOGIT, ratio_terms

PAIR_KEY = ["rank", "cycle", "actor", "head", "fingerprint", "action"]


def resolve_steps(frame: pd.DataFrame, steps: pd.DataFrame) -> pd.Series:
    """The optimizer step each row's gradient fed: the first step of an optimizer holding actor
    parameters (any step when none does) at or after the row's ``seq`` within the same rank and
    cycle; NA when the cycle ends first (e.g. a KL guard broke the loop after computing the loss)."""
    out = np.full(len(frame), -1, dtype=np.int64)
    holds = steps["holds_actor"].fillna(True).astype(bool)
    for rank, rows in frame.groupby("rank", sort=False).indices.items():
        mine = steps["rank"] == rank
        # When no optimizer holds the actor (the actor-not-in-optimizer bug), the rows still fed
        # whatever steps ran: resolve them to those rather than to nothing.
        own = steps[mine & holds] if (mine & holds).any() else steps[mine]
        own = own.sort_values("step")
        if own.empty:
            continue
        step_ids = own["step"].to_numpy(np.int64)
        step_cycles = own["cycle"].to_numpy(np.int64)
        seq = frame["seq"].to_numpy(np.int64)[rows]
        cycle = frame["cycle"].to_numpy(np.int64)[rows]
        pos = np.searchsorted(step_ids, seq, side="left")
        inside = pos < len(step_ids)
        found = np.where(inside, step_ids[np.minimum(pos, len(step_ids) - 1)], -1)
        same_cycle = inside & (step_cycles[np.minimum(pos, len(step_ids) - 1)] == cycle)
        out[rows] = np.where(same_cycle, found, -1)
    return pd.Series(out, index=frame.index).where(out >= 0).astype("Int64")


def _key_codes(a: pd.DataFrame, b: pd.DataFrame, key: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per row of ``a`` and of ``b``, equal where the rows' ``key`` columns are equal
    (NA counts as a value, as in a merge), consistent across the two frames."""
    both = pd.concat([a[key], b[key]], ignore_index=True)
    codes = both.groupby(key, sort=False, dropna=False).ngroup().to_numpy(np.int64)
    return codes[: len(a)], codes[len(a):]


def update_dists(dists: pd.DataFrame, pairs: pd.DataFrame | None = None) -> pd.Series:
    """The update-phase Categoricals: built with grad enabled and never sampled from (a rollout
    run with grad enabled builds Categoricals with grad too, but calls sample() on them).

    With ``pairs`` (:func:`build_pairs`' or :func:`joint_rows`'), only those the loss used: a
    forward whose update log-prob rows are in ``pairs`` (heads of one forward count together),
    or one whose entropy took a gradient. A Categorical built with grad and used for neither
    (Tianshou's test collector takes ``dist.mode`` of one without ``no_grad``) is left out."""
    sampled = dists["sampled"].fillna(False).astype(bool) if "sampled" in dists else False
    update = dists["grad_enabled"].fillna(False).astype(bool) & ~sampled
    if pairs is None or dists.empty:
        return update
    used = _forwards(dists).isin(_forwards(pairs).unique())
    return update & (used | dists["grad_entropy"].notna().to_numpy())


def _forwards(frame: pd.DataFrame) -> pd.MultiIndex:
    """(rank, the first head's dist_id) of each row: the forward its Categorical came from."""
    first = frame["dist_id"].astype("Int64") - frame["head"].fillna(0).astype("Int64")
    return pd.MultiIndex.from_arrays([frame["rank"].astype("Int64"), first])


def padding_rows(pairs: pd.DataFrame) -> np.ndarray:
    """Update rows the loss leaves out: filler rows a recurrent trainer adds to bring sequences to
    one length and masks out of its loss (sb3-contrib's RecurrentPPO pads with zero observations
    and takes the mean over a mask). A row is padding when it matches no sampled (input, action),
    its log-prob took exactly zero gradient, its input row repeats among such rows of its
    log_prob call (one filler row), and paired rows of the same call took gradient. Clipped rows
    also take zero gradient, but they are paired; rows of a call where nothing pairs (an update
    fed other inputs) are never padding, so a broken pipeline is not explained away."""
    grad = pairs["grad_logp"].to_numpy(np.float64, na_value=np.nan)
    paired = pairs["paired"].to_numpy(bool)
    zero = (grad == 0.0) & ~paired & pairs["fingerprint"].notna().to_numpy(bool)
    if not zero.any():
        return zero
    call = [pairs["rank"], pairs["call_id"]]
    moved = pd.Series(paired & np.isfinite(grad) & (grad != 0.0), index=pairs.index)
    call_moved = moved.groupby(call, sort=False, dropna=False).transform("any").to_numpy(bool)
    candidates = pairs.loc[zero, ["rank", "call_id", "fingerprint"]]
    repeats = candidates.groupby(["rank", "call_id", "fingerprint"], sort=False, dropna=False)["fingerprint"]
    filler = np.zeros(len(pairs), dtype=bool)
    filler[np.flatnonzero(zero)] = repeats.transform("size").to_numpy(np.int64) >= 2
    return filler & call_moved


def loss_rows(pairs: pd.DataFrame, ignored: np.ndarray | None = None) -> np.ndarray:
    """The ``B`` of each update row's mean-reduced loss: its log_prob call's rows (``call_rows``)
    times the backward passes that fed the same optimizer step from that actor and head. One pass
    is the common case, and also a loss that sums several calls' means. With gradient accumulation
    (k micro-batches' ``(loss / k).backward()`` before one step) there are k passes, and a mean
    over the whole minibatch divides by k x the micro-batch. Rows whose pass is unknown (no
    gradient, no step, a run older than schema 3) keep ``call_rows``. ``ignored``: per row, how
    many rows of its call are padding the loss leaves out (:func:`padding_rows`); a mean over a
    mask divides by the rows left."""
    own = pairs["call_rows"].to_numpy(np.float64, na_value=np.nan)
    if ignored is not None:
        own = own - ignored
    known = (pairs["step"].notna() & pairs["grad_pass"].notna()).to_numpy()
    if not known.any():
        return own
    key = ["rank", "step", "actor", "head"]
    passes = pairs.loc[known].groupby(key, sort=False, dropna=False)["grad_pass"].transform("nunique")
    out = own.copy()
    out[known] = own[known] * passes.to_numpy(np.float64)
    return out


_ANY_MASK = np.iinfo(np.int64).min  # the mask code that matches a sample under any mask


def _sample_masks(samples: pd.DataFrame) -> np.ndarray:
    """The samples' mask codes (``samples.mask``); 0 (nothing masked) where absent."""
    if "mask" not in samples:
        return np.zeros(len(samples), dtype=np.int64)
    return samples["mask"].to_numpy(np.int64, na_value=0)


def pooled_calls(pairs: pd.DataFrame, adv: np.ndarray, tolerance: float = 0.15) -> np.ndarray | None:
    """Where one backward pass took several ``log_prob`` calls of one actor and head (a loop over
    agents sharing the actor, or over timesteps), the loss either sums each call's mean (each
    call's rows are its ``B``, as :func:`loss_rows` reads it) or takes one mean over all their
    rows (``torch.cat(terms).mean()``: the pass's rows are the ``B``). The gradients alone do not
    tell them apart; the advantages do, when they are normalized: read per call, N equal calls
    pooled in one mean show an ``adv_eff`` std of 1/N. Returns the factor (the pass's rows over
    the call's) to apply to those rows' ``loss_rows`` and ``adv_eff`` when, over the steps with
    such passes, the median per-step std is within ``tolerance`` of 1 read pooled and not read per
    call; None otherwise (a sum of means, or advantages not normalized either way: then
    ``advantages-not-normalized`` reads them as the per-call loss gives them)."""
    known = (pairs["step"].notna() & pairs["grad_pass"].notna()).to_numpy()
    if not known.any():
        return None
    key = ["rank", "step", "actor", "head", "grad_pass"]
    # one row per call: a call's rows are consecutive (update rows keep the samples' row order)
    rank, call = pairs["rank"].to_numpy(np.int64, na_value=-1), pairs["call_id"].to_numpy(np.int64, na_value=-1)
    starts = np.flatnonzero(np.r_[True, (rank[1:] != rank[:-1]) | (call[1:] != call[:-1])])
    calls = pairs.iloc[starts[known[starts]]]
    per_pass = calls.groupby(key, sort=False, dropna=False)["call_rows"]
    n_calls = per_pass.transform("size").to_numpy()
    if not (n_calls >= 2).any():
        return None
    own_rows = calls["call_rows"].to_numpy(np.float64)
    call_factor = np.ones(len(starts))
    call_factor[known[starts]] = np.where(n_calls >= 2, per_pass.transform("sum").to_numpy(np.float64) / own_rows, 1.0)
    factor = np.repeat(call_factor, np.diff(np.r_[starts, len(pairs)]))
    rows = np.flatnonzero(factor != 1.0)
    if not len(rows):
        return None
    chosen = pd.DataFrame({"rank": pairs["rank"].to_numpy()[rows], "step": pairs["step"].to_numpy()[rows],
                           "per_call": adv[rows], "pooled": adv[rows] * factor[rows]})
    spread = chosen.groupby(["rank", "step"], sort=False)[["per_call", "pooled"]].std().median()
    if abs(spread["pooled"] - 1) < tolerance and not abs(spread["per_call"] - 1) < tolerance:
        return factor
    return None


def build_pairs(
    samples: pd.DataFrame, steps: pd.DataFrame, logits: pa.Array | None
) -> tuple[pd.DataFrame, int]:
    """One row per update-phase log-prob row the loss uses; ``paired`` says whether a sampling
    row matched. Also returns how many padding rows (:func:`padding_rows`) were left out."""
    if not (samples["phase"] == "update").any():
        # (pandas cannot group an empty frame of Arrow-backed strings)
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _EMPTY_PAIRS.items()}), 0
    # The mask code is part of the key where it tells samples apart: one (input, action) sampled
    # under several masks (a mask that is not a function of the observation: sb3-contrib's
    # InvalidActionEnvDiscrete draws new invalid actions every step) is several samples, and an
    # update row that rebuilds the same mask finds its own. An update row whose mask matches no
    # sample of its (input, action) (a mask rebuilt wrongly) falls back to the key without it.
    masks = _sample_masks(samples)
    masked = bool(masks.any())  # else the key without it (the common case: half the work)
    key = PAIR_KEY + ["mask"] if masked else PAIR_KEY
    if masked:
        samples = samples.assign(mask=masks)
    is_sampling = (samples["phase"] == "sampling") & samples["fingerprint"].notna()
    sampling = samples.loc[is_sampling, key + ["logp", "row", "dist_id"]]
    if "fingerprint_inner" in samples and samples["fingerprint_inner"].notna().any():
        # a sampling row can also be found by its inner input's hash: SB3 samples through
        # policy(obs) and updates through features_extractor(preprocess_obs(obs))
        has_inner = (samples["phase"] == "sampling") & samples["fingerprint_inner"].notna()
        cols = [k for k in key if k != "fingerprint"] + ["fingerprint_inner", "logp", "row", "dist_id"]
        inner = samples.loc[has_inner, cols].rename(columns={"fingerprint_inner": "fingerprint"})
        sampling = pd.concat([sampling, inner[sampling.columns]], ignore_index=True)
        sampling = sampling.drop_duplicates(key + ["row"])  # the same row under one key once
    if masked:  # each (input, action) once more under the fallback mask code, with all its samples
        sampling = pd.concat([sampling, sampling.assign(mask=_ANY_MASK)], ignore_index=True)
    update = samples.loc[samples["phase"] == "update"]
    first_row = update.groupby(["rank", "call_id"], sort=False)["row"].transform("min")
    update = update.assign(call_pos=(update["row"] - first_row).astype("int64"))
    # The key's columns are coded once into one int64 (equal codes: equal keys, NA equal to NA as
    # in a merge), and every grouping and the join below use that code: on the key's columns,
    # each of them factorized all six again (figures: benchmarks/analyze_speed.py --base)
    code_s, code_u = _key_codes(sampling, update, key)
    if masked:  # an update row whose mask matches no sample of its (input, action) takes the fallback
        own = np.isin(code_u, code_s)
        update = update.assign(mask=np.where(own, update["mask"].to_numpy(np.int64), _ANY_MASK))
        code_s, code_u = _key_codes(sampling, update, key)
    sampling = sampling.assign(_key=code_s)
    first = ~sampling.duplicated("_key", keep="first")
    old = sampling.loc[first, ["_key", "logp", "row", "dist_id"]].rename(
        columns={"logp": "old_logp", "row": "old_row", "dist_id": "old_dist_id"}
    )
    counts = np.bincount(code_s)  # samples per key
    old["multiplicity"] = counts[old["_key"].to_numpy()]
    # duplicates of one key that were sampled with different log-probs (under different masks, and
    # the update does not rebuild one of them): which one an update row is, is unknown, so its
    # logits are not compared
    repeated = sampling[counts[code_s] > 1]
    logp = repeated.groupby("_key", sort=False)["logp"].agg(["min", "max"])
    ambiguous = ((logp["max"] - logp["min"]).abs() > 1e-6).rename("ambiguous")
    old = old.merge(ambiguous, left_on="_key", right_index=True, how="left")

    pairs = update.assign(_key=code_u).merge(old, on="_key", how="left", validate="many_to_one")
    pairs = pairs.rename(columns={"logp": "new_logp", "row": "new_row"})
    pairs["paired"] = pairs["old_logp"].notna()
    seen_before = pairs.groupby("_key", sort=False).cumcount()
    pairs["epoch"] = (seen_before // pairs["multiplicity"].fillna(1).astype(np.int64)).astype("int64")
    pairs["step"] = resolve_steps(pairs, steps)

    terms = ratio_terms(
        pairs["new_logp"].to_numpy(np.float32), pairs["old_logp"].to_numpy(np.float32, na_value=np.nan)
    )
    for name, values in terms.items():
        pairs[name] = values
    grad = pairs["grad_logp"].to_numpy(np.float64, na_value=np.nan)
    pairs["clipped"] = pd.array(grad == 0.0, dtype="boolean").copy()
    pairs.loc[np.isnan(grad), "clipped"] = pd.NA
    observable = np.isfinite(grad) & (grad != 0.0)
    pad = padding_rows(pairs)
    ignored = None
    if pad.any():
        per_call = pd.Series(pad, index=pairs.index).groupby([pairs["rank"], pairs["call_id"]], dropna=False)
        ignored = per_call.transform("sum").to_numpy(np.float64)
    pairs["loss_rows"] = loss_rows(pairs, ignored)
    with np.errstate(divide="ignore", invalid="ignore"):
        adv = -grad * pairs["loss_rows"].to_numpy(np.float64) / terms["ratio"]
    pooled = pooled_calls(pairs, np.where(observable, adv, np.nan))
    if pooled is not None:
        pairs["loss_rows"] = pairs["loss_rows"].to_numpy(np.float64) * pooled
        adv = adv * pooled
    pairs["adv_eff"] = np.where(observable, adv, np.nan)
    old_rows = pairs["old_row"].to_numpy(np.float64, na_value=np.nan).copy()
    old_rows[pairs["ambiguous"].fillna(False).to_numpy(bool)] = np.nan
    pairs["kl_exact"], pairs["logit_scale"] = compare_logits(logits, pairs["new_row"].to_numpy(np.int64), old_rows)
    if not pad.any():
        return pairs[list(_EMPTY_PAIRS)], 0
    return pairs.loc[~pad, list(_EMPTY_PAIRS)].reset_index(drop=True), int(pad.sum())


_EMPTY_PAIRS = {
    "rank": "Int32", "cycle": "Int32", "step": "Int64", "epoch": "int64", "actor": "object",
    "head": "Int16", "action": "Int64", "fingerprint": "Int64", "paired": "bool", "old_logp": "float32",
    "new_logp": "float32", "log_ratio": "float64", "ratio": "float64", "k3": "float64",
    "grad_logp": "float32", "clipped": "boolean", "adv_eff": "float64", "kl_exact": "float64",
    "logit_scale": "float64", "call_rows": "Int32", "loss_rows": "float64", "grad_pass": "Int64",
    "seq": "Int32", "dist_id": "Int64",
    "old_dist_id": "Int64", "multiplicity": "float64", "call_id": "Int64", "call_pos": "int64",
}  # fmt: skip


def joint_rows(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per sample of the policy as a whole: the rows of every head of a multi-head action
    (SB3 MultiDiscrete: one Categorical per action dimension, log-probs summed) collapse into one,
    with summed log-probs, so that ratio, k1/k2/k3, clip fraction and adv_eff are those of the
    joint action, as the trainer computes them. Single-head runs come back unchanged.

    Heads of one forward are consecutive Categoricals (``dist_id - head`` is the first head's), and
    row i of each head's log_prob call is the same sample."""
    if pairs.empty or not (pairs["head"].fillna(0) > 0).any():
        return pairs
    frame = pairs.assign(group=pairs["dist_id"] - pairs["head"].astype("Int64"))
    key = ["rank", "cycle", "actor", "group", "call_pos", "epoch"]
    frame = frame.sort_values("head", kind="stable")
    grouped = frame.groupby(key, sort=False, dropna=False)
    joint = grouped.agg(
        step=("step", "first"),
        action=("action", "first"),
        fingerprint=("fingerprint", "first"),
        paired=("paired", "all"),
        new_logp=("new_logp", "sum"),
        old_logp=("old_logp", lambda v: v.sum(min_count=len(v))),
        grad_logp=("grad_logp", "first"),
        kl_exact=("kl_exact", lambda v: v.sum(min_count=len(v))),
        logit_scale=("logit_scale", "mean"),
        call_rows=("call_rows", "first"),
        loss_rows=("loss_rows", "first"),
        grad_pass=("grad_pass", "first"),
        seq=("seq", "first"),
        dist_id=("dist_id", "first"),
        old_dist_id=("old_dist_id", "first"),
        multiplicity=("multiplicity", "first"),
        call_id=("call_id", "first"),
        clipped=("clipped", "first"),
    ).reset_index()
    joint["head"] = pd.array([0] * len(joint), dtype="Int16")
    terms = ratio_terms(
        joint["new_logp"].to_numpy(np.float32), joint["old_logp"].to_numpy(np.float32, na_value=np.nan)
    )
    for name, values in terms.items():
        joint[name] = values
    grad = joint["grad_logp"].to_numpy(np.float64, na_value=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        adv = -grad * joint["loss_rows"].to_numpy(np.float64) / terms["ratio"]
    joint["adv_eff"] = np.where(np.isfinite(grad) & (grad != 0.0), adv, np.nan)
    return joint[list(_EMPTY_PAIRS)]


def compare_logits(
    logits: pa.Array | None, new_rows: np.ndarray, old_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per paired row, from the kept normalized logits: KL(old || new), and the logit scale
    std(new) / std(old) over the categories unmasked at sampling (a temperature applied on one
    path shows as the same factor on every row). NaN where logits were not kept or K differs."""
    kl = np.full(len(new_rows), np.nan)
    scale = np.full(len(new_rows), np.nan)
    if logits is None or len(logits) == 0 or len(new_rows) == 0:
        return kl, scale
    has_old = ~np.isnan(old_rows)
    old = np.where(has_old, old_rows, 0).astype(np.int64)
    offsets = logits.offsets.to_numpy()
    values = logits.values.to_numpy(zero_copy_only=False).astype(np.float64)
    valid = logits.is_valid().to_numpy(zero_copy_only=False)
    k_new = offsets[new_rows + 1] - offsets[new_rows]
    k_old = offsets[old + 1] - offsets[old]
    ok = has_old & valid[new_rows] & valid[old] & (k_new == k_old) & (k_new > 0)
    for k in np.unique(k_new[ok]):
        sel = np.flatnonzero(ok & (k_new == k))
        cols = np.arange(k)
        lo = values[offsets[old[sel]][:, None] + cols]
        ln = values[offsets[new_rows[sel]][:, None] + cols]
        masked = lo <= MASKED_LOGIT
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            kl[sel] = np.where(masked, 0.0, np.exp(lo) * (lo - ln)).sum(axis=1)
            if k > 1:
                std_old = np.nanstd(np.where(masked, np.nan, lo), axis=1)
                std_new = np.nanstd(np.where(masked, np.nan, ln), axis=1)
                scale[sel] = np.where(std_old > 0, std_new / std_old, np.nan)
    return kl, scale
