"""Shared test setup: a persistent compilation cache and the location of the golden data."""

import os
import pathlib
import sys
import types

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


@pytest.fixture(scope="session")
def pyramidflow_smoke_run(tmp_path_factory):
    """``(config, workdir)``: PyramidFlow's smoke config trained for one epoch on the built-in ``coin``,
    with a threshold from held-out images and an export; trained once for every test of what a
    trained workdir serves (``--mode=predict``, the notebook). A test that writes into it copies it."""
    from configs import pyramidflow as pf_config
    from jaxflow_ad import engine

    cfg = pf_config.get_config("smoke")
    cfg.data.categories = "coin"
    cfg.train.epochs = 1
    cfg.eval.threshold.holdout = 0.1
    wd = tmp_path_factory.mktemp("pyramidflow_smoke") / "run"
    engine.run(cfg, wd, "all")
    engine.run(cfg, wd, "export")
    return cfg, wd


@pytest.fixture(scope="session")
def torchvision():
    """torchvision's model code on the CPU build of torch that the ``[torch]`` extra installs.

    The extra pins ``torch==2.13.0`` (this machine's CPU wheel, about 0.9 GB in a venv) rather
    than the CUDA build that PyPI's torchvision expects (5.5 GB with its NVIDIA libraries, more
    than a CI disk has been seen to hold). ``torchvision==0.28.0`` is the matching release, but its
    compiled extension (``_C.so``: nms, roi_align and the other detection ops) links
    ``libc10_cuda.so`` and cannot load; its ``__init__`` then fails while registering those ops'
    meta and autograd kernels. The backbones we convert use none of those ops: only the pure-Python
    model definitions. So when the plain import fails, the two registration modules are replaced
    by empty ones and torchvision is imported again; the model code is torchvision's, unchanged.
    """
    pytest.importorskip("torch", reason="torch is not installed: pip install -e .[torch]")
    try:
        import torchvision

        return torchvision
    except (RuntimeError, OSError):
        pass
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    for sub in ("_meta_registrations", "_autograd_registrations"):
        sys.modules[f"torchvision.{sub}"] = types.ModuleType(f"torchvision.{sub}")
    import torchvision

    return torchvision
