"""Optimizer step pre/post hooks: per-parameter gradient, delta and outside-change norms."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .records import StepLayout, StepRecord

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
        # optimizer -> (its parameters' ids, their requires_grad, the session's actor epoch, layout)
        self._layouts: dict[int, tuple[tuple[int, ...], list[bool], int, StepLayout]] = {}

    def index_of(self, optimizer: torch.optim.Optimizer) -> int:
        key = id(optimizer)
        if key not in self._indices:
            self._indices[key] = len(self.optimizers)
            self.optimizers.append(weakref.ref(optimizer))
        return self._indices[key]

    def _layout(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], groups: list[int]) -> StepLayout:
        """The optimizer's StepLayout, built again only when its parameters, their requires_grad
        or the actor parameters known to the session changed since its last step."""
        session = self._session
        ids = tuple(map(id, params))
        requires = [p.requires_grad for p in params]
        cached = self._layouts.get(id(optimizer))
        if cached is not None and cached[0] == ids and cached[1] == requires and cached[2] == session.actor_epoch:
            return cached[3]
        layout = StepLayout(
            optimizer_class=type(optimizer).__name__,
            holds_actor=session.holds_actor(params),
            names=np.array([session.param_name(p) for p in params], dtype=object),
            groups=np.array(groups, dtype=np.int64),
            numels=np.array([p.numel() for p in params], dtype=np.int64),
            requires_grad=np.array(requires, dtype=bool),
            feeds_logits=np.array([session.feeds_logits(p) for p in params], dtype=bool),
        )
        self._layouts[id(optimizer)] = (ids, requires, session.actor_epoch, layout)
        return layout

    def _snapshot(self, p: torch.Tensor) -> torch.Tensor | None:
        found = self._snapshots.get(id(p))
        if found is None or found[0]() is not p or found[1].shape != p.shape:
            return None
        return found[1]

    def _measure(self, params: list[torch.Tensor], first: list[torch.Tensor]) -> tuple[bytes, list[torch.Tensor]]:
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
        return bytes(present), norms

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
            layout=self._layout(optimizer, params, groups),
            # tuples: of numbers only, the collector stops tracking them
            lrs=tuple(group.get("lr", float("nan")) for group in optimizer.param_groups),
            weight_decays=tuple(group.get("weight_decay", 0.0) for group in optimizer.param_groups),
            grad_present=bytes([g is not None for g in grads]),
            outside_present=outside_present,
        )
        self._pending[id(optimizer)] = (record, params, norms)

    def post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        pending = self._pending.pop(id(optimizer), None)
        if pending is None:
            session = self._session
            if (session.skipping or session.arming) and session.on_skipped_step():
                # armed for the next recorded cycle: its first step measures changes from here
                with torch.no_grad():
                    params = _params(optimizer)[0]
                    self._take_snapshots(params, [self._snapshot(p) for p in params])
            return
        self._recorded_post(*pending)

    @torch.no_grad()  # only here: entering no_grad was most of a skipped step's hook (~7 us)
    def _recorded_post(
        self, record: StepRecord, params: list[torch.Tensor], norms: list[torch.Tensor]
    ) -> None:
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
        self._layouts.clear()


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
