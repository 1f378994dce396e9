"""Shared test setup: a persistent compilation cache and the location of the golden data."""

import os
import pathlib

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _shared_dir() -> pathlib.Path:
    """`shared/` beside the checkout (developer layout) or inside it (CI layout)."""
    env = os.environ.get("JAXFLOW_AD_SHARED")
    candidates = [pathlib.Path(env)] if env else []
    candidates += [ROOT.parent / "shared", ROOT / "shared"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    return _shared_dir() / "golden"
