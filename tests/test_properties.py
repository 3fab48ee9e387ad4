"""Property-based tests (hypothesis) of the per-row formulas against torch's own definitions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.distributions import Categorical, kl_divergence

from ppo_probe.analysis.formulas import clipped_by_ratio, ratio_terms
from ppo_probe.analysis.pairing import compare_logits

finite = st.floats(-20, 20, allow_nan=False, width=32)


@st.composite
def logit_pairs(draw):
    rows = draw(st.integers(1, 8))
    k = draw(st.integers(2, 12))
    old = draw(arrays(np.float32, (rows, k), elements=finite))
    new = draw(arrays(np.float32, (rows, k), elements=finite))
    return old, new


@settings(max_examples=100, deadline=None)
@given(logit_pairs())
def test_exact_kl_equals_torch_kl_divergence(pair):
    old, new = pair
    p, q = Categorical(logits=torch.from_numpy(old)), Categorical(logits=torch.from_numpy(new))
    # the capture keeps normalized logits (log-probabilities), new rows after the old ones
    stored = np.concatenate([p.logits.double().numpy(), q.logits.double().numpy()])
    column = pa.array(list(stored), type=pa.list_(pa.float32()))
    rows = len(old)
    kl, scale = compare_logits(column, np.arange(rows, 2 * rows), np.arange(rows, dtype=np.float64))
    expected = kl_divergence(p, q).double().numpy()
    np.testing.assert_allclose(kl, expected, rtol=1e-4, atol=1e-5)
    assert np.all(np.isnan(scale) | (scale >= 0))


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, 16, elements=st.floats(-30, 0, width=32)),
       arrays(np.float32, 16, elements=st.floats(-30, 0, width=32)),
       st.floats(0.01, 0.9))
def test_ratio_identities(new, old, eps):
    terms = ratio_terms(new, old)
    log_r = new.astype(np.float32) - old.astype(np.float32)
    np.testing.assert_array_equal(terms["log_ratio"], log_r.astype(np.float64))
    np.testing.assert_allclose(terms["ratio"], np.exp(log_r.astype(np.float64)), rtol=1e-6)
    # k3 = (r - 1) - log r >= 0 up to float32 rounding of r, and ~ log r^2 / 2 for small log r
    assert np.all(terms["k3"] >= -1e-6 * np.maximum(1.0, terms["ratio"]))
    small = np.abs(terms["log_ratio"]) < 1e-2
    np.testing.assert_allclose(terms["k3"][small], 0.5 * terms["log_ratio"][small] ** 2, atol=2e-6)
    # clipped means the ratio left [1 - eps, 1 + eps], up to float32 rounding at the edges
    clipped = clipped_by_ratio(terms["ratio"], eps)
    far = np.abs(np.abs(terms["ratio"] - 1) - eps) > 1e-6
    np.testing.assert_array_equal(clipped[far], (np.abs(terms["ratio"] - 1) > eps)[far])
