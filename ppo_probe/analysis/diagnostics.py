"""The diagnostics catalog (DESIGN section 5): one small pure function per id, in one place.

Each check takes the analysis context and returns at most one Finding whose evidence is numbers
with the counts they stand on. docs/diagnostics.md documents every id in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .config import Thresholds
from .pairing import PAIR_KEY, update_dists


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    title: str
    evidence: str
    fix: str
    first_step: int | None = None
    cycles: tuple[int, ...] = ()


@dataclass
class Context:
    """Everything a check may read: run tables, pairs, metrics, thresholds."""

    meta: dict[str, Any]
    pairs: pd.DataFrame
    dists: pd.DataFrame
    steps: pd.DataFrame
    layers: pd.DataFrame
    per_step: pd.DataFrame
    per_cycle: pd.DataFrame
    thresholds: Thresholds
    clip_coef: float
    errors_so_far: list[str] = field(default_factory=list)
    # (rank, cycle) of every sampling-phase log-prob row's cycle
    sampled_cycles: frozenset[tuple[int, int]] = frozenset()

    @property
    def paired(self) -> pd.DataFrame:
        return self.pairs[self.pairs["paired"]]


@dataclass(frozen=True)
class Diagnostic:
    id: str
    severity: str
    title: str
    check: Callable[[Context], tuple[str, str, int | None, tuple[int, ...]] | None]


CATALOG: list[Diagnostic] = []


def diagnostic(id: str, severity: str, title: str) -> Callable:
    """Register ``check`` under ``id``; it returns (evidence, fix, first_step, cycles) or None."""

    def register(check: Callable) -> Callable:
        CATALOG.append(Diagnostic(id, severity, title, check))
        return check

    return register


# ---------------------------------------------------------------------- helpers


def _g(x: float) -> str:
    """A number for evidence text: 3 significant digits."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{x:.3g}"


def _cycles(values: Any) -> tuple[int, ...]:
    return tuple(sorted({int(v) for v in pd.Series(values).dropna()}))


def _first_step(values: Any) -> int | None:
    s = pd.Series(values).dropna()
    return int(s.min()) if len(s) else None


def _names(names: Any, limit: int = 4) -> str:
    names = list(dict.fromkeys(names))
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _actor_params(ctx: Context) -> list[dict[str, Any]]:
    return [p for p in ctx.meta.get("actor_params") or [] if p.get("feeds_logits")]


def _actor_layer_names(ctx: Context) -> set[str]:
    names = {p["name"] for p in _actor_params(ctx)}
    if not names and len(ctx.layers):
        names = set(ctx.layers["name"])
    return names


def _cycle_kl(ctx: Context) -> pd.Series:
    """Per-cycle KL as SB3 logs it (k3, last epoch), exact KL where k3 is missing."""
    pc = ctx.per_cycle
    if pc.empty:
        return pd.Series(dtype=float)
    kl = pc["kl_k3"].astype(float).where(pc["kl_k3"].notna(), pc["kl_exact_end"].astype(float))
    return pd.Series(kl.to_numpy(), index=pc["cycle"].to_numpy()).dropna()


# ---------------------------------------------------------------------- errors


@diagnostic("logprob-detached", "error", "No gradient reaches the update-phase log-probs")
def check_logprob_detached(ctx: Context):
    update = ctx.dists[update_dists(ctx.dists)]
    if update.empty:
        return None
    detached = update[~update["logits_require_grad"].fillna(False).astype(bool)]
    rows = ctx.pairs
    with_grad = int(rows["grad_logp"].notna().sum())
    share = len(detached) / len(update)
    no_grad_at_all = len(rows) > 0 and with_grad == 0 and len(ctx.steps) > 0
    if share <= 0.5 and not no_grad_at_all:
        return None
    evidence = (
        f"{len(detached)} of {len(update)} Categoricals built with grad enabled had logits that do not "
        f"require grad; {with_grad} of {len(rows)} update log-prob rows received a gradient over "
        f"{len(ctx.steps)} optimizer steps"
    )
    fix = (
        "Build the update-time distribution from the live network output: drop .detach() / "
        ".item() / torch.no_grad() on the logits path, and compute log-probs with dist.log_prob "
        "rather than indexing a detached tensor."
    )
    return evidence, fix, _first_step(rows["step"]), _cycles(detached["cycle"] if len(detached) else rows["cycle"])


@diagnostic("logprob-grads-cancel", "error", "Gradients into new and old log-probs cancel")
def check_logprob_grads_cancel(ctx: Context):
    rows = ctx.pairs[ctx.pairs["grad_logp"].notna() & ctx.pairs["step"].notna()]
    # only rows whose (step, input, action) repeats can be in a group of two: found on three
    # numeric columns first, so the full key's groupby runs on those few (benchmarks/analyze_speed.py)
    rows = rows[rows.duplicated(["step", "fingerprint", "action"], keep=False)]
    if rows.empty:
        return None
    key = ["step", *PAIR_KEY]
    g = rows["grad_logp"].astype(float)
    grouped = pd.DataFrame({"net": g, "abs": g.abs()}).groupby([rows[k] for k in key], dropna=False)
    sums = grouped.sum()
    sizes = grouped.size()
    multi = sums[(sizes >= 2) & (sums["abs"] > 0)]
    if len(multi) < 10:
        return None
    cancel = multi["net"].abs() <= 1e-3 * multi["abs"]
    if cancel.mean() < 0.5:
        return None
    evidence = (
        f"in {int(cancel.sum())} of {len(multi)} (step, sample) groups seen twice in one step the "
        f"log-prob gradients sum to ~0 (|sum| <= 1e-3 x sum |g|): the same log-prob enters the loss "
        "once as 'new' and once as 'old' with gradient, so the ratio is exp(0) and the policy "
        "gradient vanishes"
    )
    fix = (
        "Use the log-probs stored at sampling time (computed under torch.no_grad()) as old_logp, or "
        "detach them: ratio = exp(new_logp - old_logp.detach())."
    )
    cancelled = multi[cancel].reset_index()
    return evidence, fix, _first_step(cancelled["step"]), _cycles(cancelled["cycle"])


@diagnostic("actor-not-in-optimizer", "error", "The actor is not (effectively) optimized")
def check_actor_not_in_optimizer(ctx: Context):
    params = _actor_params(ctx)
    if not params:
        return None
    missing = [p["name"] for p in params if not p.get("in_optimizer")]
    frozen = [p["name"] for p in params if not p.get("requires_grad", True)]
    zero_lr: list[str] = []
    lr_used = pd.Series(dtype=float)
    if len(ctx.layers):
        names = {p["name"] for p in params}
        actor_layers = ctx.layers[ctx.layers["name"].isin(names)]
        if len(actor_layers):
            # the largest lr each tensor had at any recorded step: a schedule that ends at 0
            # (SB3's linear schedule runs its last update at lr exactly 0) optimized it before
            lr_used = actor_layers["lr"].astype(float).abs().groupby(actor_layers["name"]).max()
            zero_lr = list(lr_used.index[lr_used <= ctx.thresholds.zero_lr])
    parts = []
    if missing:
        n = sum(p["numel"] for p in params if p["name"] in missing)
        parts.append(f"{len(missing)} of {len(params)} parameter tensors the logits depend on ({n} "
                     f"values: {_names(missing)}) are in no param group of the watched optimizers")
    if frozen:
        parts.append(f"{len(frozen)} are frozen (requires_grad=False): {_names(frozen)}")
    if zero_lr:
        parts.append(f"{len(zero_lr)} have learning rate {_g(float(lr_used[zero_lr].max()))} at most "
                     f"(<= {_g(ctx.thresholds.zero_lr)}) at every recorded step: {_names(zero_lr)}")
    if not parts:
        return None
    fix = (
        "Build the optimizer from every actor parameter (e.g. torch.optim.Adam(agent.parameters(), "
        "lr=...)), unfreeze them, and give their param group a real learning rate."
    )
    return "; ".join(parts), fix, _first_step(ctx.steps["step"]) if len(ctx.steps) else None, ()


@diagnostic("params-changed-outside-step", "error", "Actor parameters change between optimizer steps")
def check_params_changed_outside_step(ctx: Context):
    layers = ctx.layers
    if layers.empty:
        return None
    names = _actor_layer_names(ctx)
    actor = layers[layers["name"].isin(names)].sort_values(["optimizer", "name", "step"]).copy()
    seen = actor[actor["outside_delta_norm"].notna()]
    if seen.empty:
        return None
    changed = seen[seen["outside_delta_norm"].astype(float) > 0]
    if changed.empty:
        return None
    by_tensor = actor.groupby(["optimizer", "name"])
    actor["previous_delta"] = by_tensor["delta_norm"].shift(1)
    # across cycles the watch's schedule skipped, the previous recorded step is not the previous step
    gap = by_tensor["cycle"].shift(1) < actor["cycle"] - 1
    actor.loc[gap, "previous_delta"] = float("nan")
    changed = changed.join(actor["previous_delta"])
    outside = changed["outside_delta_norm"].astype(float)
    undo = (outside - changed["previous_delta"].astype(float)).abs() <= 1e-3 * outside.clip(lower=1e-30)
    steps_changed = changed["step"].nunique()
    steps_seen = seen["step"].nunique()
    kind = (
        f"in {int(undo.sum())} of {len(changed)} cases the change equals the previous step's update: "
        "the weights are being restored to a copy taken before that step (a reload)"
        if undo.mean() > 0.5
        else "the changes do not undo earlier steps: something edits the weights in place "
        "(manual edits, re-initialisation, a second unwatched optimizer)"
    )
    evidence = (
        f"{_names(changed['name'])} changed between optimizer steps before {steps_changed} of "
        f"{steps_seen} steps (largest change {_g(float(outside.max()))}, median change relative to "
        f"the tensor's norm {_g(float((outside / changed['param_norm'].astype(float).clip(lower=1e-12)).median()))}); {kind}"
    )
    fix = (
        "Do not load_state_dict / copy_ / re-initialise the actor inside the training loop; if a "
        "second optimizer or a manual update is intended, watch it too."
    )
    return evidence, fix, _first_step(changed["step"]), _cycles(changed["cycle"])


# A first-step |log r| the two paths' float precision explains: 1% of the ratio, or 2% of the
# update logits' spread (rounding error grows with the logits). bf16 autocast on the update path
# only, fp32 sampling (benchmarks/precision_mismatch.py): a 90th percentile of at most 0.83% of
# the logit spread at spreads 0.12-4.78; a temperature of 2 on one path gave 8e-2 on the
# CleanRL-style CartPole.
_PRECISION_LOG_RATIO = 1e-2
_PRECISION_OF_SPREAD = 0.02


@diagnostic("sampling-update-mismatch", "error", "The update does not see the distribution that was sampled")
def check_sampling_update_mismatch(ctx: Context):
    paired = ctx.paired[ctx.paired["step"].notna()]
    if paired.empty:
        return None
    first = paired[paired["step"] == paired.groupby(["rank", "cycle"])["step"].transform("min")]
    bad = first[first["log_ratio"].abs() > 1e-3]
    if len(first) < 10 or len(bad) < 0.1 * len(first):
        return None
    d = ctx.dists.set_index("dist_id")
    old = d.reindex(bad["old_dist_id"].astype("int64").to_numpy())
    new = d.reindex(bad["dist_id"].astype("int64").to_numpy())
    k_old, k_new = old["n_categories"].to_numpy(float), new["n_categories"].to_numpy(float)
    m_old, m_new = old["masked_mean"].to_numpy(float), new["masked_mean"].to_numpy(float)
    scale = bad["logit_scale"].to_numpy(float)  # per row: the same input seen by both paths
    if np.mean(k_old != k_new) > 0.5:
        kind = (f"category count: K = {int(np.median(k_old))} at sampling vs K = "
                f"{int(np.median(k_new))} at update (a local action subset or a default K rebuilt)")
    elif np.mean(np.abs(m_old - m_new) > 0.01) > 0.5:
        kind = (f"action mask: {_g(float(np.mean(m_old)))} masked categories per row at sampling vs "
                f"{_g(float(np.mean(m_new)))} at update (the mask is not stored and reused)")
    # the logit scale is known for the rows whose logits were kept (about one in K by default)
    elif np.isfinite(scale).sum() >= 5 and np.nanstd(np.log(scale)) < 0.05 and abs(np.nanmedian(scale) - 1) > 0.02:
        s = float(np.nanmedian(scale))
        kind = (f"logit scale: update logits are {_g(s)}x the sampling logits, a temperature of "
                f"{_g(s)} applied on the sampling path only")
    else:
        spread = float(np.quantile(first["log_ratio"].abs().to_numpy(float), 0.9))
        logits = float(np.nanmedian(new["logit_spread"].to_numpy(float))) if len(new) else float("nan")
        tolerance = max(_PRECISION_LOG_RATIO, _PRECISION_OF_SPREAD * (logits if np.isfinite(logits) else 0.0))
        if spread <= tolerance:
            # same K, mask and scale, and 90% of the rows within what the two paths' float
            # precision explains (bf16 / fp16 autocast on one only): harmless beside PPO's clip
            return None
        kind = ("inputs or weights: same K, mask and logit scale, yet the log-probs differ (state "
                "encoding, normalization statistics or network mode differ between the two paths; "
                f"the 90th percentile of |log r| is {_g(spread)}, more than the {_g(tolerance)} "
                "float precision explains)")
    evidence = (
        f"at the first optimizer step of a cycle the ratio should be exactly 1, but |log r| > 1e-3 on "
        f"{len(bad)} of {len(first)} rows (median |log r| {_g(float(bad['log_ratio'].abs().median()))}); "
        f"kind: {kind}"
    )
    fix = (
        "Sample and update through one function that builds the same distribution: same "
        "temperature, same category set and mask (store them with the rollout), same input encoding."
    )
    return evidence, fix, _first_step(bad["step"]), _cycles(bad["cycle"])


@diagnostic("unpaired-samples", "error", "Update rows match no sampled (input, action)")
def check_unpaired_samples(ctx: Context):
    rows = ctx.pairs
    if len(rows) < 10:
        return None
    fraction = float(rows["paired"].mean())
    threshold = ctx.thresholds.min_paired_fraction
    by_rank = rows.groupby("rank")["paired"].agg(["mean", "size"])
    low = by_rank[(by_rank["mean"] < threshold) & (by_rank["size"] >= 10)]
    if fraction >= threshold and low.empty:
        return None
    unpaired = rows[~rows["paired"]]
    no_fp = int(unpaired["fingerprint"].isna().sum())
    counts = ctx.meta.get("counts") or {}
    evidence = (
        f"{len(unpaired)} of {len(rows)} update rows (paired fraction {fraction:.1%}, threshold "
        f"{ctx.thresholds.min_paired_fraction:.0%}) match no (input, action) sampled in their cycle; "
        f"{no_fp} of them had no input fingerprint ({counts.get('unattributed_dists', 0)} "
        f"Categoricals could not be tied to an actor input, "
        f"{counts.get('calls_changed_after_record', 0)} log_prob calls were written in place)"
    )
    if len(by_rank) > 1:  # ranks disagree: say which ones pair and which do not
        evidence += "; by rank: " + ", ".join(
            f"rank {r} {m:.1%} of {int(n)}" for r, (m, n) in by_rank[["mean", "size"]].iterrows()
        ) + (f" (below {threshold:.0%}: rank {', '.join(str(r) for r in low.index)})" if len(low) else "")
    cause, fix = _nothing_sampled(ctx, rows, unpaired)
    if counts.get("compiled_forwards_seen"):
        cause += ("; watched modules ran under torch.compile, and a Categorical that Dynamo "
                  "traced into its graph is not recorded")
        fix += " If the sampling policy is compiled, watch the trainer without torch.compile."
    return evidence + cause, fix, _first_step(unpaired["step"]), _cycles(unpaired["cycle"])


def _nothing_sampled(ctx: Context, rows: pd.DataFrame, unpaired: pd.DataFrame) -> tuple[str, str]:
    """unpaired-samples' further evidence and fix: the cause when no cycle of the unpaired rows
    holds a sampling row at all (nothing to pair with), else the inputs' fix."""
    cycles = pd.MultiIndex.from_arrays([unpaired["rank"].fillna(0).astype(int), unpaired["cycle"].astype(int)])
    if cycles.isin(list(ctx.sampled_cycles)).any():
        return "", ("Feed the update the exact observations stored at sampling (no re-normalization, "
                    "re-encoding or augmentation in between), with the actions that were sampled.")
    n_cycles = int(unpaired["cycle"].nunique())
    where = "the cycle they fall in holds" if n_cycles == 1 else f"the {n_cycles} cycles they fall in hold"
    cause = f"; {where} no sampling-phase log-prob row (Categorical.log_prob under no_grad) to pair with"
    # grad-mode log_prob calls no gradient ever reached: a rollout run with grad enabled
    reached = rows.groupby(["rank", "call_id"], sort=False)["grad_logp"].count()
    ungraded = reached[reached == 0]
    if not len(ungraded):
        return cause, ("Store the old log-probs at sampling from the Categorical you sampled from "
                       "(dist.log_prob(action) under torch.no_grad()), as PPO's ratio needs; update "
                       "rows are paired with those rows.")
    ungraded_rows = int(rows["call_id"].isin(ungraded.index.get_level_values("call_id")).sum())
    cause += (f"; {len(ungraded)} of the {len(reached)} grad-mode log_prob calls ({ungraded_rows} "
              "rows) never received a gradient, as a rollout run with grad enabled and actions not "
              "drawn by dist.sample() gives")
    return cause, ("Run the rollout under torch.no_grad() (or draw its actions with dist.sample()): "
                   "ppo_probe reads the sampling policy from log_prob calls made without grad or on "
                   "a Categorical sampled from, and the rollout then builds no autograd graph per "
                   "env step.")


@diagnostic("advantages-misaligned", "error", "Advantages are not attached to their own samples")
def check_advantages_misaligned(ctx: Context):
    consistency, n = cross_epoch_consistency(ctx.paired)
    if n < 50 or np.isnan(consistency) or consistency > ctx.thresholds.misaligned_max_consistency:
        return None
    evidence = (
        f"the effective advantage of the same sample correlates {_g(consistency)} between "
        f"consecutive epochs over {n} samples (a trainer that keeps (obs, action, advantage) "
        "together gives ~0.99; a second permutation or a shifted index gives ~0)"
    )
    fix = (
        "Index observations, actions, old log-probs and advantages with the same minibatch indices "
        "(one permutation per epoch), and check agent and time-step ordering of the buffers."
    )
    return evidence, fix, _first_step(ctx.paired["step"]), ()


def cross_epoch_consistency(paired: pd.DataFrame) -> tuple[float, int]:
    """Correlation of adv_eff for the same sample between consecutive epochs, and the sample count.

    Only samples whose (input, action) occurs once in their cycle take part: with repeated
    observations (small discrete state spaces) the update rows of one key are several samples with
    different advantages, and which of them comes first in an epoch is the shuffle's choice."""
    rows = paired[paired["adv_eff"].notna() & (paired["multiplicity"] == 1)]
    if rows.empty:
        return float("nan"), 0
    # one int64 code per (sample, epoch), the sample's epochs consecutive: code + 1 is the same
    # sample one epoch later (epoch + 1 < span). np.unique sorts the codes and gives each one's
    # first row, so one sort replaces a groupby and a merge on the seven key columns (the same
    # correlation; the time: benchmarks/analyze_speed.py --base)
    sample = rows.groupby(PAIR_KEY, sort=False, dropna=False).ngroup().to_numpy(np.int64)
    epoch = rows["epoch"].to_numpy(np.int64)
    codes, first = np.unique(sample * (int(epoch.max()) + 2) + epoch, return_index=True)
    adv = rows["adv_eff"].to_numpy(np.float64)[first]
    nxt = codes[1:] == codes[:-1] + 1
    a, b = adv[:-1][nxt], adv[1:][nxt]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan"), len(a)
    return float(np.corrcoef(a, b)[0, 1]), len(a)


@diagnostic("entropy-bonus-sign", "error", "The loss pushes entropy down through the entropy term")
def check_entropy_bonus_sign(ctx: Context):
    d = ctx.dists[ctx.dists["grad_entropy"].notna()]
    if d.empty:
        return None
    coef = -d["grad_entropy"].astype(float) * d["rows"].astype(float)
    negative = coef < 0
    if negative.mean() <= 0.5:
        return None
    evidence = (
        f"dLoss/dH > 0 on {int(negative.sum())} of {len(d)} update-time entropy terms: the effective "
        f"entropy coefficient is {_g(float(coef.median()))} (it should be positive: loss = ... - "
        "ent_coef * entropy.mean())"
    )
    fix = "Subtract the entropy bonus: loss = pg_loss - ent_coef * entropy.mean() + vf_coef * v_loss."
    return evidence, fix, None, _cycles(d.loc[negative, "cycle"])


@diagnostic("nonfinite-values", "error", "NaN or Inf in logits, log-probs or gradients")
def check_nonfinite_values(ctx: Context):
    parts = []
    logp = ctx.pairs["new_logp"].astype(float)
    samples_bad = int((~np.isfinite(logp)).sum())
    if samples_bad:
        parts.append(f"{samples_bad} of {len(logp)} update log-probs are NaN/Inf")
    grad = ctx.pairs["grad_logp"].dropna().astype(float)
    if int((~np.isfinite(grad)).sum()):
        parts.append(f"{int((~np.isfinite(grad)).sum())} of {len(grad)} log-prob gradients are NaN/Inf")
    bad_rows = ctx.dists["nonfinite_rows"].fillna(0).astype(int)
    if int((bad_rows > 0).sum()):
        parts.append(f"{int((bad_rows > 0).sum())} of {len(bad_rows)} Categoricals have NaN/Inf logits "
                     f"({int(bad_rows.sum())} rows)")
    if len(ctx.layers):
        g = ctx.layers["grad_norm"].dropna().astype(float)
        if int((~np.isfinite(g)).sum()):
            names = ctx.layers.loc[ctx.layers["grad_norm"].notna() & ~np.isfinite(ctx.layers["grad_norm"].astype(float)), "name"]
            parts.append(f"{int((~np.isfinite(g)).sum())} parameter gradients are NaN/Inf ({_names(names)})")
        p = ctx.layers["param_norm"].astype(float)
        if int((~np.isfinite(p)).sum()):
            parts.append(f"{int((~np.isfinite(p)).sum())} parameter tensors hold NaN/Inf after a step")
    counts = ctx.meta.get("counts") or {}
    if counts.get("nonfinite_dist_inputs"):
        parts.append(f"{counts['nonfinite_dist_inputs']} Categorical constructions failed on "
                     f"non-finite logits/probs (run status: {ctx.meta.get('status')})")
    if not parts:
        return None
    fix = ("Find the first non-finite value: check observations and rewards for NaN/Inf, clip or "
           "normalize them, and keep the learning rate and logits bounded.")
    return "; ".join(parts), fix, None, ()


# ---------------------------------------------------------------------- warnings


def _adv_scale(ctx: Context) -> tuple[float, float, int]:
    steps = ctx.per_step[ctx.per_step["adv_eff_std"].notna()]
    if steps.empty:
        return float("nan"), float("nan"), 0
    return float(steps["adv_eff_std"].median()), float(steps["adv_eff_mean"].median()), len(steps)


def _sum_reduced(ctx: Context) -> tuple[bool, float, float]:
    std, _, n = _adv_scale(ctx)
    if n == 0:
        return False, std, float("nan")
    batch = float(ctx.paired["call_rows"].median())
    return batch >= 8 and abs(std / batch - 1) < 0.15, std, batch


@diagnostic("advantages-not-normalized", "warning", "Advantages are not normalized")
def check_advantages_not_normalized(ctx: Context):
    std, mean, n = _adv_scale(ctx)
    if n == 0 or _sum_reduced(ctx)[0]:
        return None
    lo, hi = ctx.thresholds.adv_std_band
    if lo <= std <= hi and abs(mean) <= ctx.thresholds.adv_mean_max:
        return None
    evidence = (
        f"the advantage the loss applied (adv_eff) has median per-step std {_g(std)} and mean "
        f"{_g(mean)} over {n} steps (band: std in [{lo}, {hi}], |mean| <= {ctx.thresholds.adv_mean_max})"
    )
    fix = ("Normalize advantages per minibatch: adv = (adv - adv.mean()) / (adv.std() + 1e-8), or "
           "scale rewards so that advantages are O(1).")
    return evidence, fix, None, ()


@diagnostic("loss-sum-reduction", "warning", "The policy loss is summed, not averaged")
def check_loss_sum_reduction(ctx: Context):
    summed, std, batch = _sum_reduced(ctx)
    if not summed:
        return None
    evidence = (
        f"adv_eff std {_g(std)} on minibatches of {int(batch)} rows: dLoss/dlogp is B times what a "
        "mean-reduced loss gives, so the step scales with the minibatch size"
    )
    fix = "Reduce the policy loss with .mean() over the minibatch instead of .sum()."
    return evidence, fix, None, ()


def _lr_swept(ctx: Context) -> bool:
    """An lr sweep run (``watch(lr_sweep=...)``) moves the lr on purpose, from too small to too
    large: its KL band says nothing of the trainer's lr (the recommendation reads the sweep)."""
    return bool((ctx.meta.get("settings") or {}).get("lr_sweep"))


@diagnostic("update-too-small", "warning", "The policy barely moves each cycle")
def check_update_too_small(ctx: Context):
    kl = _cycle_kl(ctx)
    if kl.empty or ctx.errors_so_far or _lr_swept(ctx):
        return None
    limit = ctx.thresholds.small_kl_fraction * ctx.thresholds.target_kl
    median = float(kl.median())
    if median >= limit:
        return None
    evidence = (f"median per-cycle KL {_g(median)} over {len(kl)} cycles is below "
                f"{ctx.thresholds.small_kl_fraction} x target {ctx.thresholds.target_kl} = {_g(limit)}")
    fix = "Raise the learning rate (see the recommendation) or the number of update epochs."
    return evidence, fix, None, _cycles(kl[kl < limit].index)


@diagnostic("update-too-large", "warning", "The policy moves too far each cycle")
def check_update_too_large(ctx: Context):
    kl = _cycle_kl(ctx)
    if kl.empty or _lr_swept(ctx):
        return None
    t = ctx.thresholds
    clip = ctx.per_cycle["clip_fraction"].astype(float).dropna()
    kl_median, clip_median = float(kl.median()), float(clip.median()) if len(clip) else float("nan")
    too_far = kl_median > t.large_kl_multiple * t.target_kl
    too_clipped = clip_median > t.clip_band[1]
    if not (too_far or too_clipped):
        return None
    evidence = (f"median per-cycle KL {_g(kl_median)} (limit {t.large_kl_multiple} x target = "
                f"{_g(t.large_kl_multiple * t.target_kl)}) and median clip fraction "
                f"{_g(clip_median)} (band {t.clip_band[0]}-{t.clip_band[1]}) over {len(kl)} cycles")
    fix = "Lower the learning rate (see the recommendation), use fewer epochs, or add a KL guard."
    cycles = kl[kl > t.large_kl_multiple * t.target_kl].index
    return evidence, fix, None, _cycles(cycles)


@diagnostic("policy-head-flat", "warning", "The policy head is flat and does not move")
def check_policy_head_flat(ctx: Context):
    d = ctx.dists[update_dists(ctx.dists, ctx.pairs) & ctx.dists["entropy_norm"].notna()]
    if d.empty:
        return None
    per_cycle = d.groupby("cycle").agg(entropy_norm=("entropy_norm", "mean"), spread=("logit_spread", "mean"))
    if len(per_cycle) < 3:
        return None
    spread = per_cycle["spread"].astype(float)
    # Spread varies with the inputs of each cycle, so only its absolute size says "flat": under
    # 1e-3 every probability is within ~0.05% of uniform.
    if not ((per_cycle["entropy_norm"] >= 0.99).all() and spread.max() < 1e-3):
        return None
    evidence = (f"entropy / log K_eff >= {_g(float(per_cycle['entropy_norm'].min()))} in all {len(per_cycle)} "
                f"cycles; logit spread {_g(float(spread.min()))}-{_g(float(spread.max()))} across cycles")
    fix = ("Check that the head receives gradient and a real learning rate; initialize its last "
           "layer with a larger scale, or scale up advantages.")
    return evidence, fix, None, _cycles(per_cycle.index)


@diagnostic("update-without-gradient", "warning", "Parameters move without gradient")
def check_update_without_gradient(ctx: Context):
    layers = ctx.layers
    if layers.empty:
        return None
    no_grad = layers["grad_is_none"].fillna(False).astype(bool) | (layers["grad_norm"].astype(float) == 0)
    moved = layers["delta_norm"].astype(float) > 0
    flags = layers.assign(flag=no_grad & moved)
    by_layer = flags.groupby("name").agg(steps=("flag", "size"), flagged=("flag", "sum"))
    culprits = by_layer[(by_layer["steps"] >= 3) & (by_layer["flagged"] >= 0.5 * by_layer["steps"])]
    if culprits.empty:
        return None
    rows = flags[flags["flag"] & flags["name"].isin(culprits.index)]
    decay = rows["lr"].astype(float) * rows["weight_decay"].astype(float) * rows["param_norm"].astype(float)
    matches = (rows["weight_decay"].astype(float) > 0) & (
        (rows["delta_norm"].astype(float) - decay).abs() <= 0.2 * decay.abs().clip(lower=1e-30)
    )
    # a tensor with a nonzero gradient on its other steps is stopped by the loss on these (a
    # clamp: SB3's clip_range_vf with unnormalized returns selects the clipped value for every
    # row from a few epochs in), not left out of the graph
    graded = flags[flags["name"].isin(culprits.index) & ~no_grad[flags.index]]
    clamp = matches.mean() <= 0.5 and set(graded["name"]) >= set(culprits.index)
    if matches.mean() > 0.5:
        cause = "the change equals lr x weight_decay x |w|: weight decay shrinks a tensor that gets no gradient"
    elif clamp:
        cause = ("their gradient is nonzero on the other steps, so the loss stops it on these (a clamp "
                 "whose constant branch every row takes, such as value clipping against unnormalized "
                 "returns), and the optimizer's momentum moves them anyway")
    else:
        cause = "optimizer state (momentum) keeps moving a tensor whose gradient is zero"
    evidence = (f"{_names(culprits.index)} moved in {int(culprits['flagged'].sum())} of "
                f"{int(culprits['steps'].sum())} steps with zero gradient (median change "
                f"{_g(float(rows['delta_norm'].median()))}); {cause}")
    if clamp:
        fix = ("Find the clamp that zeroes their gradient on those steps: with SB3's clip_range_vf, "
               "normalize the returns (VecNormalize(norm_reward=True)) or drop value clipping "
               "(clip_range_vf=None), so that the critic keeps learning in the later epochs.")
    else:
        fix = ("Leave tensors that get no gradient out of the optimizer (or give their param group "
               "weight_decay=0), and use zero_grad(set_to_none=True).")
    return evidence, fix, _first_step(rows["step"]), _cycles(rows["cycle"])


_ADAM = {"Adam", "AdamW", "NAdam", "RAdam", "Adamax", "SparseAdam"}


@diagnostic("adam-eps-dominates", "warning", "Adam's eps is as large as the gradients")
def check_adam_eps_dominates(ctx: Context):
    optimizers = {o["index"]: o for o in ctx.meta.get("optimizers") or []}
    adam = {i: o for i, o in optimizers.items() if o.get("class") in _ADAM}
    if not adam or ctx.layers.empty:
        return None
    names = _actor_layer_names(ctx)
    layers = ctx.layers[ctx.layers["optimizer"].isin(list(adam)) & ctx.layers["name"].isin(names)]
    layers = layers[layers["grad_norm"].notna()]
    if layers.empty:
        return None
    # Gradient RMS over all actor values per step (dominated by the layers that learn most). A
    # single layer may sit near eps in healthy runs (SB3 defaults: 0.3 eps on its 64x64 layer
    # while the whole actor is at ~1.7 eps); only a whole actor far below eps is damped for real.
    sq = (layers["grad_norm"].astype(float) ** 2).groupby([layers["optimizer"], layers["step"]]).sum()
    numel = layers["numel"].astype(float).groupby([layers["optimizer"], layers["step"]]).sum()
    rms_per_step = np.sqrt(sq / numel.clip(lower=1))
    eps_per_step = pd.Series(
        [float((adam[o].get("defaults") or {}).get("eps", 1e-8)) for o, _ in rms_per_step.index],
        index=rms_per_step.index,
    )
    ratio = float((rms_per_step / eps_per_step).median())
    if not ratio < 0.1:
        return None
    eps0 = float(eps_per_step.iloc[0])
    rms0 = ratio * eps0
    evidence = (f"median gradient RMS over the actor's {int(numel.iloc[0])} values is {_g(rms0)} "
                f"over {len(rms_per_step)} steps, {_g(ratio)} x Adam eps {_g(eps0)}: each step is "
                f"damped to ~{rms0 / (rms0 + eps0):.0%} of its normal size")
    fix = ("Scale the loss up (normalize advantages or rewards) or lower Adam's eps (e.g. 1e-8) so "
           "that gradients dominate eps.")
    return evidence, fix, None, ()


# ---------------------------------------------------------------------- info


@diagnostic("kl-sign-cancellation", "info", "A mean(old - new) KL log reads ~0")
def check_kl_sign_cancellation(ctx: Context):
    steps = ctx.per_step[ctx.per_step["kl_k3"].astype(float) > 1e-4]
    if len(steps) < 4:
        return None
    k1, k3 = steps["kl_k1"].astype(float), steps["kl_k3"].astype(float)
    low = k1 < 0.5 * k3
    if low.mean() < 0.25:
        return None
    evidence = (f"k1 = mean(old - new) is below half of k3 on {int(low.sum())} of {len(steps)} steps "
                f"(negative on {int((k1 < 0).sum())}; median k1 there {_g(float(k1[low].median()))} "
                f"vs k3 {_g(float(k3[low].median()))}): positive and negative log-ratio terms cancel, "
                "so a KL log or guard built on mean(old - new) reads ~0 or negative on those steps")
    fix = "Log and guard on k3 = mean((r - 1) - log r) or k2 = mean(0.5 (log r)^2), not mean(old - new)."
    return evidence, fix, _first_step(steps.loc[low, "step"]), _cycles(steps.loc[low, "cycle"])


@diagnostic("kl-early-stop", "info", "A KL guard stops the update epochs early")
def check_kl_early_stop(ctx: Context):
    pc = ctx.per_cycle
    if str(ctx.meta.get("status", "complete")) != "complete":
        pc = pc.iloc[:-1]  # the run was interrupted: its last cycle is cut, not guarded
    if len(pc) < 2:
        return None
    usual = int(pc["n_steps"].max())
    short = pc[pc["n_steps"] < usual]
    if short.empty:
        return None
    stepless = int(ctx.pairs["step"].isna().sum())
    evidence = (f"{len(short)} of {len(pc)} cycles ran fewer optimizer steps than the usual {usual} "
                f"({_names([str(int(n)) for n in short['n_steps']], 6)}); {stepless} update rows "
                "computed a loss that reached no optimizer step")
    fix = ("Expected when a target_kl guard is on; if the guard fires every cycle, the learning rate "
           "is too high for the number of epochs.")
    return evidence, fix, None, _cycles(short["cycle"])


@diagnostic("probe-degraded", "info", "The probe itself failed somewhere")
def check_probe_degraded(ctx: Context):
    errors = ctx.meta.get("probe_errors") or {}
    if not errors:
        return None
    parts = [f"{place} failed {info.get('count')} times ({info.get('type')}: {info.get('message')})"
             for place, info in errors.items()]
    evidence = "; ".join(parts) + ". Figures that depend on those records stand on fewer samples."
    fix = "Report it with meta.json attached; training itself was not affected."
    return evidence, fix, None, ()


def run_checks(ctx: Context) -> list[Finding]:
    """Run every check in catalog order. A check that raises is reported under probe-degraded,
    never under its own id (that would be a false alarm)."""
    t = ctx.thresholds
    findings: list[Finding] = []
    broken: list[str] = []
    for diag in CATALOG:
        if diag.id in t.ignore:
            continue
        try:
            result = diag.check(ctx)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            broken.append(f"check {diag.id} failed ({type(exc).__name__}: {exc})")
            continue
        if result is None:
            continue
        evidence, fix, first_step, cycles = result
        severity = t.severities.get(diag.id, diag.severity)
        findings.append(Finding(diag.id, severity, diag.title, evidence, fix, first_step, tuple(cycles)))
        if severity == "error":
            ctx.errors_so_far.append(diag.id)
    return degraded(findings, t, *broken)


def degraded(findings: list[Finding], t: Thresholds, *broken: str) -> list[Finding]:
    """``findings`` with ``broken`` (parts of the analysis that raised) added to probe-degraded."""
    if not broken or "probe-degraded" in t.ignore:
        return findings
    merged = [f for f in findings if f.id == "probe-degraded"]
    evidence = "; ".join(([merged[0].evidence] if merged else []) + list(broken))
    findings = [f for f in findings if f.id != "probe-degraded"]
    findings.append(Finding("probe-degraded", t.severities.get("probe-degraded", "info"),
                            "The probe itself failed somewhere", evidence,
                            "Report it with meta.json attached.", None, ()))
    return findings


IDS = [d.id for d in CATALOG]
