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


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(2, 48), minibatches=st.integers(1, 4), epochs=st.integers(1, 3),
       distinct=st.integers(1, 48), k=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_pairing_holds_for_any_batching_and_duplicates(tmp_path_factory, batch, minibatches, epochs,
                                                       distinct, k, seed):
    """A real watched PPO loop with random batch / minibatch / epoch counts and observations
    drawn from few distinct rows (duplicates): every update row pairs, and at each cycle's first
    optimizer step the probe's log-ratios are the trainer's own new - old. (Not always exactly 0:
    the update's minibatch forward may round an ULP apart from the rollout's batch.)"""
    import ppo_probe

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # the actor's init from the example's seed: examples replay
        torch.manual_seed(seed)
        actor = torch.nn.Linear(3, k)
    optim = torch.optim.SGD(actor.parameters(), lr=0.1)
    out = tmp_path_factory.mktemp("prop") / "run"
    own_first: list[np.ndarray] = []  # the trainer's log-ratios at each cycle's first step
    with ppo_probe.watch(actor, optim, out=out, strict=True):
        for cycle in range(2):
            pool = torch.randn(min(distinct, batch), 3, generator=gen)
            obs = pool[torch.randint(len(pool), (batch,), generator=gen)]
            with torch.no_grad():
                dist = Categorical(logits=actor(obs))
                action = dist.sample()
                old = dist.log_prob(action)
            size = max(1, batch // minibatches)
            for _ in range(epochs):
                perm = torch.randperm(batch, generator=gen)
                for start in range(0, batch, size):
                    idx = perm[start:start + size]
                    new = Categorical(logits=actor(obs[idx])).log_prob(action[idx])
                    if len(own_first) == cycle:
                        own_first.append((new - old[idx]).detach().numpy().astype(np.float64))
                    loss = -((new - old[idx]).exp() * torch.randn(len(idx), generator=gen)).mean()
                    optim.zero_grad()
                    loss.backward()
                    optim.step()
    pairs = ppo_probe.load(out).pairs
    assert len(pairs) == 2 * epochs * batch and pairs["paired"].all()
    first = pairs[pairs["step"] == pairs.groupby("cycle")["step"].transform("min")]
    for cycle, own in enumerate(own_first):
        probe = np.sort(first.loc[first["cycle"] == cycle, "log_ratio"].to_numpy())
        # duplicate inputs pair with one of their samples: equal up to that sample's rounding
        np.testing.assert_allclose(probe, np.sort(own), rtol=0, atol=2.5e-7)
        assert np.abs(probe).max() <= 2.5e-7  # no parameter has moved yet: r is 1 up to rounding
