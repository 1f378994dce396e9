"""A disk cache of per-sample preprocessing, keyed by the source file and the settings.

Cleaning a point cloud (RANSAC plane removal, DBSCAN; :mod:`jaxflow_ad.data.pointcloud`) costs
a second or more per sample at MVTec 3D-AD's native resolution, far more than decoding it, and
gives the same result every time for the same file and settings. A reader asks this cache for
each sample: the first run computes and stores, later runs (another seed, another method, the
evaluation of a resumed run) read back. The engine points it at ``<workdir>/<category>/cache``;
a notebook may point it anywhere, or nowhere (``None``: compute every time).

The key hashes the version, the operation's name and settings, and the absolute path, size and
modification time in ns of every source file (an Eyecandies cloud comes from three; the same
quick check as :meth:`Split.fingerprint`): a rewritten
file or a changed setting never reads a stale entry. Entries are ``.npz`` files written beside
their final name and renamed into place, so a crash or a concurrent writer leaves either no
entry or a whole one; an unreadable entry (truncated by a full disk, say) is recomputed and
rewritten, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["SampleCache"]

log = logging.getLogger(__name__)
_VERSION = 1


class SampleCache:
    """Arrays computed from one file, stored once per (file state, operation, settings).

    Args:
      directory: where entries live (created on first write); ``None`` disables caching.
      operation: a name for what is computed, e.g. ``"mvtec3d.cloud"``.
      settings: everything else the result depends on (JSON-serialisable), e.g. thresholds, seed,
        output size.
    """

    def __init__(self, directory: str | os.PathLike | None, operation: str, settings: Mapping):
        self.directory = pathlib.Path(directory) if directory is not None else None
        self._prefix = json.dumps(
            {"v": _VERSION, "op": operation, "settings": dict(settings)}, sort_keys=True, default=str
        )
        self.hits = 0
        self.misses = 0

    def key(self, sources: Sequence[tuple[str | os.PathLike, tuple[int, int]]]) -> str:
        """The entry's name for ``sources``: ``(path, (size, st_mtime_ns))`` of each file read."""
        h = hashlib.sha256(self._prefix.encode())
        for path, stat in sources:
            h.update(b"\0" + os.fsencode(os.path.abspath(path)) + f"\0{int(stat[0])}\0{int(stat[1])}".encode())
        return h.hexdigest()[:32]

    def get(
        self,
        sources: Sequence[tuple[str | os.PathLike, tuple[int, int]]],
        compute: Callable[[], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """The cached arrays for ``sources`` (``(path, stat)`` of each file the result is computed from;
        stat as :func:`~jaxflow_ad.data.mvtec.stat_file` gives it, taken before the file was read), or
        ``compute()``'s, stored for next time."""
        if self.directory is None:
            self.misses += 1
            return dict(compute())
        entry = self.directory / f"{self.key(sources)}.npz"
        if entry.exists():
            try:
                with np.load(entry, allow_pickle=False) as z:
                    out = {k: z[k] for k in z.files}
                self.hits += 1
                return out
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
                log.warning("sample cache entry %s for %s is unreadable (%s); recomputing it", entry, sources[0][0], e)
        self.misses += 1
        out = {k: np.asarray(v) for k, v in compute().items()}
        self._write(entry, out)
        return out

    def _write(self, entry: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, entry)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
