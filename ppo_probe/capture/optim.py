"""Optimizer step pre/post hooks: per-parameter gradient, delta and outside-change norms."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch

from .records import StepRecord

if TYPE_CHECKING:
    from .session import Session


def _params(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[int]]:
    params: list[torch.Tensor] = []
    groups: list[int] = []
    for g, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            params.append(p)
            groups.append(g)
    return params, groups


class StepRecorder:
    """Records one StepRecord per ``optimizer.step()`` without host syncs.

    A snapshot of every stepped tensor is kept between steps (one copy of the stepped parameters):
    at a pre-hook it tells how far the tensor moved since the last post-hook of any watched
    optimizer (a change made outside the optimizer), and at the post-hook how far the step moved it.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._snapshots: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        # optimizer -> (its record, its params, the norms measured before the step)
        self._pending: dict[int, tuple[StepRecord, list[torch.Tensor], list[torch.Tensor]]] = {}
        self._indices: dict[int, int] = {}
        self.optimizers: list[weakref.ref] = []

    def index_of(self, optimizer: torch.optim.Optimizer) -> int:
        key = id(optimizer)
        if key not in self._indices:
            self._indices[key] = len(self.optimizers)
            self.optimizers.append(weakref.ref(optimizer))
        return self._indices[key]

    def _snapshot(self, p: torch.Tensor) -> torch.Tensor | None:
        found = self._snapshots.get(id(p))
        if found is None or found[0]() is not p or found[1].shape != p.shape:
            return None
        return found[1]

    def _measure(self, params: list[torch.Tensor], first: list[torch.Tensor]) -> tuple[list[bool], list[torch.Tensor]]:
        """Norms of ``first``, then of (snapshot - param) for the params that have a snapshot (the
        same norm as param - snapshot: IEEE subtraction is exactly antisymmetric); then snapshot
        every param. The differences are formed in the snapshot buffers themselves, so a step
        allocates no parameter-sized buffer (3x512 MLP: each one was a fresh 2.3 MB, page faults
        included)."""
        snaps = [self._snapshot(p) for p in params]
        present = [s is not None for s in snaps]
        known = [i for i, ok in enumerate(present) if ok]
        diffs = [s for s in snaps if s is not None]
        if diffs:
            torch._foreach_sub_(diffs, [params[i] for i in known])
        measured = first + diffs
        norms = list(torch._foreach_norm(measured)) if measured else []
        self._take_snapshots(params, snaps)
        return present, norms

    # Few torch calls per step (each has a fixed dispatch cost, which dominates for small
    # models): one norm call before the step, one after, one stack of every norm.
    @torch.no_grad()
    def pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        session = self._session  # (the watch calls this only outside skipped and armed phases)
        params, groups = _params(optimizer)
        grads = [p.grad for p in params]
        outside_present, norms = self._measure(params, [g for g in grads if g is not None])
        record = StepRecord(
            step=session.seq,
            cycle=session.cycle,
            optimizer=self.index_of(optimizer),
            optimizer_class=type(optimizer).__name__,
            holds_actor=session.holds_actor(params),
            names=[session.param_name(p) for p in params],
            groups=groups,
            lrs=[optimizer.param_groups[g].get("lr", float("nan")) for g in groups],
            weight_decays=[optimizer.param_groups[g].get("weight_decay", 0.0) for g in groups],
            numels=[p.numel() for p in params],
            requires_grad=[p.requires_grad for p in params],
            grad_present=[g is not None for g in grads],
            feeds_logits=[session.feeds_logits(p) for p in params],
            outside_present=outside_present,
        )
        self._pending[id(optimizer)] = (record, params, norms)

    @torch.no_grad()
    def post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        pending = self._pending.pop(id(optimizer), None)
        if pending is None:
            session = self._session
            if (session.skipping or session.arming) and session.on_skipped_step():
                # armed for the next recorded cycle: its first step measures changes from here
                params = _params(optimizer)[0]
                self._take_snapshots(params, [self._snapshot(p) for p in params])
            return
        record, params, norms = pending
        record.delta_present, after = self._measure(params, params)
        norms = norms + after
        record.norms = torch.stack(norms) if norms else None
        self._session.on_step_done(record)

    def _take_snapshots(self, params: list[torch.Tensor], snaps: list[torch.Tensor | None]) -> None:
        have = [s for s in snaps if s is not None]
        if have:
            torch._foreach_copy_(have, [p for p, s in zip(params, snaps) if s is not None])
        for i, s in enumerate(snaps):
            if s is None:
                p = params[i]
                self._snapshots[id(p)] = (weakref.ref(p), p.detach().clone())

    def clear(self) -> None:
        """Forget the snapshots (at exit, and when a skipped cycle starts: stale ones would read
        as outside changes)."""
        self._snapshots.clear()
        self._pending.clear()


class LrSweep:
    """An lr range test (``watch(lr_sweep=f)``): the steps of cycle c run at the trainer's lr x
    ``f**c``. Each param group's lr is scaled just before the step and put back right after it
    (unless something set it meanwhile: a scheduler stepped from another post hook), so whatever
    the trainer or its scheduler sets between steps stands; a step that raised (no post hook) is
    put back at the next step or at exit. This changes training on purpose."""

    def __init__(self, factor: float, session: Session) -> None:
        self.factor = factor
        self._session = session
        # optimizer -> (its weakref, per group: (the trainer's lr, the scaled lr we set))
        self._saved: dict[int, tuple[weakref.ref, list[tuple[Any, Any]]]] = {}

    def scale(self, optimizer: torch.optim.Optimizer) -> None:
        self.restore(optimizer)
        m = self.factor ** self._session.cycle
        saved = []
        for g in optimizer.param_groups:
            lr = g.get("lr")
            if isinstance(lr, (torch.Tensor, int, float)) and not isinstance(lr, bool):
                g["lr"] = lr * m  # a tensor lr (capturable Adam) becomes a new tensor; put back after
            saved.append((lr, g.get("lr")))
        self._saved[id(optimizer)] = (weakref.ref(optimizer), saved)

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        found = self._saved.pop(id(optimizer), None)
        if found is None or found[0]() is not optimizer:
            return
        for g, (own, scaled) in zip(optimizer.param_groups, found[1]):
            if g.get("lr") is scaled:  # else the trainer set a new lr since: it stands
                g["lr"] = own

    def restore_all(self) -> None:
        for ref, _ in list(self._saved.values()):
            optimizer = ref()
            if optimizer is not None:
                self.restore(optimizer)
        self._saved.clear()
