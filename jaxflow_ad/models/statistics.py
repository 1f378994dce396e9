"""Host-side reducers for fitted statistics, in bounded memory.

A method's ``fit_statistics(state, outputs)`` gets an iterator of per-sample
device outputs (padding removed), one batch at a time. These reducers consume
it without holding the whole training set:

* :class:`StreamingMean`: the mean of every leaf over samples, accumulated in
  float64 (PyramidFlow's latent template).
* :class:`ReservoirBank`: a uniform random subset of at most ``capacity`` rows
  per leaf (Vitter's Algorithm R), seeded; memory is ``capacity`` rows however
  many samples stream past. A memory bank of a few thousand vectors per scale
  is built from it (MASF's spectral bank; a greedy coreset can then run on the
  reservoir instead of on every patch).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

PyTree = Any


class StreamingMean:
    """Mean over the leading axis of every leaf, over all batches."""

    def __init__(self):
        self.total: PyTree = None
        self.count = 0

    def update(self, batch: PyTree) -> None:
        sums = jax.tree_util.tree_map(lambda a: np.sum(np.asarray(a), axis=0, dtype=np.float64), batch)
        self.total = sums if self.total is None else jax.tree_util.tree_map(np.add, self.total, sums)
        self.count += int(jax.tree_util.tree_leaves(batch)[0].shape[0])

    def result(self, keepdims: bool = True) -> PyTree:
        """float32 means (``[1, ...]`` with ``keepdims``); raises when nothing was seen."""
        if not self.count:
            raise ValueError("no samples to average (is the training split empty?)")
        return jax.tree_util.tree_map(
            lambda t: (t / self.count).astype(np.float32)[None] if keepdims else (t / self.count).astype(np.float32),
            self.total,
        )


class ReservoirBank:
    """A uniform sample of at most ``capacity`` rows of a stream of ``[n, d]`` (or ``[n, ...]``) batches.

    Every row seen has the same probability ``capacity / seen`` of being kept
    (Algorithm R); the result depends only on the seed and the stream, so a
    resumed run refits the same bank.
    """

    def __init__(self, capacity: int, seed: int | tuple = 0):
        if capacity < 1:
            raise ValueError(f"a memory bank needs a capacity >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.rows: np.ndarray | None = None
        self.seen = 0

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if self.rows is None:
            self.rows = np.empty((self.capacity,) + rows.shape[1:], rows.dtype)
        fill = max(0, min(len(rows), self.capacity - self.seen))
        self.rows[self.seen : self.seen + fill] = rows[:fill]
        self.seen += fill
        rest = rows[fill:]
        if len(rest):
            # row k of the rest is the (seen + k + 1)-th row: kept at slot j ~ U{0..seen+k} if j < capacity
            js = self.rng.integers(0, self.seen + 1 + np.arange(len(rest)))
            for k in np.nonzero(js < self.capacity)[0]:  # in stream order: a later row replaces an earlier one
                self.rows[js[k]] = rest[k]
            self.seen += len(rest)

    def result(self) -> np.ndarray:
        if self.rows is None:
            raise ValueError("the memory bank saw no rows (is the training split empty?)")
        return self.rows[: min(self.seen, self.capacity)].copy()
