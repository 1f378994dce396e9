"""Features of a frozen extractor, computed once per split through the device mesh and cached.

A frozen backbone (EfficientNet-B5 at 768 px: about 8 s an image on 2 CPU cores)
must not run every epoch. :class:`FeatureCache` runs it once per split and keeps
the result in memory, or, above ``memory_limit_bytes``, in ``.npy`` files under
the workdir that are memory-mapped back (and reused by a resumed run). The key is
a sha256 of the extractor's fingerprint (weights, taps, normalisation), the
input array's shape and dtype (the input size) and the split's fingerprint
(every file's path, size and modification time): a changed backbone or dataset
is never served stale features.

Layout: ``<directory>/<key>/<tap>.npy`` and ``meta.json``, written to a
temporary folder and renamed, so a killed run never leaves a half-written entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np

from jaxflow_ad.engine import parallel

log = logging.getLogger("jaxflow_ad")


def cache_key(extractor, split) -> str:
    """sha256 of everything the features depend on."""
    x = extractor.inputs(split.samples)
    h = hashlib.sha256()
    h.update(extractor.fingerprint.encode())
    shapes = [(tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(x)]
    h.update(repr((extractor.modality, *shapes[0]) if len(shapes) == 1 else (extractor.modality, shapes)).encode())
    h.update(split.fingerprint().encode())
    return h.hexdigest()[:32]


def run_extractor(extractor, inputs, mesh, batch_size: int, compiled=None, timings=None) -> dict[str, np.ndarray]:
    """``extractor`` over ``inputs`` ``[N, ...]`` (a dict of them for a multimodal extractor) in batches
    sharded over ``mesh``; host arrays. With a
    ``compiled`` (:class:`~jaxflow_ad.engine.timing.CompileCache`) the executable is shared by every
    split and category of the run (keyed by the extractor's fingerprint)."""
    parallel.check_batch_size(batch_size, "eval.batch_size", mesh)
    variables = parallel.to_replicated(mesh, extractor.variables)
    fn = None
    out: dict[str, list[np.ndarray]] = {t: [] for t in extractor.taps}
    n = len(jax.tree_util.tree_leaves(inputs)[0])
    for i in range(0, n, batch_size):
        chunk = parallel.pad_rows(jax.tree_util.tree_map(lambda a, i=i: a[i : i + batch_size], inputs), batch_size)
        x = parallel.global_batch(mesh, {"x": chunk})["x"]
        if fn is None:
            make = functools.partial(parallel.jit_score, mesh, extractor.apply)
            key = f"extractor|{extractor.fingerprint}"
            fn = make() if compiled is None else compiled.get(key, make, (variables, x), timings)
        feats = fn(variables, x)
        for t in extractor.taps:
            out[t].append(np.asarray(jax.device_get(feats[t]))[: min(batch_size, n - i)])
    return {t: np.concatenate(v) for t, v in out.items()}


class FeatureCache:
    """Extractor features per split: memory for small ones, memory-mapped files for large ones.

    Attributes:
      computed: how many splits were run through an extractor (cache misses); a test counts it.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None,
        mesh,
        batch_size: int,
        memory_limit_bytes: int,
        compiled=None,
        timings=None,
    ):
        self.compiled, self.timings = compiled, timings
        self.directory = pathlib.Path(directory) if directory else None
        self.mesh = mesh
        self.batch_size = int(batch_size)
        self.memory_limit_bytes = int(memory_limit_bytes)
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self.computed = 0

    def _load(self, key: str) -> dict[str, np.ndarray] | None:
        if self.directory is None:
            return None
        d = self.directory / key
        meta = d / "meta.json"
        if not meta.exists():
            return None
        taps = json.loads(meta.read_text())["taps"]
        return {t: np.load(d / f"{t}.npy", mmap_mode="r") for t in taps}

    def _save(self, key: str, feats: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=self.directory))
        for t, a in feats.items():
            np.save(tmp / f"{t}.npy", a)
        (tmp / "meta.json").write_text(json.dumps({**meta, "taps": list(feats)}, indent=1))
        try:
            os.rename(tmp, self.directory / key)
        except OSError:  # another process wrote the same entry first: same content
            shutil.rmtree(tmp, ignore_errors=True)
        return self._load(key)

    def features(self, extractor, split) -> dict[str, np.ndarray]:
        """``{tap: [N, h, w, c]}`` for every sample of ``split``, computed at most once."""
        key = cache_key(extractor, split)
        if key in self._memory:
            return self._memory[key]
        feats = self._load(key)
        if feats is not None:
            log.info("%s/%s: %s features from the cache %s", split.category, split.split, extractor.name, key)
        else:
            feats = run_extractor(
                extractor, extractor.inputs(split.samples), self.mesh, self.batch_size, self.compiled, self.timings
            )
            self.computed += 1
            nbytes = sum(a.nbytes for a in feats.values())
            log.info(
                "%s/%s: %s features computed once: %s (%.1f MB)",
                split.category,
                split.split,
                extractor.name,
                {t: a.shape for t, a in feats.items()},
                nbytes / 2**20,
            )
            if self.directory is not None and nbytes > self.memory_limit_bytes and jax.process_index() == 0:
                meta = {"extractor": extractor.name, "split": split.split, "category": split.category}
                feats = self._save(key, feats, meta)
        self._memory[key] = feats
        return feats

    def attach(self, extractor, split):
        """``split`` with ``samples["features"]`` filled in (unchanged when ``extractor`` is None)."""
        if extractor is None:
            return split
        return split.with_samples(features=self.features(extractor, split))
