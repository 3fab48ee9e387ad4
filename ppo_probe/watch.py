"""``watch``: the context manager that attaches the probe to an unchanged training loop."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.nn.modules.module as module_hooks
import torch.optim.optimizer as optimizer_hooks
from torch import nn

from . import __version__
from .capture import categorical, dynamo
from .capture.handles import Handle
from .capture.optim import LrSweep, StepRecorder
from .capture.session import Session, Settings
from .storage.schema import TABLES
from .storage.writer import RunWriter, base_meta, meta_name, write_json_atomic

#: The largest lr factor per cycle ``watch(lr_sweep=...)`` takes (it must also be over 1).
LR_SWEEP_MAX = 100.0

Actor = nn.Module | Mapping[str, nn.Module] | None
Optim = torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None


def default_out() -> Path:
    """``$PPO_PROBE_DIR/<timestamp>``, or ``./ppo_probe_runs/<timestamp>`` when it is unset."""
    parent = Path(os.environ.get("PPO_PROBE_DIR") or "ppo_probe_runs")
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{time.time_ns() % 1_000_000:06d}"
    return parent / stamp


def _actors(actor: Actor) -> dict[str, nn.Module]:
    if actor is None:
        return {}
    if isinstance(actor, nn.Module):
        return {"actor": actor}
    if isinstance(actor, Mapping):
        if not actor or not all(isinstance(k, str) for k in actor):
            raise TypeError("watch(actor=...) got an empty dict or non-string keys; "
                            "pass {'agent_0': module, ...}")
        bad = {k: type(v).__name__ for k, v in actor.items() if not isinstance(v, nn.Module)}
        if bad:
            raise TypeError(f"watch(actor=...) takes a dict of str -> torch.nn.Module; got {bad}")
        return dict(actor)
    raise TypeError(
        f"watch(actor=...) takes a torch.nn.Module, a dict of name -> Module, or None; "
        f"got {type(actor).__name__}"
    )


def _optimizers(optim: Optim) -> list[torch.optim.Optimizer]:
    if optim is None:
        return []
    if isinstance(optim, torch.optim.Optimizer):
        return [optim]
    if isinstance(optim, Sequence) and optim and all(
        isinstance(o, torch.optim.Optimizer) for o in optim
    ):
        return list(optim)
    raise TypeError(
        "watch(optim=...) takes a torch.optim.Optimizer, a non-empty list of them, or None; "
        f"got {type(optim).__name__}"
    )


def _rank() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_SHARED_WAIT_S = 60.0
_shared_count = 0  # watches with a default out entered by this process: the same on every rank


def _shared_default_out(rank: int) -> Path:
    """Under torch.distributed with ``out`` omitted: rank 0's default directory, passed to the
    other ranks through the process group's key-value store (no collective, so a rank that never
    enters a watch cannot hang the others). A rank that gets no answer within 60 s writes its own
    directory and says so."""
    global _shared_count
    _shared_count += 1
    key = f"ppo_probe/out/{_shared_count}"
    try:
        from torch.distributed import distributed_c10d

        store = distributed_c10d._get_default_store()
        if rank == 0:
            path = default_out()
            store.set(key, str(path))
            return path
        import datetime

        store.wait([key], datetime.timedelta(seconds=_SHARED_WAIT_S))
        return Path(store.get(key).decode())
    except Exception as exc:  # noqa: BLE001 - a private API or a timeout: fall back, never hang
        path = default_out()
        _warn(f"ppo_probe: rank {rank} could not learn rank 0's run directory ({type(exc).__name__}: "
              f"{exc}); writing {path} instead (pass the same out= on every rank to avoid this)")
        return path


class Watch:
    """Attaches the probe on ``__enter__`` and removes every hook and patch on ``__exit__``.
    ``ppo_probe.watch`` is this class.

    Example:
        >>> with ppo_probe.watch(agent, optimizer, out="runs/probe") as w:  # doctest: +SKIP
        ...     train()
        >>> ppo_probe.analyze(w.path)  # doctest: +SKIP

    Args:
        actor: the policy module, a dict of name -> module for several actors (multi-agent), or
            None to watch every Categorical and discover the actor from the logits' graph.
        optim: the optimizer, a list of optimizers, or None to watch every optimizer that steps.
        out: run directory; default ``$PPO_PROBE_DIR/<timestamp>`` or
            ``./ppo_probe_runs/<timestamp>``.
        every: after the first ``first_cycles`` cycles, record the cycles whose number is a
            multiple of ``every`` (20: cycles 20, 40, ...); 1 records every cycle. A skipped
            cycle costs the trainer almost nothing (the forward hooks are detached, the
            Categorical patch is off until the cycle's first optimizer step, the optimizer hooks
            only count steps): a skipped CartPole cycle runs within noise of plain
            (benchmarks/cycle_costs.py), where a recorded cycle costs ~23-26% on that tiny MLP;
            CartPole at CleanRL's length (976 cycles) costs 1.01-1.03x plain under this
            schedule (benchmarks/run_all.py). A
            Categorical that fails to build (NaN logits) is noted in any cycle (in a skipped
            sampling phase from the traceback of the exception that ends the watch).
        first_cycles: the cycles recorded before the schedule thins out (where most structural
            bugs show); 8 by default.
        keep_logits_max_k: keep the full normalized logits (for the exact KL and the logit
            scale) when the number of categories K is at most this; 0 disables.
        logits_one_in: write the logits of about one row in this many, chosen by a hash of the
            row's input, so the same samples have them at sampling and at update; None (the
            default): one in K, which keeps the logits near 4 bytes a row whatever K is. 1
            writes every row's logits. The per-Categorical entropy and logit statistics always
            use every row.
        flush_rows: log-prob rows buffered before a flush to disk (bounds memory). Smaller
            flushes (the schedule's, at the end of its recorded cycles) are written together,
            once they hold this many rows, 30 s after the first, or at exit.
        lr_sweep: an lr range test, to choose the lr from one short run: the optimizer steps of
            the c-th cycle (from the watch's first, c = 0) run at the trainer's lr x
            ``lr_sweep ** c``, every cycle is recorded (``every`` and ``first_cycles`` are then
            ignored), and the report reads the recommended lr where the per-cycle KL crosses the
            target. Each param group's lr is scaled just before a step and put back right after
            it, so the trainer's own schedule stands. This changes training on purpose: a run for
            choosing the lr, not one to keep. Spread the factor over the run, e.g.
            ``300 ** (1 / (cycles - 1))`` (about 1.7 for 12 cycles); None (the default) leaves
            the lr alone.
        overwrite: allow ``out`` to hold an earlier run; its tables are deleted first.
        strict: re-raise failures of the probe itself instead of counting them (for tests).

    An ``out`` that cannot be created or written (permissions, a read-only or full disk) does not
    stop the training: one RuntimeWarning says so, the body runs unwatched, and ``recording`` is
    False (with ``strict=True`` it is an OSError instead). An ``out`` that is a file, or holds a
    run without ``overwrite``, is a FileExistsError at entry. Likewise a torch that cannot hand
    tensors to NumPy (torch 2.2 beside NumPy 2): a RuntimeWarning, nothing recorded (with
    ``strict=True``, a RuntimeError).
    """

    def __init__(
        self,
        actor: Actor = None,
        optim: Optim = None,
        *,
        out: str | os.PathLike[str] | None = None,
        every: int = 20,
        first_cycles: int = 8,
        keep_logits_max_k: int = 64,
        logits_one_in: int | None = None,
        flush_rows: int = 65_536,
        overwrite: bool = False,
        strict: bool = False,
        lr_sweep: float | None = None,
    ) -> None:
        self.actors = _actors(actor)
        self.optimizers = _optimizers(optim)
        for name, value, least in (("every", every, 1), ("first_cycles", first_cycles, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if lr_sweep is not None:
            if isinstance(lr_sweep, bool) or not isinstance(lr_sweep, (int, float)) or not (
                1.0 < float(lr_sweep) <= LR_SWEEP_MAX
            ):
                raise ValueError(f"lr_sweep must be None or a number in (1, {LR_SWEEP_MAX:g}] (the lr's "
                                 f"factor per cycle), got {lr_sweep!r}")
            every, first_cycles = 1, 0  # a sweep needs every cycle's KL
        self.lr_sweep = float(lr_sweep) if lr_sweep is not None else None
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        if keep_logits_max_k < 0:
            raise ValueError(f"keep_logits_max_k must be >= 0, got {keep_logits_max_k}")
        if logits_one_in is not None and (
            isinstance(logits_one_in, bool) or not isinstance(logits_one_in, int) or logits_one_in < 1
        ):
            raise ValueError(f"logits_one_in must be None or an int >= 1, got {logits_one_in!r}")
        if out is not None and not isinstance(out, (str, os.PathLike)):
            raise TypeError(f"watch(out=...) takes a directory path (str or os.PathLike) or None; "
                            f"got {type(out).__name__}")
        self.path = Path(out) if out is not None else default_out()
        self._default_path = out is None
        self._rank = 0
        self.settings = Settings(
            keep_logits_max_k=keep_logits_max_k,
            logits_one_in=logits_one_in,
            flush_rows=flush_rows,
            strict=strict,
            first_cycles=first_cycles,
            every=every,
        )
        self.overwrite = overwrite
        self.session: Session | None = None
        self._stack: ExitStack | None = None
        self._writer: RunWriter | None = None
        self._used = False
        self._meta: dict[str, Any] = {}
        self.recording = True  # False when the run directory could not be written at entry
        self._body_raised = False

    # ---------------------------------------------------------------- entering

    def __enter__(self) -> Watch:
        if self._used:
            raise RuntimeError("a Watch can be entered once; call ppo_probe.watch(...) again")
        self._used = True
        problem = _numpy_problem()
        if problem is not None:  # every flush would fail: say why once, record nothing
            if self.settings.strict:
                raise RuntimeError(problem)
            _warn(f"{problem}; training continues unrecorded")
            self.recording = False
            return self
        rank, world = _rank()
        self._rank = rank
        if self._default_path and world > 1:
            self.path = _shared_default_out(rank)
        self._prepare_dir(rank)
        self._meta = self._start_meta(rank, world)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path / meta_name(rank), self._meta)
        except OSError as exc:
            if self.settings.strict:
                raise OSError(exc.errno, f"ppo_probe: cannot write the run directory {self.path}: "
                              f"{exc.strerror}") from None
            # Nothing can be recorded; the training must not suffer for it (DESIGN invariant 1).
            _warn(f"ppo_probe: cannot write the run directory {self.path} ({exc.strerror or exc}); "
                  "training continues unrecorded")
            self.recording = False
            return self
        stack = ExitStack()
        dynamo.prepare()  # a torch.compile made before the watch loaded Dynamo
        try:
            writer = RunWriter(self.path, rank, self._writer_failed, batch_rows=self.settings.flush_rows)
            self._writer = writer
            session = Session(self.settings, writer.submit, _warn)
            self.session = session
            stack.callback(self._finish)  # runs last: flush, join the writer, final meta.json
            stack.enter_context(categorical.attach(session))
            hooks = self._attach_modules(stack, session)
            recorder = self._attach_optimizers(stack, session)

            def suspend() -> None:  # a cycle the schedule skips begins
                hooks.detach()
                recorder.clear()
                session.entries.forget()

            def resume() -> None:
                session.entries.reset()
                hooks.attach()

            session.suspend, session.resume = suspend, resume
            session.quiet = lambda needs: categorical.set_needs(session, needs)
        except BaseException as exc:
            try:
                stack.close()  # every hook and patch attached so far comes off (invariant 2)
            except Exception:  # noqa: BLE001 - the attach failure is the one to report
                pass
            if self.settings.strict or not isinstance(exc, Exception):
                raise
            # A probe that cannot attach must not stop the training (DESIGN invariant 1).
            _warn(f"ppo_probe: the watch could not attach ({type(exc).__name__}: {exc}); training "
                  "continues unrecorded")
            self.recording = False
            return self
        self._stack = stack
        return self

    def _prepare_dir(self, rank: int) -> None:
        """Check the directory for this rank; under torch.distributed every rank checks and clears
        only its own meta file and partitions, so ranks never race on each other's files."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"ppo_probe: run directory {path} exists and is not a directory")
        own = path / meta_name(rank)
        if own.exists():
            if not self.overwrite:
                raise FileExistsError(
                    f"ppo_probe: {path} already holds a run; pass overwrite=True or another out="
                )
            for table in TABLES:
                shutil.rmtree(path / table / f"rank={rank}", ignore_errors=True)
            own.unlink()

    def _attach_modules(self, stack: ExitStack, session: Session) -> ModuleHooks:
        tracker = session.entries
        hooks = ModuleHooks()
        stack.callback(hooks.detach)
        if not self.actors:
            pre, post = tracker.global_hooks()
            hooks.add(lambda: module_hooks.register_module_forward_pre_hook(pre))
            hooks.add(lambda: module_hooks.register_module_forward_hook(post, always_call=True))
            hooks.attach()
            return hooks
        for key, root in self.actors.items():
            session.name_params(key, root, prefix=len(self.actors) > 1)
            # The root and its direct children are where trainers enter a policy from outside
            # (SB3 calls features_extractor, mlp_extractor, action_net; CleanRL agent.actor).
            # TensorDict modules (TorchRL) take a TensorDict, not a tensor: the tensor input is
            # further down, so their whole tree is hooked (the first nested tensor input counts).
            modules = [("", root), *root.named_children()]
            if any(_takes_tensordict(m) for _, m in modules):
                modules = [("", root), *[(n, m) for n, m in root.named_modules() if n]]
            for name, module in modules:
                pre, post = tracker.hooks_for(key, module, name or type(root).__name__)
                hooks.add(partial(module.register_forward_pre_hook, pre, with_kwargs=True))
                hooks.add(partial(module.register_forward_hook, post, always_call=True))
        hooks.attach()
        return hooks

    def _attach_optimizers(self, stack: ExitStack, session: Session) -> StepRecorder:
        recorder = StepRecorder(session)
        self._recorder = recorder
        stack.callback(recorder.clear)
        guarded_pre = _guarded(session, "optimizer pre-step hook", recorder.pre)

        def pre(*args: Any) -> None:
            if not (session.skipping or session.arming):  # such steps: counted by the post hook only
                guarded_pre(*args)

        pres = [pre]
        posts = [_guarded(session, "optimizer post-step hook", recorder.post)]
        if self.lr_sweep is not None:
            # the sweep's hooks go around the recorder's: the lr is scaled before it is recorded
            sweep = LrSweep(self.lr_sweep, session)
            stack.callback(sweep.restore_all)
            pres.insert(0, _guarded(session, "lr sweep", lambda optimizer, *_: sweep.scale(optimizer)))
            posts.append(_guarded(session, "lr sweep", lambda optimizer, *_: sweep.restore(optimizer)))
        # a compiled optimizer.step() runs them eagerly, at a graph break (see capture/dynamo.py)
        pres = [dynamo.untraced(h) for h in pres]
        posts = [dynamo.untraced(h) for h in posts]
        if not self.optimizers:
            for h in pres:
                stack.enter_context(optimizer_hooks.register_optimizer_step_pre_hook(h))
            for h in posts:
                stack.enter_context(optimizer_hooks.register_optimizer_step_post_hook(h))
            return recorder
        for optimizer in self.optimizers:
            recorder.index_of(optimizer)
            for h in pres:
                stack.enter_context(optimizer.register_step_pre_hook(h))
            for h in posts:
                stack.enter_context(optimizer.register_step_post_hook(h))
        return recorder

    # ---------------------------------------------------------------- leaving

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._meta["status"] = "complete" if exc_type is None else f"interrupted: {exc_type.__name__}"
        self._body_raised = exc_type is not None
        session = self.session
        if exc_type is not None and session is not None and categorical.init_silent():
            # __init__ reported to no session (a skipped cycle): note a Categorical that failed to build
            args = categorical.failed_init(tb)
            if args is not None:
                session.on_dist_init_failed((), args)
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _finish(self) -> None:
        session, writer = self.session, self._writer
        if session is None or writer is None:
            return
        try:
            session.close()
        except Exception as exc:  # noqa: BLE001
            session.failures.add("flush", exc)
        writer.close()
        self._meta.update(self._end_meta(session, writer))
        try:
            write_json_atomic(self.path / meta_name(self._rank), self._meta)
        except Exception as exc:  # noqa: BLE001 - a full disk must not raise into the trainer
            _warn(f"ppo_probe: could not write {self.path / meta_name(self._rank)}: {exc}")
        if self.settings.strict and session.failures.by_place and not self._body_raised:
            place, info = next(iter(session.failures.by_place.items()))
            raise RuntimeError(f"ppo_probe failed in {place}: {info['type']}: {info['message']}")

    def _writer_failed(self, place: str, exc: BaseException) -> None:
        if self.session is not None:
            self.session.failures.add(place, exc)
            if self.session.failures.by_place[place]["count"] == 1:
                _warn(f"ppo_probe: the writer failed ({type(exc).__name__}: {exc}); "
                      "training continues, some records are not on disk")

    # ---------------------------------------------------------------- meta.json

    def _start_meta(self, rank: int, world: int) -> dict[str, Any]:
        actors: dict[str, str | None] = {k: type(m).__name__ for k, m in self.actors.items()} or {"auto": None}
        meta = base_meta(
            {
                "first_cycles": self.settings.first_cycles,
                "every": self.settings.every,
                "keep_logits_max_k": self.settings.keep_logits_max_k,
                "logits_one_in": self.settings.logits_one_in,
                "flush_rows": self.settings.flush_rows,
                "lr_sweep": self.lr_sweep,
                "mode": "explicit" if self.actors else "auto",
                "optimizers_given": bool(self.optimizers),
            }
        )
        meta.update(
            {
                "status": "running",
                "created": time.time(),
                "ppo_probe_version": __version__,
                "torch_version": torch.__version__,
                "python_version": platform.python_version(),
                "rank": rank,
                "world_size": world,
                "actors": actors,
                "argv": list(sys.argv),
            }
        )
        return meta

    def _end_meta(self, session: Session, writer: RunWriter) -> dict[str, Any]:
        optimizers = []
        in_optimizer: dict[int, tuple[int, int, Any]] = {}
        recorder = getattr(self, "_recorder", None)  # absent when attaching failed half-way
        for index, ref in enumerate(recorder.optimizers if recorder is not None else []):
            opt = ref()
            if opt is None:
                continue
            optimizers.append(
                {"index": index, "class": type(opt).__name__, "defaults": _jsonable(opt.defaults)}
            )
            for g, group in enumerate(opt.param_groups):
                for p in group["params"]:
                    in_optimizer.setdefault(id(p), (index, g, group.get("lr")))
        actor_params = []
        seen: set[int] = set()
        candidates = [(p, name) for p, name in session.logit_params()]
        for key, module in self.actors.items():
            for name, p in module.named_parameters():
                candidates.append((p, session.param_name(p)))
        for p, name in candidates:
            if id(p) in seen:
                continue
            seen.add(id(p))
            placed = in_optimizer.get(id(p))
            actor_params.append(
                {
                    "name": name,
                    "shape": list(p.shape),
                    "numel": p.numel(),
                    "requires_grad": p.requires_grad,
                    "feeds_logits": session.feeds_logits(p),
                    "in_optimizer": placed is not None,
                    "optimizer": placed[0] if placed else None,
                    "group": placed[1] if placed else None,
                    "lr": _jsonable(placed[2]) if placed else None,
                }
            )
        return {
            "finished": time.time(),
            "optimizers": optimizers,
            "actor_params": actor_params,
            "counts": {**session.counts, "compiled_forwards_seen": int(session.entries.compiled)},
            "cycles": session.cycle + 1 if session.counts["dists"] else 0,
            "recorded_cycles": session.recorded_cycles if session.counts["dists"] else 0,
            "rows_written": dict(writer.rows_written),
            "bytes_written": dict(writer.bytes_written),
            "probe_errors": session.failures.by_place,
        }


class ModuleHooks:
    """The forward hooks of a watch, detached while the schedule skips a cycle."""

    def __init__(self) -> None:
        self._register: list[Callable[[], Any]] = []
        self._handles: list[Any] = []

    def add(self, register: Callable[[], Any]) -> None:
        self._register.append(register)

    def attach(self) -> None:
        if not self._handles:
            self._handles = [register() for register in self._register]

    def detach(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 16 else f"tensor{tuple(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _takes_tensordict(module: nn.Module) -> bool:
    return hasattr(module, "in_keys") and hasattr(module, "out_keys")


def _guarded(session: Session, place: str, fn: Any) -> Any:
    def hook(*args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001
            session.fail(place, exc)

    return hook


def _numpy_problem() -> str | None:
    """Why this torch cannot hand tensors to NumPy, which every flush does; None when it can.
    (torch 2.2 was built against NumPy 1.x: beside NumPy 2, ``Tensor.numpy()`` raises.)"""
    try:
        torch.zeros(1).numpy()
    except RuntimeError as exc:
        import numpy

        return (f"ppo_probe: torch {torch.__version__} cannot hand tensors to NumPy {numpy.__version__} "
                f"({exc}): it was built against NumPy 1.x (torch 2.2 and older) or without NumPy; "
                "install 'numpy<2' or a newer torch")
    return None


def _warn(message: str) -> None:
    # Under `python -W error` a warning raises: that must not reach the trainer or kill the writer.
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    except Exception:  # noqa: BLE001
        pass


#: ``ppo_probe.watch(actor, optim, ...)``: the :class:`Watch` class itself, so that its signature
#: and documentation are the one place the arguments are listed.
watch = Watch


__all__ = ["Watch", "watch", "default_out", "Handle"]
