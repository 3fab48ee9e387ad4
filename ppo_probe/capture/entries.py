"""Track depth-0 entries into the watched module tree and attribute each Categorical to one."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import dynamo


@dataclass(slots=True)
class Entry:
    """The first tensor input of an outermost call into a watched module."""

    actor: str
    module: str
    tensor: torch.Tensor
    version: int
    grad_enabled: bool
    requires_grad: bool
    # a dict observation (SB3's MultiInputPolicy): its tensors, by key; ``tensor`` is the first
    parts: tuple[torch.Tensor, ...] | None = None
    # first-element addresses of the tensors the call returned (a tensor, or a list / tuple /
    # dict of them: one logits tensor per action dimension from separate head modules)
    outputs: tuple[int, ...] = ()
    # the input of the first direct child the call ran, when it is another tensor with as many
    # rows (SB3's policy(obs) runs features_extractor(preprocess_obs(obs)): a one-hot Discrete
    # observation, an image scaled to [0, 1]); the update may enter there, at features_extractor
    inner: torch.Tensor | None = None
    inner_parts: tuple[torch.Tensor, ...] | None = None  # a dict input there (its tensors by key)
    inner_version: int = 0
    inner_seen: bool = False

    def current_version(self) -> int:
        """The version counter now (summed over a dict's tensors: any in-place write raises it)."""
        return version_of(self.tensor, self.parts)


def version_of(tensor: torch.Tensor, parts: tuple[torch.Tensor, ...] | None) -> int:
    return tensor._version if parts is None else sum(p._version for p in parts)


def first_tensor(args: Iterable[Any], kwargs: dict[str, Any] | None = None) -> torch.Tensor | None:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    for value in (kwargs or {}).values():
        if isinstance(value, torch.Tensor):
            return value
    return None


def first_dict_of_tensors(args: Iterable[Any]) -> tuple[torch.Tensor, ...] | None:
    """The tensors of the first plain-dict argument whose values are all tensors with common
    leading dims (a dict observation), in key order; None if there is none."""
    for value in args:
        if type(value) is dict and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            parts = tuple(value[k] for k in sorted(value, key=str))
            if all(p.dim() >= 1 and p.shape[0] == parts[0].shape[0] for p in parts):
                return parts
    return None


def first_array(args: Iterable[Any], kwargs: dict[str, Any] | None = None) -> np.ndarray | None:
    """The first numeric NumPy array argument of at least one dimension (Tianshou hands its
    actor ``batch.obs`` as one and makes the tensor inside), or None."""
    for value in (*args, *(kwargs or {}).values()):
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.dtype.kind in "biuf":
            return value
    return None


PENDING_HEAD = PENDING_TAIL = 32


class EntryTracker:
    """Keeps the depth-0 entries seen since the previous Categorical and picks the input for the next.

    Rule (DESIGN section 2): among entries with the same grad mode whose input's leading dims equal
    the Categorical's batch shape, take the outermost call still running if the Categorical is
    built inside one (SB3's policy.forward); otherwise, in grad mode prefer inputs that do not themselves require grad
    (SB3 runs features_extractor(obs) -> mlp_extractor -> action_net outside any policy forward),
    skip the very input already attributed to the previous Categorical unless nothing else is left
    (CleanRL calls the critic on the same obs after the actor), then take the earliest.
    """

    def __init__(self, on_error: Callable[[str, BaseException], None]) -> None:
        self._on_error = on_error
        self.depth = 0
        # Entries since the previous Categorical, at most PENDING_HEAD + PENDING_TAIL of them: the
        # earliest and the latest. The rule prefers the earliest match (the observation comes
        # first); a recurrent update runs its LSTM cells once per timestep between the
        # observation and the head (sb3-contrib's RecurrentPPO: two cells x up to n_steps), so a
        # plain last-64 window dropped the observation and attributed the head's own input.
        self.pending: list[Entry] = []
        self._last: Entry | None = None
        self._tensorless = False  # the open outermost call had no tensor input (yet)
        self._outer: nn.Module | None = None  # that call's module (watch-everything mode)
        self._head_of: Entry | None = None  # the entry further heads of this forward share
        self._head = 0  # head index of the last attributed Categorical
        self._head_at: tuple[int, int] | None = None  # (storage, start) of that head's logits
        self._head_src: torch.Tensor | None = None  # the first head's logits, until their address is read
        # addresses of the tensors the forward's calls returned, and those a head already took
        self._head_outputs: list[tuple[int, ...]] = []
        self._heads_taken: list[int] = []
        self._open: Entry | None = None  # the entry of the outermost call still running
        # watch-everything mode: a distinct label per outermost module seen ("Sequential",
        # "Sequential#1", ...), so that an actor and a critic of one class get different names
        self.roots: dict[int, tuple[weakref.ref, str]] = {}
        self._label_counts: dict[str, int] = {}
        # a watched module ran under torch.compile (its hooks then run eagerly: see .dynamo)
        self.compiled = False
        self._post = dynamo.untraced(self._leave, self._note_compiled)
        # the last NumPy input taken and its tensor view: the same array gives the same tensor,
        # so that a critic run on the actor's very observation array is told apart as with tensors
        self._array: tuple[np.ndarray, torch.Tensor] | None = None

    def hooks_for(self, actor: str, module: nn.Module, name: str) -> tuple[Callable, Callable]:
        """Forward pre/post hooks for one module of actor ``actor``."""

        def enter(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            try:
                if self.depth == 0 or self._tensorless:
                    self._enter(actor, name, first_tensor(args, kwargs), args, nested=self.depth > 0,
                                kwargs=kwargs)
                elif self.depth == 1:
                    self._inner(first_tensor(args, kwargs), args)
            except Exception as exc:  # noqa: BLE001 - never break the trainer
                self._on_error("forward hook", exc)
            self.depth += 1

        return dynamo.untraced(enter, self._note_compiled), self._post

    def global_hooks(self) -> tuple[Callable, Callable]:
        """Hooks for ``torch.nn.modules.module.register_module_forward_*`` (watch-everything mode)."""

        def enter(mod: nn.Module, args: tuple, _: None = None) -> None:
            try:
                if self.depth == 0:
                    self._enter("auto", self._root_label(mod), first_tensor(args), args)
                elif self._tensorless and self._outer is not None:
                    self._enter("auto", self._root_label(self._outer), first_tensor(args), args, nested=True)
                elif self.depth == 1:
                    self._inner(first_tensor(args), args)
                if self.depth == 0:
                    self._outer = mod
            except Exception as exc:  # noqa: BLE001
                self._on_error("forward hook", exc)
            self.depth += 1

        return dynamo.untraced(enter, self._note_compiled), self._post

    def _note_compiled(self) -> None:
        self.compiled = True

    def _leave(self, mod: nn.Module, args: tuple, output: Any) -> None:
        self.depth = max(0, self.depth - 1)
        if self.depth == 0:
            if self._open is not None:
                try:
                    self._open.outputs = _addresses(output)
                except Exception as exc:  # noqa: BLE001 - never break the trainer
                    self._on_error("forward hook", exc)
            self._tensorless = False
            self._outer = None
            self._open = None

    def _root_label(self, module: nn.Module) -> str:
        known = self.roots.get(id(module))
        if known is not None and known[0]() is module:
            return known[1]
        kind = type(module).__name__
        n = self._label_counts.get(kind, 0)
        self._label_counts[kind] = n + 1
        label = kind if n == 0 else f"{kind}#{n}"
        self.roots[id(module)] = (weakref.ref(module), label)
        return label

    def _inner(self, tensor: torch.Tensor | None, args: tuple = ()) -> None:
        """Keep the first direct child's input of the open outermost call (see ``Entry.inner``):
        a tensor, or a dict of them (SB3's MultiInputPolicy preprocesses each key)."""
        entry = self._open
        if entry is None or entry.inner_seen:
            return
        entry.inner_seen = True
        parts = None
        if tensor is None:
            parts = first_dict_of_tensors(args)
            if parts is None or (entry.parts is not None and len(parts) == len(entry.parts)
                                 and all(a is b for a, b in zip(parts, entry.parts))):
                return
            tensor = parts[0]
        elif tensor is entry.tensor and entry.parts is None:
            return
        if tensor.dim() == 0 or entry.tensor.dim() == 0 or tensor.shape[0] != entry.tensor.shape[0]:
            return
        entry.inner, entry.inner_parts, entry.inner_version = tensor, parts, version_of(tensor, parts)

    def _enter(
        self, actor: str, module: str, tensor: torch.Tensor | None, args: tuple = (), nested: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        parts = None
        if tensor is None:
            # a dict observation: all its tensors together are the input row
            parts = first_dict_of_tensors(args)
            tensor = parts[0] if parts else None
        if tensor is None:
            # a module given a NumPy observation (Tianshou's actors): the array is the input row.
            # Without this, a watched actor's first tensor input hooked was a child's (the shared
            # trunk's features, which change with every optimizer step), and watching everything
            # took the tensor made inside, a new one at every call, which a critic's call on
            # the same array could not be told apart from
            tensor = self._array_tensor(first_array(args, kwargs))
        # An outermost call without a tensor argument (TorchRL modules take a TensorDict): the
        # first nested call that has one stands for it.
        self._tensorless = tensor is None
        if tensor is None:
            return
        entry = Entry(
            actor=actor,
            module=module,
            tensor=tensor,
            version=version_of(tensor, parts),
            grad_enabled=torch.is_grad_enabled(),
            requires_grad=tensor.requires_grad if parts is None else any(p.requires_grad for p in parts),
            parts=parts,
            inner_seen=nested,  # a nested call standing for a tensorless outer one: no inner input
        )
        pending = self.pending
        pending.append(entry)
        if len(pending) > PENDING_HEAD + PENDING_TAIL:
            del pending[PENDING_HEAD]  # the oldest of the latest: the bound on held user tensors
        self._open = entry

    def _array_tensor(self, array: np.ndarray | None) -> torch.Tensor | None:
        """A tensor sharing ``array``'s memory (no copy, but for a read-only array; the kept rows
        are cloned at the Categorical, as for tensors); None when torch cannot view it (negative
        strides)."""
        if array is None:
            return None
        cached = self._array
        if cached is not None and cached[0] is array:
            return cached[1]
        try:
            # a read-only array (a view of an env's buffer) is copied: torch's view of it would
            # warn, once per process, from here instead of from the trainer's own conversion
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        except (TypeError, ValueError):
            return None
        self._array = (array, tensor)
        return tensor

    def attribute(
        self, grad_enabled: bool, batch_shape: tuple[int, ...], source: torch.Tensor | None = None
    ) -> tuple[Entry | None, int]:
        """The entry for the next Categorical and its head: 0, or 1, 2, ... for further
        Categoricals built from the same forward with no forward in between whose logits
        (``source``, the tensor passed to the Categorical) are the next slice of the same
        tensor: SB3's and CleanRL's MultiDiscrete split one logits tensor into a Categorical per
        action dimension. A Categorical built again from the same logits, or from logits of a
        forward this watch does not see (another watch's actor), is not a head."""
        if not self.pending:
            at = _where(source)
            if self._head_src is not None:  # the first head's address, taken only now it is needed
                self._head_at = _where(self._head_src)
                self._heads_taken = [self._head_at[1]] if self._head_at is not None else []
                self._head_src = None
            sibling, prev = self._head_of, self._head_at
            if (
                sibling is not None
                and at is not None
                and prev is not None
                and sibling.grad_enabled == grad_enabled
                and sibling.tensor.shape[: len(batch_shape)] == batch_shape
                and (
                    (at[0] == prev[0] and at[1] > prev[1])  # the next slice of one logits tensor
                    # or another tensor the same forward returned (separate head modules)
                    or (
                        at[0] != prev[0]
                        and at[1] not in self._heads_taken
                        and any(at[1] in outputs for outputs in self._head_outputs)
                    )
                )
            ):
                self._head += 1
                self._head_at = at
                self._heads_taken.append(at[1])
                return sibling, self._head
            return None, 0
        self._head = 0
        self._head_of = None
        # the logits' address is read only if a further head may follow (no forward in between):
        # a storage lookup per Categorical otherwise
        self._head_src, self._head_at, self._heads_taken = source, None, []
        self._head_outputs = [e.outputs for e in self.pending]  # searched only for a further head
        n = len(batch_shape)
        candidates = [
            e for e in self.pending if e.grad_enabled == grad_enabled and e.tensor.shape[:n] == batch_shape
        ]
        if not candidates and n:
            # logits reshaped between the forward and the distribution ([B*T, D] in, [B, T, K]
            # out): row-major rows still correspond one to one when the row counts agree
            rows = math.prod(batch_shape)
            candidates = [
                e for e in self.pending
                if e.grad_enabled == grad_enabled and e.tensor.dim() >= 2 and e.tensor.shape[:-1].numel() == rows
            ]  # fmt: skip
        self.pending.clear()
        if self.depth and self._open is not None and any(e is self._open for e in candidates):
            # built inside a watched forward that is still running (SB3's policy.forward): that
            # call is the entry, whatever ran before it (MaskablePPO bootstraps a truncated
            # episode's value through the features extractor just before the next forward)
            candidates = [self._open]
        elif grad_enabled:
            plain = [e for e in candidates if not e.requires_grad]
            candidates = plain or candidates
        last = self._last
        if last is not None:
            fresh = [
                e for e in candidates if not (e.tensor is last.tensor and e.version == last.version)
            ]
            candidates = fresh or candidates
        if not candidates:
            return None, 0
        self._last = self._head_of = candidates[0]
        return candidates[0], 0

    def forget(self) -> None:
        """Drop references to user tensors (at exit, and when the hooks are detached)."""
        self.pending.clear()
        self._last = self._head_of = self._open = None
        self._array = None
        self._head_at = self._head_src = None
        self._head_outputs = []
        self._heads_taken = []

    def reset(self) -> None:
        """Start from no open call (the hooks are attached again; a call that was running when
        they were detached never ran its post hook)."""
        self.forget()
        self.depth = 0
        self._tensorless = False
        self._outer = None


def _addresses(output: Any) -> tuple[int, ...]:
    """First-element addresses of a forward's returned tensors: a tensor, or up to 16 tensors of
    a list, tuple or dict it returned (plain pointers: no device sync, ~0.1 us a tensor)."""
    try:
        if isinstance(output, torch.Tensor):
            return (output.data_ptr(),) if not output.is_sparse else ()
        if isinstance(output, dict):
            output = list(output.values())
        if not isinstance(output, (list, tuple)):
            return ()
        return tuple(v.data_ptr() for v in output[:16] if isinstance(v, torch.Tensor) and not v.is_sparse)
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return ()


def _where(t: torch.Tensor | None) -> tuple[int, int] | None:
    """(storage address, first element address) of a tensor: plain pointers, no device sync."""
    if t is None or t.is_sparse:
        return None
    try:
        return t.untyped_storage().data_ptr(), t.data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return None
