"""Load and run an exported scorer (``--mode=export``) without the training code.

::

    from jaxflow_ad import serving

    scorer = serving.load("runs/nfbmr/gravel/export")
    maps, scores, decisions = scorer(images)      # images: uint8 [B, S, S, 3] RGB, S = scorer.image_size
    out = scorer.outputs(images)                  # also "normalized" [B] and "pixel_masks" [B, h, w]

The folder holds ``scorer.stablehlo`` (a serialized :class:`jax.export.Exported`), ``params.npz`` (its
weights) and ``meta.json`` (see :mod:`jaxflow_ad.export`, which writes them). This module imports only
the standard library, NumPy and JAX: no method, engine, data, backbone or Flax code, so it runs where
only ``jax`` is installed (plus ``flatbuffers``, which JAX needs to read the file) and keeps working
when the training code changes. The artifact runs on the platforms it was exported for
(``meta["platforms"]``: CPU and CUDA by default) and on any batch size.

Images must already be at the exported size: nothing is resized here (the training reader's resizing,
``config.data.resize``, is part of the model's input convention; resize the same way before scoring).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import jax
import numpy as np

SCORER_FILE = "scorer.stablehlo"
PARAMS_FILE = "params.npz"
META_FILE = "meta.json"
OUTPUT_NAMES = ("maps", "scores", "normalized", "decisions", "pixel_masks")


class Scorer:
    """An exported scorer with its weights on the default device.

    Calling it returns ``(maps float32 [B, h, w], scores float32 [B], decisions bool [B])`` as NumPy
    arrays; :meth:`outputs` returns all five outputs by name. Each new batch size compiles once.

    Attributes:
      meta: the export's ``meta.json`` (method, image size, threshold, normalisation rule, platforms, ...).
      image_size: ``S``: the images' height and width.
      has_threshold: whether a threshold was exported (without one ``normalized`` is NaN and the
        decisions and pixel masks are all False).
    """

    def __init__(self, exported, leaves: Sequence[np.ndarray], meta: dict, path: pathlib.Path):
        self._exported = exported
        self.meta = meta
        self.path = path
        self.image_size = int(meta["image_size"])
        self.has_threshold = meta.get("threshold") is not None
        platform = jax.default_backend()  # "cpu", "gpu" (CUDA or ROCm), "tpu"
        names = ("cuda", "rocm") if platform == "gpu" else (platform,)
        if not any(n in exported.platforms for n in names):
            raise RuntimeError(
                f"{path}: exported for {list(exported.platforms)}, but JAX runs on {platform!r}; export again "
                f"for it, or run with JAX_PLATFORMS={exported.platforms[0]}"
            )
        self._leaves = [jax.device_put(a) for a in leaves]
        self._call = jax.jit(exported.call)

    def __repr__(self) -> str:
        return f"Scorer({self.meta.get('method')!r}, image_size={self.image_size}, path={str(self.path)!r})"

    def check_images(self, images) -> np.ndarray:
        """``images`` as one uint8 ``[B, S, S, 3]`` array (a list of ``[S, S, 3]`` uint8 arrays is stacked).

        Raises:
          ValueError: another dtype or shape, naming the expected one.
        """
        s = self.image_size
        want = f"uint8 RGB images of shape [B, {s}, {s}, 3] (or a list of [{s}, {s}, 3] uint8 arrays)"
        if isinstance(images, (list, tuple)):
            for i, im in enumerate(images):
                a = np.asarray(im)
                if a.dtype != np.uint8 or a.shape != (s, s, 3):
                    raise ValueError(f"image {i} is {a.dtype} {a.shape}; this scorer takes {want}. Resize first.")
            return np.stack([np.asarray(im) for im in images]) if images else np.zeros((0, s, s, 3), np.uint8)
        a = np.asarray(images)
        if a.dtype != np.uint8:
            raise ValueError(f"images are {a.dtype}; this scorer takes {want} (0..255, not floats in [0, 1])")
        if a.ndim == 3 and a.shape == (s, s, 3):
            raise ValueError(f"got one image of shape {a.shape}; this scorer takes {want}: use images[None]")
        if a.ndim != 4 or a.shape[1:] != (s, s, 3):
            raise ValueError(f"images have shape {a.shape}; this scorer takes {want}. Resize first.")
        return a

    def outputs(self, images) -> dict[str, np.ndarray]:
        """All outputs by name: ``maps``, ``scores``, ``normalized``, ``decisions``, ``pixel_masks``."""
        x = self.check_images(images)
        if x.shape[0] == 0:
            return self._empty()
        res = self._call(self._leaves, x)
        return {name: np.asarray(v) for name, v in zip(OUTPUT_NAMES, res)}

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(maps [B, h, w], scores [B], decisions [B])`` of uint8 images ``[B, S, S, 3]``."""
        o = self.outputs(images)
        return o["maps"], o["scores"], o["decisions"]

    def normalized(self, images) -> np.ndarray:
        """Scores normalised to [0, 1] with the threshold at 0.5 (``meta["normalization"]``); NaN
        without a threshold."""
        return self.outputs(images)["normalized"]

    def _empty(self) -> dict[str, np.ndarray]:
        out = {}
        for name, aval in zip(OUTPUT_NAMES, self._exported.out_avals):
            shape = (0,) + tuple(int(d) for d in aval.shape[1:])
            out[name] = np.zeros(shape, np.dtype(aval.dtype))
        return out


def load(path) -> Scorer:
    """The scorer exported into the folder ``path`` (``<workdir>/<category>/export``).

    Raises:
      FileNotFoundError: a missing file, naming it.
      ValueError: weights that do not match the exported function's inputs (a mixed-up folder).
      ImportError: JAX cannot read the file without the ``flatbuffers`` package.
    """
    path = pathlib.Path(path)
    for name in (SCORER_FILE, PARAMS_FILE, META_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing: export with --mode=export first")
    meta = json.loads((path / META_FILE).read_text())
    try:
        exported = jax.export.deserialize(bytearray((path / SCORER_FILE).read_bytes()))
    except ImportError as e:
        raise ImportError(
            f"reading {path / SCORER_FILE} needs the 'flatbuffers' package: pip install flatbuffers"
        ) from e
    with np.load(path / PARAMS_FILE, allow_pickle=False) as z:
        keys = list(meta["input"]["params"]["keys"])
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise ValueError(f"{path / PARAMS_FILE} lacks {len(missing)} arrays ({missing[:3]}...)")
        leaves = [z[k] for k in keys]
    specs = exported.in_avals[: len(leaves)]
    if len(exported.in_avals) != len(leaves) + 1:
        raise ValueError(f"{path}: the scorer takes {len(exported.in_avals) - 1} arrays, params.npz has {len(leaves)}")
    for k, a, spec in zip(keys, leaves, specs):
        if tuple(a.shape) != tuple(spec.shape) or a.dtype != np.dtype(spec.dtype):
            raise ValueError(f"{path / PARAMS_FILE}: {k} is {a.dtype}{list(a.shape)}, the scorer expects {spec}")
    return Scorer(exported, leaves, meta, path)
