"""One watch's capture state: cycles, Categorical facts, steps, buffering and flushing."""

from __future__ import annotations

import math
import traceback
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import categorical, dynamo
from .entries import EntryTracker, version_of
from .graph import graph_leaves
from .records import CallRecord, DistRecord, Generation, JoinedLogits, StepRecord, dist_columns
from .records import sample_columns, step_columns

# When nothing has stepped for a long time (gradient accumulation without end), flush anyway at
# this multiple of flush_rows: gradients arriving later for flushed rows are counted as lost.
_HARD_CAP = 8


@dataclass
class Settings:
    keep_logits_max_k: int = 64
    # keep the logits of one row in this many (chosen by the input's fingerprint); None: one in K
    logits_one_in: int | None = None
    flush_rows: int = 65_536
    flush_bytes: int = 64 * 2**20  # kept logits and input rows
    strict: bool = False
    # the schedule: every cycle below first_cycles is recorded, then those divisible by every
    first_cycles: int = 8
    every: int = 20

    def scheduled(self, cycle: int) -> bool:
        return cycle < self.first_cycles or cycle % self.every == 0


def _storage_of(t: torch.Tensor) -> int:
    """The address of a tensor's storage: a view of the sampled actions shares it (no sync)."""
    return int(t.untyped_storage().data_ptr())


class ProbeFailures:
    """Counts failures of the probe itself per place; keeps the first message of each."""

    def __init__(self) -> None:
        self.by_place: dict[str, dict[str, Any]] = {}

    def add(self, place: str, exc: BaseException) -> bool:
        """Record ``exc``; returns True the first time ``place`` fails."""
        entry = self.by_place.get(place)
        if entry is None:
            self.by_place[place] = {
                "count": 1,
                "type": type(exc).__name__,
                "message": str(exc)[:500],
                "traceback": "".join(traceback.format_exception(exc))[-2000:],
            }
            return True
        entry["count"] += 1
        return False


class Session:
    """Receives hook events (never raising into the trainer) and hands batches to a writer."""

    def __init__(self, settings: Settings, submit: Any, warn: Any) -> None:
        self.settings = settings
        self._submit = submit
        self._warn = warn
        self.failures = ProbeFailures()
        self.entries = EntryTracker(self.fail)
        # cycle state
        self.cycle = 0
        self.seq = 0  # optimizer steps taken so far, all watched optimizers
        self.steps_in_cycle = 0
        self.seen_sample = False
        # the schedule (Settings.scheduled): while skipping, the hooks only count steps and find
        # cycle boundaries; the update phase just before a recorded cycle is armed (below); what
        # it records (no-grad Categoricals of the skipped cycle) is dropped at the flush
        self.skipping = False
        # armed: the update phase of a skipped cycle before a recorded one; the forward hooks are
        # back and no-grad Categoricals are recorded (one may open the next cycle), but
        # update-phase Categoricals and optimizer steps are not: only the parameters' snapshots
        # are kept current, for the next cycle's first step (recording that phase whole and
        # dropping it cost about as much as a recorded cycle: 1.09x plain on the 3x512 MLP)
        self.arming = False
        self._armed_dist: tuple[weakref.ref, tuple[Any, ...]] | None = None  # see on_dist_init
        # a sample() made with grad enabled, until a log_prob tells what it was (see on_sample):
        # (the Categorical, the storage of what sample() returned, its record)
        self._grad_sample: tuple[weakref.ref, int, DistRecord | None] | None = None
        self.recorded_cycles = 1
        self.suspend: Any = lambda: None  # set by the watch: detach module hooks, drop snapshots
        self.resume: Any = lambda: None  # re-attach them
        # set by the watch: the Categorical methods whose events are needed from now on (see
        # categorical.set_needs: all, but for a skipped cycle's phases)
        self.quiet: Any = lambda needs: None
        self._graph_walked: dict[str, int] = {}  # actor -> the cycle its logits' graph was walked
        # identities
        # id(Categorical) -> (weak reference to it, its record); looked up without allocating
        # (a WeakKeyDictionary makes a weak reference per lookup); dead entries are pruned as the
        # table grows and at each flush
        self._dist_of: dict[int, tuple[weakref.ref, DistRecord]] = {}
        self._dist_of_limit = 256  # pruned past this: few retained objects for the collector
        self._names: dict[int, str] = {}
        self._module_params: set[int] = set()
        self._logit_params: dict[int, tuple[weakref.ref, str]] = {}
        # raised whenever the actor parameters known change (optimizer steps' layouts depend on them)
        self.actor_epoch = 0
        self._next_dist = 0
        self._last_dist: DistRecord | None = None
        self._next_call = 0
        self._off_host = False  # a buffered tensor lives on an accelerator (see flush)
        # buffers
        self._gen = Generation()
        self._dists: list[DistRecord] = []
        self._calls: list[CallRecord] = []
        self._steps: list[StepRecord] = []
        self._rows = 0
        self._buffered_bytes = 0
        self._tensor_hooks: list[Any] = []
        self.counts = {
            "dists": 0,
            "log_prob_calls": 0,
            "rows": 0,
            "steps": 0,
            "unattributed_dists": 0,
            "untracked_log_prob_calls": 0,
            "late_gradients": 0,
            "calls_changed_after_record": 0,
            "dist_init_failures": 0,
            "nonfinite_dist_inputs": 0,
        }

    # ---------------------------------------------------------------- failures

    def fail(self, place: str, exc: BaseException) -> None:
        if self.failures.add(place, exc):
            self._warn(f"ppo_probe: the probe failed in {place} ({type(exc).__name__}: {exc}); "
                       "training continues, the run records what is missing")
        if self.settings.strict:
            raise exc

    # ---------------------------------------------------------------- identities

    def name_params(self, actor: str, module: nn.Module, prefix: bool) -> None:
        for name, p in module.named_parameters():
            self._names.setdefault(id(p), f"{actor}.{name}" if prefix else name)
            self._module_params.add(id(p))
        self.actor_epoch += 1

    def param_name(self, p: torch.Tensor) -> str:
        name = self._names.get(id(p))
        if name is None and self.entries.roots:  # watch-everything mode: name by root label
            for ref, label in list(self.entries.roots.values()):
                module = ref()
                for sub, q in module.named_parameters() if module is not None else ():
                    self._names.setdefault(id(q), f"{label}.{sub}")
            name = self._names.get(id(p))
        if name is None:
            name = f"param{len(self._names)}[{'x'.join(map(str, p.shape))}]"
            self._names[id(p)] = name
        return name

    def feeds_logits(self, p: torch.Tensor) -> bool:
        return id(p) in self._logit_params

    def holds_actor(self, params: Iterable[torch.Tensor]) -> bool:
        actor = self._logit_params.keys() or self._module_params
        if not actor:
            return True  # nothing known yet: every step counts
        return any(id(p) in actor for p in params)

    def logit_params(self) -> list[tuple[torch.Tensor, str]]:
        out = []
        for ref, name in self._logit_params.values():
            p = ref()
            if p is not None:
                out.append((p, name))
        return out

    # ---------------------------------------------------------------- Categorical events

    def on_dist_init(self, dist: Any, source: Any = None) -> None:
        if self._grad_sample is not None:
            self._settle_grad_sample(None, None)
        if self.skipping:
            return
        try:
            if self.arming and torch.is_grad_enabled():
                # not recorded (a skipped cycle's update), but it takes its forward's inputs as a
                # recorded one would; kept aside in case it is sampled from (the next cycle's first)
                self._armed_dist = (weakref.ref(dist), tuple(self.entries.pending))
                self.entries.pending.clear()
                return
            self._record_dist(dist, source if isinstance(source, torch.Tensor) else None)
        except Exception as exc:  # noqa: BLE001
            self.fail("Categorical capture", exc)

    def on_dist_init_failed(self, args: Any, kwargs: Any) -> None:
        try:
            self.counts["dist_init_failures"] += 1
            tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
            # Off the hot path (the trainer is crashing), so a host sync is acceptable here.
            if any(not bool(torch.isfinite(t.detach()).all()) for t in tensors):
                self.counts["nonfinite_dist_inputs"] += 1
        except Exception as exc:  # noqa: BLE001
            self.fail("Categorical capture", exc)

    def _prune_dist_of(self) -> None:
        self._dist_of = {key: found for key, found in self._dist_of.items() if found[0]() is not None}
        self._dist_of_limit = max(256, 2 * len(self._dist_of))

    def _record_of(self, dist: Any) -> DistRecord | None:
        found = self._dist_of.get(id(dist))
        return found[1] if found is not None and found[0]() is dist else None

    def _record_dist(self, dist: Any, source: torch.Tensor | None) -> None:
        grad = torch.is_grad_enabled()
        state = dist.__dict__
        param = state["_param"]
        batch_shape = tuple(dist.batch_shape)
        rows = math.prod(batch_shape)
        k = int(dist._num_events)
        # detached, so no graph is recorded: no no_grad() block needed (it costs more than these)
        logits = state.get("logits")
        if logits is None:
            logits = torch.log(state["probs"].detach())
        elif logits.requires_grad:
            logits = logits.detach()
        if logits.dim() != 2:
            logits = logits.reshape(rows, k)

        previous = self._record_of(dist)  # a subclass re-running __init__ (e.g. masking)
        fingerprint = fingerprint_inner = None
        if previous is not None and previous.batch_shape == batch_shape:
            actor, entry_name, head = previous.actor, previous.entry, previous.head
            fp_input, fingerprint = previous.fp_input, previous.fingerprint
            fp_inner, fingerprint_inner = previous.fp_inner, previous.fingerprint_inner
            mutated = previous.input_mutated
        else:
            entry, head = self.entries.attribute(grad, batch_shape, source)
            first = self._last_dist
            if head and entry is not None and first is not None and first.rows == rows and first.entry == entry.module:
                # a further head of the same forward: share the first head's kept input rows
                actor, entry_name = first.actor, first.entry
                fp_input, fingerprint, mutated = first.fp_input, first.fingerprint, first.input_mutated
                fp_inner, fingerprint_inner = first.fp_inner, first.fingerprint_inner
            else:
                actor, entry_name, fp_input, fp_inner, mutated = self._keep_input(entry, rows)
                fingerprint_inner = None

        if grad and param.requires_grad and self._graph_walked.get(actor) != self.cycle:
            self._graph_walked[actor] = self.cycle  # once per actor and cycle
            self._discover_actor(param)

        record = DistRecord(
            dist_id=self._next_dist,
            cycle=self.cycle,
            seq=self.seq,
            grad_enabled=grad,
            actor=actor,
            entry=entry_name,
            batch_shape=batch_shape,
            rows=rows,
            n_categories=k,
            logits=logits,
            logits_one_in=self._logits_one_in(k),
            fp_input=fp_input,
            fingerprint=fingerprint,
            fp_inner=fp_inner,
            fingerprint_inner=fingerprint_inner,
            logits_require_grad=bool(param.requires_grad),
            input_mutated=mutated,
            gen=self._gen,
            head=head,
        )
        if previous is not None and not (previous.used or previous.sampled or previous.grad_entropy) \
                and self._dists and self._dists[-1] is previous:
            # the same instance initialized again before any event (sb3-contrib's
            # MaskableCategorical runs __init__ three times: unmasked twice, then with the masks):
            # only the last state is the distribution the trainer uses
            self._dists.pop()
            self.counts["dists"] -= 1
            if previous.entry is None:
                self.counts["unattributed_dists"] -= 1
            self._buffered_bytes -= previous.logits.nbytes
        self._last_dist = record
        if not logits.is_cpu:
            self._off_host = True
        self._next_dist += 1
        self.counts["dists"] += 1
        if entry_name is None:
            self.counts["unattributed_dists"] += 1
        self._dist_of[id(dist)] = (weakref.ref(dist), record)
        if len(self._dist_of) > self._dist_of_limit:
            self._prune_dist_of()
        self._dists.append(record)
        self._buffered_bytes += logits.nbytes
        if fp_input is not None:
            self._buffered_bytes += fp_input.nbytes
        if fp_inner is not None:
            self._buffered_bytes += fp_inner.nbytes

    def _logits_one_in(self, k: int) -> int:
        if k > self.settings.keep_logits_max_k:
            return 0
        return self.settings.logits_one_in or max(1, k)

    def _keep_input(self, entry: Any, rows: int) -> tuple[str, str | None, Any, Any, bool]:
        """Clone the attributed input rows now (one op, no sync); they are hashed in bulk at the
        flush, so a buffer the trainer overwrites later still pairs. Also the rows of the first
        direct child's input where that is another tensor (``Entry.inner``)."""
        if entry is None:
            return "unattributed", None, None, None, False
        if entry.current_version() != entry.version:  # changed in place between forward and here
            return entry.actor, entry.module, None, None, True
        if entry.parts is None:
            tensor = entry.tensor.detach() if entry.tensor.requires_grad else entry.tensor  # no graph recorded
            kept = tensor.reshape(rows, -1).clone()
        else:  # a dict observation: its tensors side by side, in key order (cat copies)
            kept = torch.cat([p.detach().reshape(rows, -1) for p in entry.parts], dim=1)
        inner, inner_parts = entry.inner, entry.inner_parts
        kept_inner = None
        if inner is None or version_of(inner, inner_parts) != entry.inner_version:
            pass
        elif inner_parts is not None:
            if all(p.numel() % rows == 0 for p in inner_parts):
                kept_inner = torch.cat([p.detach().reshape(rows, -1) for p in inner_parts], dim=1)
        elif inner.numel() % rows == 0:
            kept_inner = inner.detach().reshape(rows, -1).clone()
        return entry.actor, entry.module, kept, kept_inner, False

    def _discover_actor(self, logits_param: torch.Tensor) -> None:
        for leaf in graph_leaves(logits_param):
            if id(leaf) not in self._logit_params:
                self._logit_params[id(leaf)] = (weakref.ref(leaf), self.param_name(leaf))
                self.actor_epoch += 1

    def on_sample(self, dist: Any, result: Any = None) -> None:
        if self.skipping and self.steps_in_cycle == 0:
            return  # a skipped cycle's sampling phase: the cheapest path
        try:
            if self._grad_sample is not None:
                self._settle_grad_sample(None, None)
                if self.skipping and self.steps_in_cycle == 0:
                    return  # that opened a skipped cycle (this sample is its sampling phase's)
            if torch.is_grad_enabled() and isinstance(result, torch.Tensor):
                # With grad enabled, sample() may be a rollout's (run without torch.no_grad(), its
                # old log-probs detached afterwards) or an update's that discards the sample
                # (skrl's CategoricalMixin.act samples, then takes log_prob(taken_actions)). The
                # log_prob that follows tells them apart: on the sampled actions, a rollout's.
                self._grad_sample = (weakref.ref(dist), _storage_of(result), self._record_of(dist))
                return
            self._sampled(dist)
        except Exception as exc:  # noqa: BLE001
            self.fail("Categorical capture", exc)

    def _settle_grad_sample(self, dist: Any, value: Any) -> None:
        """Decide the pending grad-mode sample(): a log_prob of ``dist`` on ``value`` (None: no
        log_prob came before the next Categorical or sample, which reads as a rollout's, as every
        sample() did before)."""
        pending, self._grad_sample = self._grad_sample, None
        if pending is None:
            return
        sampled = pending[0]()
        if sampled is None:
            # freed before any log_prob (`Categorical(logits=actor(obs)).sample()` in grad mode,
            # the distribution dropped at once; Tianshou's collector's last of a cycle): no
            # log_prob can follow, which reads as a rollout's
            self._mark_sampled(pending[2])
            return
        if sampled is dist and not (isinstance(value, torch.Tensor) and _storage_of(value) == pending[1]):
            return  # log_prob of other actions: an update's Categorical that also sampled
        self._sampled(sampled)

    def _sampled(self, dist: Any) -> None:
        """sample() marks a sampling Categorical, also one built with grad enabled, and opens a
        cycle after optimizer steps."""
        record = self._record_of(dist)
        if record is None and self.arming and torch.is_grad_enabled():
            # the armed phase skips grad-mode constructions (the update's): one sampled from
            # is the next cycle's first, recorded now with the inputs its construction took
            kept = self._armed_dist
            if kept is not None and kept[0]() is dist:
                self.entries.pending.extend(kept[1])
            self._record_dist(dist, None)
            record = self._record_of(dist)
        self._mark_sampled(record)

    def _mark_sampled(self, record: DistRecord | None) -> None:
        if record is not None:
            record.sampled = True
        self.seen_sample = True
        if self.steps_in_cycle > 0:
            self._new_cycle(record)

    def on_log_prob(self, dist: Any, value: Any, result: torch.Tensor) -> None:
        if self._grad_sample is not None:
            try:
                self._settle_grad_sample(dist, value)
            except Exception as exc:  # noqa: BLE001
                self.fail("Categorical capture", exc)
        if self.skipping:
            if self.steps_in_cycle > 0 and not self.seen_sample and not torch.is_grad_enabled():
                try:
                    self._new_cycle(self._record_of(dist))
                except Exception as exc:  # noqa: BLE001
                    self.fail("log_prob capture", exc)
            return
        if self.arming and torch.is_grad_enabled():
            return
        try:
            self._record_log_prob(dist, value, result)
        except Exception as exc:  # noqa: BLE001
            self.fail("log_prob capture", exc)

    def _record_log_prob(self, dist: Any, value: Any, result: torch.Tensor) -> None:
        record = self._record_of(dist)
        if record is None or not isinstance(value, torch.Tensor):
            self.counts["untracked_log_prob_calls"] += 1
            return
        grad = torch.is_grad_enabled()
        if grad and not record.sampled:
            phase = "update"
        else:
            if self.steps_in_cycle > 0 and not self.seen_sample:
                self._new_cycle(record)  # trainers that never call sample(): log_prob marks the boundary
            phase = "sampling" if self.steps_in_cycle == 0 else "eval"

        shape = tuple(result.shape)
        row_index = None
        if shape != record.batch_shape:
            index = torch.arange(record.rows, device=result.device).reshape(record.batch_shape)
            row_index = torch.broadcast_to(index, shape).reshape(-1)
        # References, not copies: conversion happens in bulk at the flush, where the version
        # counters tell whether the trainer wrote into either tensor in the meantime.
        # detached aliases even without grad: the trainer's own tensors are often views (of
        # multinomial's and gather's outputs), and holding one keeps its base alive too
        action = value.detach()
        logp = result.detach()
        n = result.numel()
        call = CallRecord(
            call_id=self._next_call,
            dist=record,
            phase=phase,
            cycle=self.cycle,
            seq=self.seq,
            row_index=row_index,
            action=action,
            logp=logp,
            action_version=action._version,
            logp_version=logp._version,
            n=n,
            gen=self._gen,
        )
        record.used = True
        self._next_call += 1
        self.counts["log_prob_calls"] += 1
        self.counts["rows"] += n
        self._calls.append(call)
        self._rows += n
        if grad and result.requires_grad:
            call.grads = []
            self._add_tensor_hook(result, self._grad_hook(call.grads, call.gen, call))
        if phase == "sampling":
            self._maybe_flush(1)
        else:
            self._maybe_flush(_HARD_CAP)

    def on_entropy(self, dist: Any, result: torch.Tensor) -> None:
        if self.skipping or self.arming:
            return
        if not result.requires_grad:  # a rollout's entropy: no gradient will come
            return
        try:
            record = self._record_of(dist)
            if record is not None and torch.is_grad_enabled():
                if record.grad_entropy is None:
                    record.grad_entropy = []
                self._add_tensor_hook(result, self._grad_hook(record.grad_entropy, record.gen))
        except Exception as exc:  # noqa: BLE001
            self.fail("entropy capture", exc)

    def _add_tensor_hook(self, tensor: torch.Tensor, hook: Any) -> None:
        # Handles are dropped at each new cycle; a run that never starts one keeps the newest.
        if len(self._tensor_hooks) >= 100_000:
            for handle in self._tensor_hooks[:50_000]:
                handle.remove()
            del self._tensor_hooks[:50_000]
        self._tensor_hooks.append(tensor.register_hook(hook))

    def _grad_hook(self, sink: list[torch.Tensor], gen: Generation, call: CallRecord | None = None) -> Any:
        def hook(grad: torch.Tensor) -> None:
            try:
                if gen.flushed:
                    self.counts["late_gradients"] += 1
                    return
                if call is not None and call.grad_pass < 0:
                    # which backward pass: the log_prob calls made before it (gradient
                    # accumulation runs one pass per micro-batch, a summed loss one for all)
                    call.grad_pass = self._next_call
                sink.append(grad.detach().reshape(-1).to(torch.float32, copy=True))
            except Exception as exc:  # noqa: BLE001
                self.fail("gradient hook", exc)

        return hook

    # ---------------------------------------------------------------- steps and cycles

    def on_step_done(self, record: StepRecord) -> None:
        if record.norms is not None and not record.norms.is_cpu:
            self._off_host = True
        self._steps.append(record)
        self.seq += 1
        self.steps_in_cycle += 1
        self.counts["steps"] += 1
        self._maybe_flush(1)

    def on_skipped_step(self) -> bool:
        """An optimizer step in a cycle the schedule skips; True when the watch is armed (the
        next cycle is recorded: from this cycle's first step on, the forward hooks are back and
        the parameters' snapshots are kept current)."""
        self.seq += 1
        self.steps_in_cycle += 1
        if self.steps_in_cycle == 1:
            if self.settings.scheduled(self.cycle + 1):
                self.skipping = False
                self.arming = True
                self.resume()
                self.quiet(categorical.ALL)
            else:
                # the update phase: only a sample() or log_prob() can open the next cycle (a
                # pending grad-mode sample is then settled at the next of those, not at __init__)
                self.quiet(categorical.BOUNDARY)
        return self.arming

    def _new_cycle(self, record: DistRecord | None = None) -> None:
        """Open the next cycle; ``record``: the Categorical whose sample() / log_prob() opened it."""
        self.cycle += 1
        dynamo.prepare()  # torch.compile may have loaded Dynamo since the watch began
        self.arming = False
        self._armed_dist = None
        self.steps_in_cycle = 0
        # Gradients for the previous cycle's log-probs can no longer arrive usefully.
        for handle in self._tensor_hooks:
            handle.remove()
        self._tensor_hooks.clear()
        if record is not None:
            record.cycle, record.seq = self.cycle, self.seq
        if self.settings.scheduled(self.cycle):
            self.recorded_cycles += 1
            if self.skipping:  # not armed (a cycle without steps cannot end): start late
                self.skipping = False
                self.resume()
                self.quiet(categorical.ALL)
        else:
            # a skipped cycle's sampling phase needs no Categorical event: its first optimizer
            # step (on_skipped_step) asks for them again
            self.quiet(categorical.NOTHING)
            if not self.skipping:
                self.skipping = True
                self._last_dist = None
                self.suspend()
                # Write what the recorded cycles buffered now: objects kept through the skipped
                # cycles would bring on full garbage collections, ~0.15 s each in a process
                # holding torch (the commit that added this line has the side-by-side figures).
                # The writer may hold it, to write it with the next ones (see RunWriter).
                self.flush(hold=True)

    # ---------------------------------------------------------------- flushing

    def _maybe_flush(self, multiple: int) -> None:
        s = self.settings
        if self._rows >= multiple * s.flush_rows or self._buffered_bytes >= multiple * s.flush_bytes:
            self.flush()

    def flush(self, hold: bool = False) -> None:
        """Hand everything buffered to the writer thread; the training thread only swaps lists.
        ``hold``: the writer may keep the batch to write it with later ones (a flush that is not
        for bounding memory: the schedule's, when its recorded cycles end)."""
        calls, dists, steps = self._calls, self._dists, self._steps
        if self.recorded_cycles <= self.cycle:  # some cycle was skipped: drop its armed records
            keep = self.settings.scheduled
            calls = [c for c in calls if keep(c.cycle)]
            dists = [d for d in dists if keep(d.cycle)]
            steps = [s for s in steps if keep(s.cycle)]
        if not (calls or dists or steps):
            self._calls, self._dists, self._steps = [], [], []
            self._rows = self._buffered_bytes = 0
            return
        self._prune_dist_of()
        self._gen.flushed = True
        self._gen = Generation()
        self._calls, self._dists, self._steps = [], [], []
        self._rows = 0
        self._buffered_bytes = 0

        def produce() -> dict[str, dict[str, Any]]:
            step_table, layer_table = step_columns(steps)
            # the table's dists first, then those of calls on dists flushed before
            logits = JoinedLogits([*dists, *(c.dist for c in calls)])
            samples, changed = sample_columns(calls, logits)
            self.counts["calls_changed_after_record"] += changed
            return {
                "samples": samples,
                "dists": dist_columns(dists, logits),
                "steps": step_table,
                "layers": layer_table,
            }

        if self._off_host:
            # Host copies of accelerator tensors would block the training thread on the device:
            # the writer thread makes them.
            self._submit(produce, hold)
            return
        # All on the CPU: convert here, in one burst, and leave only the Parquet encoding (which
        # releases the GIL) to the writer. Python work on the writer thread while the trainer
        # runs slows the trainer by ~4x that work through the GIL (examples/ CartPole flushed
        # every cycle: 2.5x plain with conversion on the writer thread, 1.6x with it here;
        # benchmarks/overhead_parts.py prints the current figure).
        try:
            columns = produce()
        except Exception as exc:  # noqa: BLE001 - recorded by the writer as its own failure
            def failed(exc: Exception = exc) -> dict[str, dict[str, Any]]:
                raise exc

            self._submit(failed, hold)
        else:
            self._submit(lambda: columns, hold)

    def close(self) -> None:
        """Remove tensor hooks, flush what is left and drop references to user tensors."""
        for handle in self._tensor_hooks:
            handle.remove()
        self._tensor_hooks.clear()
        try:
            self.flush()
        finally:
            self.entries.forget()
