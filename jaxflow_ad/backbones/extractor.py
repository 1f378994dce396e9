"""A frozen feature extractor: a backbone with its weights, input normalisation, taps and a fingerprint.

Feature-based methods (PyramidFlow's ResNet variant, NF-BMR, MASF, MADFlow) run a
pretrained network that never trains. It lives outside parameters, optimizer
state and checkpoints; the engine runs it once per split through the device mesh
and caches what it returns (:mod:`jaxflow_ad.engine.features`), keyed by
:attr:`FrozenExtractor.fingerprint`, so that other weights, taps or
preprocessing never get stale features.

::

    ext = FrozenExtractor.from_config({"arch": "resnet18", "weights": "weights/resnet18.msgpack"},
                                      taps=("layer1",))
    feats = ext(images_uint8)            # {"layer1": float32 [B, H/4, W/4, 64]}
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflow_ad.backbones.weights import WeightsError

PyTree = Any


def convert_command(arch: str) -> str:
    """The one-off command that makes ``weights/<arch>.msgpack`` from the official torch checkpoint."""
    return f"python -m third_party.convert --arch {arch} --src <torch checkpoint of {arch}> --dst weights/{arch}"


def check_required_weights(cfg: Mapping[str, Any]) -> None:
    """``cfg["require_weights"]`` (the ``paper`` variants) with no ``cfg["weights"]``: stop with an error
    naming the convert command instead of falling back to the offline stand-in."""
    arch = str(cfg["arch"])
    if cfg.get("require_weights") and not cfg.get("weights"):
        raise WeightsError(
            f"this config needs the real {arch} weights (config key model.backbone.weights is empty) and "
            f"refuses the offline stand-in. Convert them once with `{convert_command(arch)}` and pass "
            f"--config.model.backbone.weights=weights/{arch}.msgpack"
        )


@dataclasses.dataclass(eq=False)
class FrozenExtractor:
    """A frozen network and what it needs to be applied and cached.

    Attributes:
      module: a Flax module; ``module.apply(variables, x)`` returns ``{tap: [B, h, w, c]}``.
      variables: its weights (never trained, never checkpointed).
      taps: the outputs kept, in order.
      name: architecture (shown in logs; part of the fingerprint).
      modality: the sample key it reads (``"image"``; ``"xyz"`` for a point-cloud network), or a
        tuple of keys for a network of several modalities (MADFlow's image + cloud + depth): it
        then gets ``{key: array}`` and needs a ``preprocess`` (:meth:`inputs` picks them).
      mean, std: input normalisation of [0, 1] images (``None``: none); uint8 images are
        divided by 255 first.
      preprocess: optional pure function of the modality's array applied instead of the
        default image normalisation (a point-cloud network's grouping, ...).
      note: what stands in for what (logged and reported by the engine).
    """

    module: nn.Module
    variables: PyTree
    taps: tuple[str, ...]
    name: str
    modality: str | tuple[str, ...] = "image"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    preprocess: Callable[[jax.Array], jax.Array] | None = None
    note: str = ""

    @property
    def multimodal(self) -> bool:
        """True when the network reads several sample keys (``modality`` is a tuple)."""
        return not isinstance(self.modality, str)

    def inputs(self, samples: Mapping[str, Any]) -> Any:
        """What :meth:`apply` takes from a batch or a split's samples: ``samples[modality]``, or
        ``{key: samples[key]}`` for a multimodal network. A missing key raises a ``KeyError`` that
        names the keys the network needs and the ones the data has."""
        keys = (self.modality,) if not self.multimodal else tuple(self.modality)
        missing = [k for k in keys if k not in samples]
        if missing:
            raise KeyError(
                f"extractor {self.name} reads sample keys {list(keys)} but the data has no {missing} "
                f"(it has {sorted(samples)}); for point clouds read a layout that has them (data.layout=mvtec3d "
                "or eyecandies, with depth=True for depth and foreground)"
            )
        return samples[self.modality] if not self.multimodal else {k: samples[k] for k in keys}

    def apply(self, variables: PyTree, inputs: jax.Array) -> dict[str, jax.Array]:
        """Pure: the modality's array (a batch; a dict of them when multimodal) -> ``{tap: float32 features}``."""
        if self.multimodal and self.preprocess is None:
            raise TypeError(f"extractor {self.name} reads {self.modality} and needs a preprocess function")
        if self.preprocess is not None:
            x = self.preprocess(inputs)
        else:
            x = inputs.astype(jnp.float32)
            if inputs.dtype == jnp.uint8:
                x = x * jnp.float32(1.0 / 255.0)
            if self.mean is not None:
                x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        out = self.module.apply(variables, x)
        missing = [t for t in self.taps if t not in out]
        if missing:
            raise KeyError(f"extractor {self.name} has no taps {missing}; it returns {sorted(out)}")
        return {t: jax.lax.stop_gradient(out[t]).astype(jnp.float32) for t in self.taps}

    def __call__(self, inputs) -> dict[str, jax.Array]:
        return self._jitted(self.variables, jax.tree_util.tree_map(jnp.asarray, inputs))

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self.apply)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the name, taps, modality, normalisation, the module's settings and every
        weight's path, shape, dtype and bytes. Equal fingerprints compute the same function."""
        h = hashlib.sha256()
        pre = getattr(self.preprocess, "__qualname__", repr(self.preprocess))
        h.update(repr((self.name, self.taps, self.modality, self.mean, self.std, pre, repr(self.module))).encode())
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.variables)[0]:
            a = np.asarray(leaf)
            h.update(f"{jax.tree_util.keystr(path)}:{a.shape}:{a.dtype}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def output_shapes(self, input_shape: tuple[int, ...], dtype=jnp.uint8) -> dict[str, tuple[int, ...]]:
        """Shapes of the taps for a batch of ``input_shape`` (no computation)."""
        return self.output_shapes_like(jax.ShapeDtypeStruct(input_shape, dtype))

    def output_shapes_like(self, example: Any) -> dict[str, tuple[int, ...]]:
        """Shapes of the taps for inputs shaped like ``example`` (arrays or ``ShapeDtypeStruct`` s, a dict
        of them when multimodal; no computation)."""
        spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(tuple(a.shape), a.dtype), example)
        out = jax.eval_shape(self.apply, self.variables, spec)
        return {k: tuple(v.shape) for k, v in out.items()}

    @classmethod
    def from_backbone_config(cls, b: Mapping[str, Any], taps) -> FrozenExtractor:
        """From a method's ``model.backbone`` section: ``arch``, ``weights`` (empty: the offline
        stand-in), ``random_init``, ``require_weights`` and, where the section has them,
        ``padding`` and ``static_size`` (0: the architecture's native resolution)."""
        cfg = {
            "arch": str(b["arch"]),
            "weights": b.get("weights") or None,
            "random_init": bool(b.get("random_init", False)),
            "require_weights": bool(b.get("require_weights", False)),
        }
        if b.get("padding") is not None:
            cfg["padding"] = str(b["padding"])
        if b.get("static_size") is not None:
            cfg["static_size"] = int(b["static_size"]) or None
        return cls.from_config(cfg, taps=tuple(str(t) for t in taps))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], taps: tuple[str, ...]) -> FrozenExtractor:
        """Build ``cfg["arch"]`` with ``taps`` and load its weights (:func:`load_backbone`).

        ``cfg["require_weights"]`` (the ``paper`` variants): with no ``cfg["weights"]`` stop with
        an error naming the convert command instead of falling back to the offline
        EfficientNet-Lite0 stand-in (or random weights).
        """
        from jaxflow_ad.backbones import load_backbone

        cfg = dict(cfg.items())
        check_required_weights(cfg)
        cfg.pop("require_weights", None)
        cfg["weights"] = cfg.get("weights") or None
        cfg["taps"] = tuple(taps)
        loaded = load_backbone(cfg)
        return cls(
            module=loaded.module,
            variables=loaded.variables,
            taps=tuple(taps),
            name=loaded.arch,
            mean=tuple(loaded.mean),
            std=tuple(loaded.std),
            note=loaded.note,
        )
