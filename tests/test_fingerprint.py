"""Row fingerprints: exact, batch-size independent, dtype tolerant, equal in bulk and one by one."""

from __future__ import annotations

import numpy as np
import torch

from ppo_probe.capture.fingerprint import fingerprint_many, fingerprint_rows


def test_rows_hash_the_same_alone_or_in_any_batch():
    x = torch.randn(64, 7)
    whole = fingerprint_rows(x, 64)
    assert torch.equal(whole[10:20], fingerprint_rows(x[10:20], 10))
    assert whole.unique().numel() == 64
    assert torch.equal(whole, fingerprint_rows(x.double(), 64))  # float64 buffer of float32 values
    assert torch.equal(fingerprint_rows(torch.zeros(2, 3), 2), fingerprint_rows(-torch.zeros(2, 3), 2))


def test_one_changed_element_changes_the_hash():
    x = torch.randint(0, 255, (32, 4, 8, 8), dtype=torch.uint8)
    y = x.clone()
    y[5, 1, 2, 3] ^= 1
    hx, hy = fingerprint_rows(x, 32), fingerprint_rows(y, 32)
    assert (hx != hy).tolist() == [i == 5 for i in range(32)]


def test_bulk_hash_equals_one_by_one_across_widths_and_dtypes():
    inputs = [
        torch.randn(5, 4),
        torch.randn(3, 4).double(),
        torch.randint(0, 9, (6, 4)),
        torch.randn(2, 11),
        torch.rand(4, 4) > 0.5,
        torch.randn(1500, 4),  # large enough to be hashed where it lies, not joined
        torch.randn(1024, 3),  # odd width: the int32 -> int64 path
    ]
    bulk = fingerprint_many(inputs)
    for x, h in zip(inputs, bulk):
        assert np.array_equal(h, fingerprint_rows(x, x.shape[0]).numpy())
    assert np.array_equal(bulk[5][:5], fingerprint_rows(inputs[5][:5], 5).numpy())  # alone or in a batch
