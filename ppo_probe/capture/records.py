"""Records kept on the hot path (tensor references, no host copies) and their bulk conversion.

The hot path only appends records holding references to small device tensors. ``to_columns`` runs
on the writer thread at a flush: it concatenates per table, copies to the host once, and computes
per-distribution statistics from the kept logits in bulk, so the training thread never pays for it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch

from ..storage.schema import SAMPLES
from .fingerprint import fingerprint_many

MASKED_LOGIT = -1e7  # normalized logits at or below this count as masked categories

PHASES = ("sampling", "update", "eval")


class Generation:
    """Marks a batch of records as flushed, so that late gradient hooks know they missed it."""

    __slots__ = ("flushed",)

    def __init__(self) -> None:
        self.flushed = False


@dataclass(eq=False, slots=True)
class DistRecord:
    dist_id: int
    cycle: int
    seq: int
    grad_enabled: bool
    actor: str
    entry: str | None
    batch_shape: tuple[int, ...]
    rows: int
    n_categories: int
    logits: torch.Tensor  # detached normalized logits, [rows, K]
    # logits are written for the rows whose fingerprint falls in one of this many classes, the
    # same rows at sampling and at update; 0: none (K over keep_logits_max_k)
    logits_one_in: int
    # The actor input rows, cloned when the Categorical was built ([rows, width]); hashed into
    # ``fingerprint`` (host int64, [rows]) in bulk at the flush. Both None when there was no usable input.
    fp_input: torch.Tensor | None
    fingerprint: np.ndarray | None
    logits_require_grad: bool
    input_mutated: bool
    gen: Generation
    head: int = 0  # 0, or 1, 2, ... for further Categoricals built from the same forward
    # the rows of the entry's first direct child's input where that is another tensor (SB3's
    # preprocessed observation), hashed like ``fp_input``; None when there is none
    fp_inner: torch.Tensor | None = None
    fingerprint_inner: np.ndarray | None = None
    grad_entropy: list[torch.Tensor] | None = None  # made at the first gradient hook
    sampled: bool = False  # sample() was called on it: a sampling Categorical, whatever the grad mode
    used: bool = False  # a log_prob call was recorded on it


@dataclass(eq=False, slots=True)
class CallRecord:
    call_id: int
    dist: DistRecord
    phase: str
    cycle: int
    seq: int
    row_index: torch.Tensor | None  # dist row of each log-prob row, None when they coincide
    action: torch.Tensor  # the trainer's action tensor (detached reference, broadcastable)
    logp: torch.Tensor  # the log_prob result (detached reference)
    action_version: int  # their version counters when recorded
    logp_version: int
    n: int
    gen: Generation
    grads: list[torch.Tensor] | None = None  # made when a gradient hook is added
    grad_pass: int = -1  # log_prob calls made before its first gradient arrived; -1: none yet


@dataclass(eq=False, slots=True)
class StepLayout:
    """What an optimizer's stepped parameters are, shared by its steps while none of it changes
    (the parameters, their requires_grad, the actor parameters known): built once, not per step."""

    optimizer_class: str
    holds_actor: bool
    names: np.ndarray  # object (str)
    groups: np.ndarray  # int64: the param group of each parameter
    numels: np.ndarray  # int64
    requires_grad: np.ndarray  # bool
    feeds_logits: np.ndarray  # bool


# no slots: torch 2.3's Dynamo, compiling the step hooks' frames under a compiled
# optimizer.step, guards on the pending record by weak reference
@dataclass(eq=False)
class StepRecord:
    """One optimizer step. Its per-parameter norms are stacked into one tensor and its masks are
    bytes (few objects for the garbage collector to track while buffered); ``*_present`` say
    which parameters each quantity covers (one byte, 0 or 1, per parameter)."""

    step: int
    cycle: int
    optimizer: int
    layout: StepLayout
    lrs: tuple[Any, ...]  # per param group
    weight_decays: tuple[Any, ...]  # per param group
    grad_present: bytes
    outside_present: bytes
    delta_present: bytes = b""
    # every norm of the step, stacked: gradients [sum(grad_present)], outside changes
    # [sum(outside_present)], parameters after the step [len(names)], step deltas [sum(delta_present)]
    norms: torch.Tensor | None = None
    wall_time: float = field(default_factory=time.time)


def _host(tensors: list[torch.Tensor], dtype: torch.dtype) -> np.ndarray:
    if not tensors:
        return np.empty(0, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    try:
        # one cast of the joined tensor, not one per piece (cat promotes mixed dtypes)
        joined = torch.cat(tensors).to(dtype)
    except RuntimeError:  # tensors on several devices
        joined = torch.cat([t.detach().to("cpu", dtype) for t in tensors])
    return joined.detach().cpu().numpy()


def _scalars(values: list[torch.Tensor | None]) -> tuple[np.ndarray, np.ndarray]:
    """Host float64 values of 0-d tensors and a mask of the missing (None) ones.

    One host copy per batch, not per value. Missing entries read NaN but are told apart from a
    real NaN by the mask, so a non-finite gradient is never mistaken for an absent one.
    """
    out = np.full(len(values), np.nan)
    missing = np.array([v is None for v in values], dtype=bool)
    present = np.flatnonzero(~missing)
    if len(present):
        out[present] = _host([v.reshape(1) for v in values if v is not None], torch.float64)
    return out, missing


def _float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


@torch.no_grad()
def _row_stats(logits: torch.Tensor) -> torch.Tensor:
    """Per-row [masked count, spread of unmasked logits, entropy, entropy / log K_eff, 1 if the
    row holds a NaN or +Inf logit else 0], in float32 (the logits' own precision at most; the
    means over rows are taken in float64)."""
    # NaN or +Inf in normalized logits (-Inf is a mask); the means below skip such rows, so they
    # are counted apart: otherwise a NaN observation that the trainer does not validate vanishes
    nonfinite = (torch.isnan(logits) | torch.isposinf(logits)).any(-1).to(torch.float32)
    masked = logits <= MASKED_LOGIT
    n_masked = masked.sum(-1).to(torch.float32)
    k_eff = logits.shape[-1] - n_masked
    finite = logits.to(torch.float32).masked_fill(masked, 0.0)
    probs = finite.exp().masked_fill(masked, 0.0)
    entropy = -(probs * finite).sum(-1)
    mean = finite.sum(-1) / k_eff.clamp(min=1)
    sq = (finite - mean.unsqueeze(-1)).pow(2).masked_fill(masked, 0.0).sum(-1)
    spread = (sq / (k_eff - 1).clamp(min=1)).sqrt()
    log_k = torch.log(k_eff)
    entropy_norm = torch.where(k_eff > 1, entropy / log_k, torch.full_like(entropy, float("nan")))
    return torch.stack([n_masked, spread, entropy, entropy_norm, nonfinite], dim=-1)


class JoinedLogits:
    """The kept logits of a flush's distributions, joined once per (K, device) and shared by the
    dists table's statistics and the samples table's logits column (one cat of the per-dist
    tensors, not one per table). ``dists``: the table's first, in order, then any others."""

    def __init__(self, dists: list[DistRecord]) -> None:
        # id(dist) -> (group, first row in the group's joined tensor, position among its members)
        self.where: dict[int, tuple[tuple[int, torch.device], int, int]] = {}
        members: dict[tuple[int, torch.device], list[DistRecord]] = {}
        rows: dict[tuple[int, torch.device], int] = {}
        for d in dists:
            if d.rows <= 0 or id(d) in self.where:
                continue
            key = (d.n_categories, d.logits.device)
            group = members.setdefault(key, [])
            self.where[id(d)] = (key, rows.get(key, 0), len(group))
            rows[key] = rows.get(key, 0) + d.rows
            group.append(d)
        self.members = members
        self.joined = {
            key: torch.cat([d.logits for d in group]) if len(group) > 1 else group[0].logits
            for key, group in members.items()
        }

    def masks(self) -> dict[tuple[int, torch.device], np.ndarray]:
        """Per group, each joined row's mask code (host int64): 0 when no category is masked;
        else the bitmask of the masked ones for K <= 63, a hash of them above."""
        return {key: _mask_codes(joined) for key, joined in self.joined.items()}


_MASK_WEIGHTS: dict[int, torch.Tensor] = {}


@torch.no_grad()
def _mask_codes(logits: torch.Tensor) -> np.ndarray:
    masked = logits <= MASKED_LOGIT
    rows, k = masked.shape
    if not bool(masked.any()):  # the common case: nothing masked, no int64 [rows, K] product
        return np.zeros(rows, dtype=np.int64)
    if k <= 63:
        weights = torch.ones(k, dtype=torch.int64).bitwise_left_shift_(torch.arange(k))
    else:  # random 40-bit weights, fixed per K: a sum of up to 2^23 of them does not overflow
        if k not in _MASK_WEIGHTS:
            _MASK_WEIGHTS[k] = torch.from_numpy(np.random.default_rng(k).integers(1, 2**40, size=k, dtype=np.int64))
        weights = _MASK_WEIGHTS[k]
    weights = weights.to(masked.device)
    # in slices of ~4M elements: the int64 product is 8 bytes per logit, twice the logits' own size
    codes = [(part.to(torch.int64) * weights).sum(-1) for part in masked.split(max(1, (1 << 22) // k))]
    return torch.cat(codes).cpu().numpy()


def _dist_stats(dists: list[DistRecord], logits: JoinedLogits) -> np.ndarray:
    """[len(dists), 5] per-distribution means of the row statistics (the non-finite row flag
    summed instead), computed in bulk per K."""
    out = np.full((len(dists), 5), np.nan)
    out[:, 4] = 0.0
    means: dict[tuple[int, torch.device], np.ndarray] = {}
    for key, group in logits.members.items():
        stats = _row_stats(logits.joined[key]).cpu().numpy().astype(np.float64)
        rows = np.array([d.rows for d in group])
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
        # Mean over the rows where a statistic is defined: entropy / log K_eff is undefined on a
        # row with one valid action, and must not blank out the whole distribution.
        defined = np.isfinite(stats)
        totals = np.add.reduceat(np.where(defined, stats, 0.0), starts, axis=0)
        counts = np.add.reduceat(defined.astype(np.int64), starts, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            group_means = np.where(counts > 0, totals / counts, np.nan)
        group_means[:, 4] = totals[:, 4]
        means[key] = group_means
    for i, d in enumerate(dists):
        found = logits.where.get(id(d))
        if found is not None:
            out[i] = means[found[0]][found[2]]
    return out


def _grad_entropy(dists: list[DistRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Per dist, the sum over its entropy's gradients of their mean (float64), and a mask of the
    dists that got none; one host copy for all of them."""
    out = np.full(len(dists), np.nan)
    missing = np.ones(len(dists), dtype=bool)
    have = [i for i, d in enumerate(dists) if d.grad_entropy]
    if not have:
        return out, missing
    pieces = [g for i in have for g in cast(list, dists[i].grad_entropy)]
    lengths = np.array([g.numel() for g in pieces], dtype=np.int64)
    flat = _host(pieces, torch.float64)
    piece_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sums = np.add.reduceat(flat, piece_starts) if len(flat) else np.zeros(len(pieces))
    with np.errstate(invalid="ignore", divide="ignore"):
        piece_means = np.where(lengths > 0, sums / lengths, np.nan)  # an empty gradient: NaN, as torch's mean
    per_dist = np.array([len(cast(list, dists[i].grad_entropy)) for i in have])
    out[have] = np.add.reduceat(piece_means, np.concatenate([[0], np.cumsum(per_dist)[:-1]]))
    missing[have] = False
    return out, missing


def dist_columns(dists: list[DistRecord], logits: JoinedLogits | None = None) -> dict[str, Any]:
    stats = _dist_stats(dists, logits if logits is not None else JoinedLogits(dists))
    grad_entropy, no_grad = _grad_entropy(dists)
    return {
        "dist_id": [d.dist_id for d in dists],
        "cycle": [d.cycle for d in dists],
        "seq": [d.seq for d in dists],
        "grad_enabled": [d.grad_enabled for d in dists],
        "sampled": [d.sampled for d in dists],
        "actor": [d.actor for d in dists],
        "entry": [d.entry for d in dists],
        "head": [d.head for d in dists],
        "batch_shape": _shapes([d.batch_shape for d in dists]),
        "rows": [d.rows for d in dists],
        "n_categories": [d.n_categories for d in dists],
        "masked_mean": stats[:, 0],
        "logit_spread": stats[:, 1],
        "entropy": stats[:, 2],
        "entropy_norm": stats[:, 3],
        "nonfinite_rows": stats[:, 4].astype(np.int32),
        "logits_require_grad": [d.logits_require_grad for d in dists],
        "input_mutated": [d.input_mutated for d in dists],
        "grad_entropy": pa.array(grad_entropy, mask=no_grad, type=pa.float32()),
    }


def _shapes(shapes: list[tuple[int, ...]]) -> pa.Array:
    """A list<int32> column built from flat values and offsets: no Python list per row (a list per
    distribution was ~1,000 short-lived objects a flush for the garbage collector)."""
    offsets = np.concatenate([[0], np.cumsum([len(shape) for shape in shapes])]).astype(np.int32)
    values = np.fromiter(itertools.chain.from_iterable(shapes), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def ensure_fingerprints(dists: list[DistRecord]) -> None:
    """Hash the kept inputs of ``dists`` that have no fingerprint yet, to host arrays (at the
    flush: on the writer thread where the inputs lie on an accelerator)."""
    todo = list({id(d): d for d in dists if d.fingerprint is None and d.fp_input is not None}.values())
    inner = list({id(d): d for d in dists if d.fingerprint_inner is None and d.fp_inner is not None}.values())
    if not todo and not inner:
        return
    kept = [cast(torch.Tensor, d.fp_input) for d in todo] + [cast(torch.Tensor, d.fp_inner) for d in inner]
    hashes = fingerprint_many(kept)
    for d, h in zip(todo, hashes[: len(todo)]):
        d.fingerprint, d.fp_input = h, None
    for d, h in zip(inner, hashes[len(todo):]):
        d.fingerprint_inner, d.fp_inner = h, None


def sample_columns(calls: list[CallRecord], logits: JoinedLogits | None = None) -> tuple[dict[str, Any], int]:
    """Columns of the samples table, and how many calls the trainer wrote into after recording.

    Such calls keep their rows but lose their fingerprint (so they are never paired): the values
    read now may not be the ones the trainer used.
    """
    if not calls:
        return {name: [] for name in SAMPLES.names}, 0
    ensure_fingerprints([c.dist for c in calls])
    counts = np.array([c.n for c in calls], dtype=np.int64)
    total = int(counts.sum())
    # by call position: the dist row of each of the call's rows where they are not its own rows
    # in order (a broadcast log_prob), on the host
    row_index = {i: c.row_index.cpu().numpy() for i, c in enumerate(calls) if c.row_index is not None}

    def per_call(values: list[Any]) -> np.ndarray:
        return np.repeat(np.array(values), counts)

    def rows_of(i: int, hashes: np.ndarray) -> np.ndarray:
        index = row_index.get(i)
        return hashes if index is None else hashes[index]

    changed = [c.action._version != c.action_version or c.logp._version != c.logp_version for c in calls]
    def hashes(name: str) -> tuple[np.ndarray, np.ndarray]:
        """The rows' ``name`` hashes (0 where absent) and where they are present."""
        usable = [getattr(c.dist, name) is not None and not bad for c, bad in zip(calls, changed)]
        present = np.repeat(np.array(usable, dtype=bool), counts)
        values = np.zeros(total, dtype=np.int64)
        parts = [rows_of(i, getattr(c.dist, name)) for i, (c, ok) in enumerate(zip(calls, usable)) if ok]
        if parts:
            values[present] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return values, present

    fingerprint, has_fp = hashes("fingerprint")
    fingerprint_inner, has_inner = hashes("fingerprint_inner")
    # the logits are kept for the same rows at sampling and update: chosen by the key the update
    # can pair on (the inner input's hash where there is one, as an update entering there has)
    selector = np.where(has_inner, fingerprint_inner, fingerprint)

    has_grad = per_call([bool(c.grads) for c in calls])
    grad = np.zeros(total, dtype=np.float32)
    grad_lists = [c.grads for c in calls if c.grads]
    if grad_lists:
        summed = [torch.stack(g).sum(0) if len(g) > 1 else g[0] for g in grad_lists]
        grad[has_grad] = _host(summed, torch.float32)

    one_in = per_call([c.dist.logits_one_in for c in calls])
    grad_pass = per_call([c.grad_pass for c in calls])
    # [B] actions and log-probs, the common case, need no view per call
    actions = [
        c.action if c.action.dim() == 1 and c.action.shape == c.logp.shape
        else torch.broadcast_to(c.action, c.logp.shape).reshape(-1)
        for c in calls
    ]  # fmt: skip
    if logits is None:
        logits = JoinedLogits([c.dist for c in calls])
    keep = (has_fp | has_inner) & logits_kept(selector, one_in)
    group, position = _dist_rows(calls, counts, logits, row_index)
    columns = {
        "cycle": per_call([c.cycle for c in calls]),
        "seq": per_call([c.seq for c in calls]),
        "phase": per_call([c.phase for c in calls]),
        "actor": per_call([c.dist.actor for c in calls]),
        "dist_id": per_call([c.dist.dist_id for c in calls]),
        "head": per_call([c.dist.head for c in calls]),
        "call_id": per_call([c.call_id for c in calls]),
        "call_rows": per_call([c.n for c in calls]),
        "fingerprint": pa.array(fingerprint, mask=~has_fp, type=pa.int64()),
        "fingerprint_inner": pa.array(fingerprint_inner, mask=~has_inner, type=pa.int64()),
        "action": _host(actions, torch.int64),
        "logp": _host([c.logp if c.logp.dim() == 1 else c.logp.reshape(-1) for c in calls], torch.float32),
        "grad_logp": pa.array(grad, mask=~has_grad, type=pa.float32()),
        "grad_pass": pa.array(grad_pass, mask=grad_pass < 0, type=pa.int64()),
        "mask": _mask_column(logits, group, position),
        "logits": _logits_column(calls, counts, keep, logits, group, position),
    }
    return columns, sum(changed)


def logits_kept(fingerprint: np.ndarray, one_in: np.ndarray) -> np.ndarray:
    """Rows whose logits are written: those whose fingerprint, mixed (a multiply and a shift: the
    fingerprint is a linear hash, its low bits follow the input's), is 0 modulo ``one_in`` (0: none).
    A function of the input alone, so a sample's sampling row and its update rows agree."""
    with np.errstate(over="ignore"):
        mixed = fingerprint.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # int64 in, no copy
    mixed ^= mixed >> np.uint64(32)
    return (one_in > 0) & (mixed % np.maximum(one_in, 1).astype(np.uint64) == 0)


def _dist_rows(
    calls: list[CallRecord], counts: np.ndarray, logits: JoinedLogits, row_index: dict[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Where each log-prob row's dist row lies: the index of its group in ``logits.joined`` (-1 for
    a dist with no rows) and its row in that group's joined tensor."""
    keys = list(logits.joined)
    group_of = {key: g for g, key in enumerate(keys)}
    found = [logits.where.get(id(c.dist)) for c in calls]
    call_group = np.array([group_of[f[0]] if f is not None else -1 for f in found])
    call_start = np.array([f[1] if f is not None else 0 for f in found], dtype=np.int64)
    first_row = np.concatenate([[0], np.cumsum(counts)[:-1]])
    within = np.arange(int(counts.sum())) - np.repeat(first_row, counts)
    for i, index in row_index.items():
        within[first_row[i] : first_row[i] + counts[i]] = index
    return np.repeat(call_group, counts), np.repeat(call_start, counts) + within


def _mask_column(logits: JoinedLogits, group: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Each row's mask code (:meth:`JoinedLogits.masks`), 0 for rows of a dist with no rows."""
    out = np.zeros(len(group), dtype=np.int64)
    for g, codes in enumerate(logits.masks().values()):
        chosen = np.flatnonzero(group == g)
        out[chosen] = codes[position[chosen]]
    return out


def _logits_column(
    calls: list[CallRecord], counts: np.ndarray, keep: np.ndarray, logits: JoinedLogits,
    group: np.ndarray, position: np.ndarray,
) -> pa.Array:
    """The logits of the ``keep`` rows (a [rows] mask; only rows of calls whose logits are kept);
    null elsewhere. Gathered from the flush's joined logits (``group``, ``position``: see
    :func:`_dist_rows`), one gather and one host copy per K (and device); with several K
    (MultiDiscrete heads of different sizes) the groups' rows are put back in row order on the host."""
    k_row = np.repeat([c.dist.n_categories for c in calls], counts)
    offsets = np.concatenate([[0], np.cumsum(np.where(keep, k_row, 0))]).astype(np.int32)
    rows = np.flatnonzero(keep)
    if not len(rows):
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array([], type=pa.float32()),
                                        mask=pa.array(~keep, type=pa.bool_()))
    keys = list(logits.joined)
    position, group = position[rows], group[rows]
    if len(keys) == 1:  # one K: the rows in order are the values in order
        joined = logits.joined[keys[0]]
        index_t = torch.from_numpy(position).to(joined.device)
        values = pa.array(_host([joined[index_t].reshape(-1)], torch.float32), type=pa.float32())
    else:
        parts, dest = [], []
        for g, key in enumerate(keys):
            chosen = np.flatnonzero(group == g)
            if not len(chosen):
                continue
            joined = logits.joined[key]
            parts.append(joined[torch.from_numpy(position[chosen]).to(joined.device)].reshape(-1))
            starts = offsets[:-1][rows[chosen]]  # where each row's values begin
            dest.append((starts[:, None] + np.arange(key[0], dtype=np.int32)).reshape(-1))
        flat = np.empty(int(offsets[-1]), dtype=np.float32)
        flat[np.concatenate(dest)] = _host(parts, torch.float32)
        values = pa.array(flat, type=pa.float32())
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~keep, type=pa.bool_()))


def _step_norms(steps: list[StepRecord], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-parameter gradient, outside-change, parameter and delta norms (NaN where absent) from
    the steps' stacked norms: one host copy for all of them."""
    # each step's norms are the present entries of 4 blocks of n slots: grad, outside, param, delta
    slots = np.frombuffer(
        b"".join(b"".join((s.grad_present, s.outside_present, b"\x01" * int(n), s.delta_present))
                 for s, n in zip(steps, counts)),
        dtype=np.uint8,
    ).astype(bool)
    values = np.full(len(slots), np.nan)
    given = [s.norms.reshape(-1) for s in steps if s.norms is not None and s.norms.numel()]
    if given:
        values[slots] = _host(given, torch.float64)
    # parameter j of a step with n parameters whose slots start at 4 * start: slot 4 * start + j + b * n
    start = np.repeat(np.cumsum(counts) - counts, counts)
    n = np.repeat(counts, counts)
    j = np.arange(int(counts.sum())) - start
    out: dict[str, np.ndarray] = {}
    for b, name in enumerate(("grad", "outside", "param", "delta")):
        index = 4 * start + j + b * n
        out[name], out[f"{name}_missing"] = values[index], ~slots[index]
    return out


def _per_param_group(steps: list[StepRecord], values: list[tuple[Any, ...]]) -> np.ndarray:
    """A per-group quantity of each step (lr, weight decay), as float64 per parameter."""
    return np.concatenate([
        np.array([_float(v) for v in per_group], dtype=np.float64)[s.layout.groups] if len(s.layout.groups)
        else np.empty(0) for s, per_group in zip(steps, values)
    ]) if steps else np.empty(0)


def step_columns(steps: list[StepRecord]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Columns of the steps table and of the layers table."""
    counts = np.array([len(s.layout.names) for s in steps], dtype=np.int64)
    norms = _step_norms(steps, counts)
    grad, grad_missing = norms["grad"], norms["grad_missing"]
    delta, delta_missing = norms["delta"], norms["delta_missing"]
    outside, outside_missing = norms["outside"], norms["outside_missing"]
    pnorm = norms["param"]
    step_of = np.repeat(np.arange(len(steps)), counts)

    def per_step_norm(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        # global L2 norm per step over present entries (a NaN entry makes it NaN); none present: NaN
        sq = np.bincount(step_of[~missing], weights=values[~missing] ** 2, minlength=len(steps))
        present = np.bincount(step_of[~missing], minlength=len(steps))
        return np.where(present > 0, np.sqrt(sq), np.nan)

    def per_param(name: str, dtype: Any) -> np.ndarray:
        parts = [getattr(s.layout, name) for s in steps]
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    def per_step(values: list[Any]) -> np.ndarray:
        return np.repeat(np.array(values), counts)

    step_ids, cycles, optimizers = [s.step for s in steps], [s.cycle for s in steps], [s.optimizer for s in steps]
    step_table = {
        "step": step_ids,
        "cycle": cycles,
        "optimizer": optimizers,
        "optimizer_class": [s.layout.optimizer_class for s in steps],
        "holds_actor": [s.layout.holds_actor for s in steps],
        "n_params": counts,
        "lr": [_float(s.lrs[s.layout.groups[0]]) if len(s.layout.groups) else np.nan for s in steps],
        "grad_norm": per_step_norm(grad, grad_missing),
        "delta_norm": per_step_norm(delta, delta_missing),
        "outside_delta_norm": per_step_norm(outside, outside_missing),
        "wall_time": [s.wall_time for s in steps],
    }
    layer_table = {
        "step": per_step(step_ids),
        "cycle": per_step(cycles),
        "optimizer": per_step(optimizers),
        "name": per_param("names", object),
        "group": per_param("groups", np.int64),
        "lr": _per_param_group(steps, [s.lrs for s in steps]),
        "weight_decay": _per_param_group(steps, [s.weight_decays for s in steps]),
        "numel": per_param("numels", np.int64),
        "requires_grad": per_param("requires_grad", bool),
        "grad_is_none": grad_missing,
        "grad_norm": pa.array(grad, mask=grad_missing, type=pa.float32()),
        "param_norm": pnorm,
        "delta_norm": pa.array(delta, mask=delta_missing, type=pa.float32()),
        "outside_delta_norm": pa.array(outside, mask=outside_missing, type=pa.float32()),
        "feeds_logits": per_param("feeds_logits", bool),
    }
    return step_table, layer_table
