"""Bounded-memory reducers for fitted statistics."""

import numpy as np
import pytest

from jaxflow_ad.models.statistics import ReservoirBank, StreamingMean


def test_streaming_mean_equals_numpy_over_uneven_batches():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(23, 4, 4, 3)).astype(np.float32)
    b = rng.normal(size=(23, 2, 2, 3)).astype(np.float32)
    m = StreamingMean()
    for i in (0, 5, 6, 17):  # batches of 5, 1, 11, 6
        j = {0: 5, 5: 6, 6: 17, 17: 23}[i]
        m.update([a[i:j], b[i:j]])
    out = m.result()
    np.testing.assert_allclose(out[0], a.mean(0, keepdims=True), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[1], b.mean(0, keepdims=True), rtol=1e-6, atol=1e-7)
    assert out[0].dtype == np.float32 and m.count == 23
    with pytest.raises(ValueError, match="empty"):
        StreamingMean().result()


def test_reservoir_keeps_capacity_rows_uniformly():
    stream = np.arange(10_000, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    bank = ReservoirBank(500, seed=1)
    for i in range(0, len(stream), 333):
        bank.update(stream[i : i + 333])
    rows = bank.result()
    assert rows.shape == (500, 2) and bank.seen == 10_000
    assert len(np.unique(rows[:, 0])) == 500  # distinct rows of the stream
    assert set(rows[:, 0]) <= set(stream[:, 0])
    # uniform over the stream: each decile holds about a tenth of the bank (binomial sd ~ 6.7)
    counts = np.bincount((rows[:, 0] // 1000).astype(int), minlength=10)
    assert counts.min() > 20 and counts.max() < 80, counts
    # the same seed and stream give the same bank; another seed another one
    again = ReservoirBank(500, seed=1)
    for i in range(0, len(stream), 333):
        again.update(stream[i : i + 333])
    np.testing.assert_array_equal(again.result(), rows)
    other = ReservoirBank(500, seed=2)
    other.update(stream)
    assert not np.array_equal(np.sort(other.result()[:, 0]), np.sort(rows[:, 0]))


def test_reservoir_smaller_stream_keeps_everything():
    bank = ReservoirBank(100, seed=0)
    bank.update(np.ones((30, 3)))
    bank.update(np.zeros((20, 3)))
    assert bank.result().shape == (50, 3) and bank.result().sum() == 90
    with pytest.raises(ValueError, match="capacity"):
        ReservoirBank(0)
