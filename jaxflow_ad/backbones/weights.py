"""The on-disk format of converted backbone weights (no torch needed to read it).

A converted file is one msgpack blob written by :func:`save_weights` (and by
``python -m third_party.convert``)::

    {"format": "jaxflow_ad.backbone/1",
     "arch": "efficientnet-b5",          # registry name the tree was built for
     "meta": "<json>",                    # source file, sha256, key counts, converter version
     "variables": {"params": {...}, "batch_stats": {...}}}

Arrays are stored as float32 NumPy arrays in Flax layout (HWIO kernels,
``scale``/``bias`` for norms). ``msgpack`` was chosen over an orbax directory
because one file is easy to copy next to a config and reads in well under a
second without any checkpoint manager.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import serialization

FORMAT = "jaxflow_ad.backbone/1"
SUFFIX = ".msgpack"


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or made for another architecture."""


def weights_path(path: str | pathlib.Path) -> pathlib.Path:
    """``weights/effb5`` -> ``weights/effb5.msgpack``; a path that has the suffix is kept."""
    p = pathlib.Path(path)
    return p if p.suffix == SUFFIX else p.with_name(p.name + SUFFIX)


def save_weights(
    path: str | pathlib.Path, arch: str, variables: Mapping[str, Any], meta: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write ``variables`` for ``arch`` to ``path`` (suffix ``.msgpack`` added if absent)."""
    p = weights_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tree = jax.tree_util.tree_map(lambda a: np.asarray(a), dict(variables))
    blob = {"format": FORMAT, "arch": arch, "meta": json.dumps(dict(meta or {}), sort_keys=True), "variables": tree}
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(blob))
    tmp.replace(p)
    return p


def load_weights(path: str | pathlib.Path, arch: str | None = None) -> tuple[dict, dict]:
    """Read a converted file: returns ``(variables, meta)``.

    Raises :class:`WeightsError` naming the file when it is absent, is not a
    converted backbone file (e.g. a raw torch ``.pth``), or was converted for a
    different ``arch``.
    """
    p = pathlib.Path(path)
    if not p.exists() and weights_path(p).exists():
        p = weights_path(p)
    if not p.exists():
        raise WeightsError(f"backbone weights file not found: {p}")
    if p.suffix in (".pth", ".pt", ".bin", ".npz", ".safetensors", ".tar"):
        raise WeightsError(
            f"{p} is a raw checkpoint, not converted Flax weights. Convert it once with "
            f"`python -m third_party.convert --arch {arch or '<arch>'} --src {p} --dst weights/<name>` "
            "and point the config at the .msgpack file it writes."
        )
    try:
        blob = serialization.msgpack_restore(p.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types
        raise WeightsError(f"{p} is not a converted backbone file ({type(e).__name__}: {e})") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise WeightsError(f"{p} is not a converted backbone file (missing format tag {FORMAT!r})")
    if arch is not None and blob["arch"] != arch:
        raise WeightsError(
            f"{p} holds weights for {blob['arch']!r}, but the config asks for {arch!r}; "
            "set config.model.backbone.arch to match or convert the right checkpoint."
        )
    meta = json.loads(blob.get("meta") or "{}")
    meta["arch"] = blob["arch"]
    return blob["variables"], meta


def count_params(variables: Mapping[str, Any], collection: str = "params") -> int:
    """Number of scalars in one collection of a variables tree."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables.get(collection, {}))))
