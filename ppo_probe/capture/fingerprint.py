"""Row fingerprints of actor inputs: an exact integer hash computed on the tensor's own device."""

from __future__ import annotations

import numpy as np
import torch

# Weights come from a private NumPy generator so that fingerprinting never draws from torch's RNG.
_SEED = 0x5EED_C0DE
_weights: dict[tuple[int, torch.device], torch.Tensor] = {}


def _weights_for(width: int, device: torch.device) -> torch.Tensor:
    key = (width, device)
    w = _weights.get(key)
    if w is None:
        rng = np.random.default_rng([_SEED, width])
        host = rng.integers(-(2**62), 2**62, size=width, dtype=np.int64) | 1  # odd multipliers
        w = torch.from_numpy(host).to(device)
        _weights[key] = w
    return w


@torch.no_grad()
def fingerprint_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Hash each of the ``rows`` leading rows of ``x`` to an int64, on ``x``'s device, without sync.

    Floating inputs are hashed by the bits of their float32 value (so a float64 buffer and the
    float32 tensor it came from agree), with -0.0 folded into 0.0. Integer sums wrap modulo 2**64,
    which makes the hash exact and independent of reduction order and batch size, unlike a float
    dot product. Random odd weights make two different rows collide with probability ~2**-32 at
    worst; no avalanche step is needed since the hash is only ever compared for equality.
    """
    flat = x.detach().reshape(rows, -1)
    if flat.is_floating_point() or flat.is_complex():
        bits = (flat.real.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)
    else:
        bits = flat.to(torch.int64)
    weights = _weights_for(bits.shape[1], bits.device)
    if bits.device.type == "cpu":
        # an integer matrix-vector product wraps modulo 2**64 like the sum below and gives the same
        # hash, without the [rows, width] product (164k x 64 rows: 4 ms against 30 ms)
        try:
            return torch.mv(bits, weights)
        except (RuntimeError, NotImplementedError):  # a torch build without integer mv
            pass
    return (bits * weights).sum(dim=1)


@torch.no_grad()
def fingerprint_many(inputs: list[torch.Tensor]) -> list[np.ndarray]:
    """``fingerprint_rows`` of several [rows, width] inputs, on the host: hashed in one op per
    (width, kind, device) group, copied to the host once per group; each input's hashes are a
    view of that copy (the bulk form used at a flush, where a split into one tensor per input
    cost more than the hashing)."""
    out: list[np.ndarray | None] = [None] * len(inputs)
    groups: dict[tuple[int, bool, torch.device], list[int]] = {}
    for i, x in enumerate(inputs):
        kind = x.is_floating_point() or x.is_complex()
        groups.setdefault((x.shape[1], kind, x.device), []).append(i)
    for indices in groups.values():
        parts = [inputs[i] if inputs[i].dtype != torch.bool else inputs[i].to(torch.int64) for i in indices]
        if len({p.dtype for p in parts}) > 1:
            parts = [p.to(torch.float32) if p.is_floating_point() else p.to(torch.int64) for p in parts]
        joined = torch.cat(parts) if len(parts) > 1 else parts[0]
        hashes = fingerprint_rows(joined, joined.shape[0]).cpu().numpy()
        start = 0
        for i, p in zip(indices, parts):
            out[i] = hashes[start : start + p.shape[0]]
            start += p.shape[0]
    return out  # type: ignore[return-value]
