"""Read a state_dict from ``.pth``/``.pt``/``.bin``/``.tar`` (torch pickle), ``.safetensors`` or ``.npz``.

None of these needs torch: ``.pth`` goes through :mod:`third_party.torch_pickle`
(falling back to ``torch.load(weights_only=True)`` if that reader fails and
torch is installed), ``.safetensors`` through a small reader of its documented
layout (8-byte little-endian header length, a JSON header of
``{name: {dtype, shape, data_offsets}}``, then the raw bytes), ``.npz`` through
NumPy.
"""

from __future__ import annotations

import collections
import json
import pathlib
import struct

import numpy as np

from third_party import torch_pickle

WRAPPER_KEYS = ("state_dict", "model", "base_model", "model_state", "model_state_dict", "net")

_ST_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


class CheckpointError(ValueError):
    pass


def read_safetensors(path) -> dict[str, np.ndarray]:
    raw = pathlib.Path(path).read_bytes()
    if len(raw) < 8:
        raise CheckpointError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8 : 8 + n])
    except ValueError as e:
        raise CheckpointError(f"{path}: bad safetensors header ({e})") from e
    base = 8 + n
    out = collections.OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        if info["dtype"] == "BF16":
            import ml_dtypes

            dt = np.dtype(ml_dtypes.bfloat16)
        elif info["dtype"] in _ST_DTYPES:
            dt = np.dtype(_ST_DTYPES[info["dtype"]])
        else:
            raise CheckpointError(f"{path}: unsupported dtype {info['dtype']} for {name}")
        out[name] = np.frombuffer(raw[base + a : base + b], dtype=dt).reshape(info["shape"]).copy()
    return out


def _is_state_dict(d) -> bool:
    return (
        isinstance(d, dict)
        and d
        and all(isinstance(k, str) for k in d)
        and any(isinstance(v, np.ndarray) for v in d.values())
    )


def unwrap(obj, path="checkpoint") -> collections.OrderedDict[str, np.ndarray]:
    """Find the tensor dict in a checkpoint (``{"state_dict": ...}``, ``{"base_model": ...}``, ...)."""
    if isinstance(obj, dict):
        for k in WRAPPER_KEYS:
            if k in obj and isinstance(obj[k], dict) and _is_state_dict(obj[k]):
                return unwrap(obj[k], path)
        if _is_state_dict(obj):
            return collections.OrderedDict((k, np.asarray(v)) for k, v in obj.items() if isinstance(v, np.ndarray))
    found = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"{path}: no state_dict found (top-level keys: {found}); "
        f"expected a dict of tensors, possibly under one of {WRAPPER_KEYS}"
    )


def read_state_dict(path) -> collections.OrderedDict[str, np.ndarray]:
    """Load ``path`` into an ordered ``{torch key: ndarray}`` dict (never imports torch unless needed)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return unwrap({k: z[k] for k in z.files}, str(p))
    if suffix == ".safetensors":
        return unwrap(read_safetensors(p), str(p))
    try:
        obj = torch_pickle.load(p)
    except Exception as first:  # fall back to torch if it is installed
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{p}: cannot read as a torch checkpoint ({first})") from first
        obj = torch.load(p, map_location="cpu", weights_only=True)
        obj = _torch_to_numpy(obj, torch)
    return unwrap(obj, str(p))


def _torch_to_numpy(obj, torch):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _torch_to_numpy(v, torch)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_torch_to_numpy(v, torch) for v in obj)
    return obj
