"""Where the time goes, and compiling each step once per run.

* :class:`Timings`: wall seconds per phase of a category (``data``, ``features``,
  ``compile``, ``train``, ``statistics``, ``evaluate``, ``report``), the table
  printed at the end of a run and saved in ``metrics.json`` (``time_s``).
* :class:`CompileCache`: ahead-of-time compiled executables (``jit(f).lower(*args)
  .compile()``) kept for the whole run and reused by every category whose
  method config and argument shapes match. A method is a function of its config
  (``models.build(cfg)``; the category only enters through ``configure``), so
  equal configs give equal computations: the built-in categories share two
  train steps (textures and objects differ in augmentation) instead of
  compiling four. Compilation also goes through JAX's persistent cache
  (``compile_cache`` in the config), so a second run of the same command
  compiles nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator

import jax

log = logging.getLogger("jaxflow_ad")

PHASES = ("data", "features", "compile", "train", "statistics", "evaluate", "report")


class Timings:
    """Seconds per phase; nested phases are not double counted (the inner one is taken out of the
    outer, e.g. ``compile`` inside ``train``)."""

    def __init__(self):
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        frame = [name, time.perf_counter(), 0.0]  # name, start, seconds of nested phases
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            spent = time.perf_counter() - frame[1]
            self.seconds[name] = self.seconds.get(name, 0.0) + spent - frame[2]
            if self._stack:
                self._stack[-1][2] += spent

    def add(self, name: str, seconds: float) -> None:
        """``seconds`` measured elsewhere, taken out of the enclosing phase."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self._stack:
            self._stack[-1][2] += seconds

    def as_dict(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["total"] = round(sum(self.seconds.values()), 3)
        return out


def time_table(per_category: dict[str, dict[str, float]]) -> str:
    """Markdown table, one row per category: seconds per phase and their total."""
    cols = list(PHASES) + ["total"]
    rows = ["| category | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for cat, t in per_category.items():
        rows.append(f"| {cat} | " + " | ".join(f"{t.get(c, 0.0):.1f}" for c in cols) + " |")
    return "\n".join(rows) + "\n"


def _avals(tree) -> str:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    shapes = [
        (getattr(x, "shape", None), str(getattr(x, "dtype", type(x).__name__)), str(getattr(x, "sharding", "")))
        for x in leaves
    ]
    return repr((str(treedef), shapes))


class CompileCache:
    """Compiled executables by ``(key, argument shapes)`` for the lifetime of a run.

    Thread-safe: categories run by concurrent threads (``parallel_categories``) that need the same
    executable compile it once; the others wait for it, and that wait is their ``compile`` time."""

    def __init__(self):
        self._store: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.compiled = 0  # how many compilations (a test counts them)

    def get(self, key: str, make_jitted: Callable[[], Callable], args: tuple, timings: Timings | None = None):
        """The executable of ``make_jitted()`` for ``args``: compiled on first use (timed as
        ``compile``), reused afterwards. ``key`` must identify the computation (method config and
        which function); the argument shapes, dtypes and shardings are added to it here."""
        full = key + _avals(args)
        exe = self._store.get(full)
        if exe is not None:
            return exe
        with self._guard:
            lock = self._locks.setdefault(full, threading.Lock())
        t0 = time.perf_counter()
        with lock:  # one compilation per executable; a second thread waits for the first's
            exe = self._store.get(full)
            if exe is None:
                exe = make_jitted().lower(*args).compile()
                with self._guard:
                    self._store[full] = exe
                    self.compiled += 1
        if timings is not None:
            timings.add("compile", time.perf_counter() - t0)
        return exe


# keys read only on the host (by Method.augment inside Stage.prepare_batch, which the contract keeps
# outside jit): they change the batches, not the compiled step
HOST_ONLY_KEYS = (("data", "augment"),)


def method_key(config, *, device_only: bool = False) -> str:
    """The identity of a method: its per-category config without the keys that only say where data
    comes from (``data.root``, ``data.categories``) or how compilation is cached. With
    ``device_only`` also without :data:`HOST_ONLY_KEYS`: the identity of its compiled executables
    (textures, augmented, and objects, not, share them)."""
    d = json.loads(config.to_json_best_effort())
    d.get("data", {}).pop("categories", None)
    d.get("data", {}).pop("root", None)
    d.pop("compile_cache", None)
    if device_only:
        for section, key in HOST_ONLY_KEYS:
            d.get(section, {}).pop(key, None)
    return json.dumps(d, sort_keys=True)


def default_cache_dir() -> pathlib.Path:
    """``$JAXFLOW_AD_CACHE`` or ``$XDG_CACHE_HOME/jaxflow_ad/xla`` (``~/.cache/jaxflow_ad/xla``)."""
    env = os.environ.get("JAXFLOW_AD_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "jaxflow_ad" / "xla"


def enable_persistent_cache(setting: str) -> str | None:
    """Point JAX's persistent compilation cache at ``setting`` (``"default"``: :func:`default_cache_dir`;
    ``""``/``"none"``: leave it off) unless the process already chose one (``JAX_COMPILATION_CACHE_DIR``,
    a test's conftest). Returns the folder in use, or None."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if setting in ("", "none", None):
        return None
    path = default_cache_dir() if setting == "default" else pathlib.Path(setting).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)  # not the many tiny programs
    return str(path)
