"""Every per-row formula of the report, in one place."""

from __future__ import annotations

import numpy as np

#: Normalized logits at or below this are masked categories (matches the capture side).
MASKED_LOGIT = -1e7


def ratio_terms(new_logp: np.ndarray, old_logp: np.ndarray) -> dict[str, np.ndarray]:
    """Log ratio, ratio and the k3 term per row, in float32 as trainers compute them.

    ``log r = new - old`` and ``r = exp(log r)`` are taken in float32 so that the clip fraction
    (``|r - 1| > eps``) and k3 (``(r - 1) - log r``) agree with what SB3 and CleanRL log for the
    same rows (k3 suffers float32 cancellation there too; matching it is the point).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        log_ratio = (new_logp.astype(np.float32) - old_logp.astype(np.float32)).astype(np.float32)
        ratio = np.exp(log_ratio)
        k3 = (ratio - np.float32(1.0)) - log_ratio
    return {
        "log_ratio": log_ratio.astype(np.float64),
        "ratio": ratio.astype(np.float64),
        "k3": k3.astype(np.float64),
    }


def clipped_by_ratio(ratio: np.ndarray, eps: float) -> np.ndarray:
    """``|r - 1| > eps`` in float32 (``ratio`` holds float32 values), as SB3 and CleanRL log it."""
    with np.errstate(invalid="ignore"):
        return np.abs(ratio.astype(np.float32) - np.float32(1.0)) > np.float32(eps)
