"""What a user would reach for instead of ppo_probe, written as they would write it (no ppo_probe).

- ``ManualPeer``: the instrumentation of a typical debugging session. An optimizer post-step hook
  prints every parameter's ``p.grad.norm().item()`` (a Python loop; into an ``io.StringIO`` here,
  not the terminal) and clones all actor parameters every step, keeping the last clone to take
  deltas from.
- ``HistogramPeer``: per-step gradient histograms through ``Tensor.register_hook``, which is what
  ``wandb.watch(model, log="gradients", log_freq=1)`` costs without the network. wandb's docs
  (https://docs.wandb.ai/ref/python/watch: log="gradients" is the default; "log_freq: log
  gradients and parameters every N batches") and its hook (github.com/wandb/wandb,
  wandb/integration/torch/wandb_torch.py: ``TorchHistory._hook_variable_gradient_stats`` ->
  ``log_tensor_stats``, ``_num_bins = 64``) do, per parameter per backward: ``grad.detach().clone()``, a finiteness
  check with ``.item()``, ``min().item()`` / ``max().item()``, ``histc(bins=64)``, a host copy and
  ``tolist()``. The upload is left out.

Both are context managers: ``with ManualPeer(actor, optim): train()``.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn
from typing_extensions import Self  # a dependency of torch

MANUAL_RECORDS = "grad norm per parameter per step (text); last parameter snapshot"
HISTOGRAM_RECORDS = "64-bin grad histogram + min/max per parameter per step"
PROBE_RECORDS = (
    "in the recorded cycles (default: 0-7, then every 20th) every log_prob row (sampling/update, "
    "paired), dLoss/dlogp per row, per step and "
    "parameter: grad norm, delta, outside change, lr, logits dependence; Parquet"
)


class ManualPeer:
    """Clone every actor parameter and print per-parameter grad norms after each optimizer step."""

    def __init__(self, actor: nn.Module, optim: torch.optim.Optimizer) -> None:
        self.actor, self.optim = actor, optim
        self.log = io.StringIO()
        self.last: list[torch.Tensor] = []
        self.step = 0

    def _after_step(self, optim: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        for name, p in self.actor.named_parameters():
            if p.grad is not None:
                print(
                    f"step {self.step} {name} grad norm {p.grad.norm().item():.6g}", file=self.log
                )
        self.last = [p.detach().clone() for p in self.actor.parameters()]

    def __enter__(self) -> Self:
        self.handle = self.optim.register_step_post_hook(self._after_step)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


class HistogramPeer:
    """A 64-bin histogram of every parameter's gradient at every backward, copied to the host."""

    def __init__(self, actor: nn.Module, optim: torch.optim.Optimizer | None = None) -> None:
        self.actor = actor
        self.last: dict[str, tuple[list[float], float, float]] = {}
        self.count = 0

    def _log(self, name: str, grad: torch.Tensor) -> None:
        flat = grad.detach().clone().reshape(-1).float()
        if flat.numel() == 0 or (~torch.isfinite(flat)).all().item():
            return
        if not torch.isfinite(flat).all().item():
            flat = flat[torch.isfinite(flat)]
        tmin, tmax = flat.min().item(), flat.max().item()
        hist = (
            flat.histc(bins=64, min=tmin, max=tmax)
            if tmin < tmax
            else flat.new_tensor([flat.numel()])
        )
        self.last[name] = (
            hist.cpu().numpy().tolist(),
            tmin,
            tmax,
        )  # wandb.Histogram(...) then upload
        self.count += 1

    def __enter__(self) -> Self:
        self.handles = [
            p.register_hook(lambda g, name=name: self._log(name, g))
            for name, p in self.actor.named_parameters()
            if p.requires_grad
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
