"""Key maps from torch state_dicts to the Flax trees of :mod:`jaxflow_ad.backbones`.

Sources of the torch names (facts, read from the installed packages / the
project notes): torchvision ``resnet*``/``wide_resnet50_2`` (``conv1``, ``bn1``,
``layer{s}.{b}.conv{1,2,3}``, ``...downsample.{0,1}``, ``fc``);
``efficientnet_pytorch`` 0.7.1 and ``efficientnet_lite_pytorch`` 0.1.0
(``_conv_stem``, ``_bn0``, ``_blocks.{i}._{expand_conv,bn0,depthwise_conv,bn1,
se_reduce,se_expand,project_conv,bn2}``, ``_conv_head``, ``_bn1``, ``_fc``);
Point-MAE as M3DM loads it (``base_model`` dict, ``module.`` and ``MAE_encoder.``
stripped; ``encoder.first_conv.{0,1,3}``, ``encoder.second_conv.{0,1,3}``,
``pos_embed.{0,2}``, ``blocks.blocks.{i}.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,
mlp.fc2}``, ``norm``; the decoder keys are ignored).

Layouts: Conv2d ``(O, I, kh, kw)`` -> Flax ``(kh, kw, I, O)`` (depthwise
``(C, 1, k, k)`` -> ``(k, k, 1, C)``); Conv1d k=1 ``(O, I, 1)`` -> ``(I, O)``;
Linear ``(O, I)`` -> ``(I, O)``; norms ``weight``/``bias`` -> ``scale``/``bias``,
``running_mean``/``running_var`` -> ``batch_stats`` ``mean``/``var``;
``num_batches_tracked`` is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import traverse_util

from jaxflow_ad import backbones
from jaxflow_ad.backbones import efficientnet as effnet
from jaxflow_ad.backbones import resnet


class ConversionError(ValueError):
    pass


IGNORED = object()


# ------------------------------------------------------------------ module-path translators
def _resnet_path(mod: str):
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])", mod)
    if m:
        leaf = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(m[3], m[3])
        return (f"layer{m[1]}_{m[2]}", leaf)
    if mod in ("conv1", "bn1", "fc"):
        return (mod,)
    return None


def _effnet_path(mod: str):
    m = re.fullmatch(
        r"_blocks\.(\d+)\._(expand_conv|bn0|depthwise_conv|bn1|se_reduce|se_expand|"
        r"project_conv|bn2)",
        mod,
    )
    if m:
        return (f"blocks_{m[1]}", m[2])
    if mod in ("_conv_stem", "_bn0", "_conv_head", "_bn1", "_fc"):
        return (mod[1:],)
    return None


_POINTMAE_IGNORED = (
    "MAE_decoder.",
    "decoder_pos_embed.",
    "mask_token",
    "increase_dim.",
    "cls_token",
    "cls_pos",
    "reduce_dim.",
)


def _pointmae_path(mod: str):
    m = re.fullmatch(r"encoder\.(first_conv|second_conv)\.([013])", mod)
    if m:
        return ("encoder", f"{m[1]}_{m[2]}")
    m = re.fullmatch(r"pos_embed\.([02])", mod)
    if m:
        return (f"pos_embed_{m[1]}",)
    m = re.fullmatch(r"blocks\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)", mod)
    if m:
        return (f"blocks_{m[1]}", m[2].replace(".", "_"))
    if mod == "norm":
        return ("norm",)
    return None


def _pointmae_rename(key: str):
    if key.startswith("module."):
        key = key[len("module.") :]
    if key.startswith("MAE_encoder."):
        key = key[len("MAE_encoder.") :]
    if key.startswith(_POINTMAE_IGNORED):
        return None
    return key


FAMILIES: dict[str, tuple[Callable, Callable | None, tuple[str, ...]]] = {
    # family: (module path translator, key renamer, optional top-level modules)
    "resnet": (_resnet_path, None, ("fc",)),
    "efficientnet": (_effnet_path, None, ("fc",)),
    "pointmae": (_pointmae_path, _pointmae_rename, ()),
}


# ------------------------------------------------------------------ architecture guess
def guess_arch(sd: Mapping[str, np.ndarray]) -> str | None:
    """Best guess of the registry name a state_dict belongs to (for error messages)."""
    keys = [k.replace("module.", "", 1) if k.startswith("module.") else k for k in sd]
    keys = [k[len("MAE_encoder.") :] if k.startswith("MAE_encoder.") else k for k in keys]
    sd = dict(zip(keys, sd.values()))
    if any(k.startswith(("blocks.blocks.", "encoder.first_conv")) for k in keys):
        return "pointmae"
    if "_conv_stem.weight" in sd:
        n = 1 + max((int(m[1]) for k in keys if (m := re.match(r"_blocks\.(\d+)\.", k))), default=-1)
        se = any("_se_reduce" in k for k in keys)
        stem = sd["_conv_stem.weight"].shape[0]
        head = sd["_conv_head.weight"].shape[0] if "_conv_head.weight" in sd else None
        for arch in effnet.ARCHS:
            c = effnet.get_config(arch)
            if len(c.blocks) == n and c.stem == stem and (not c.lite) == se and head in (None, c.head):
                return arch
        return None
    if "layer1.0.conv1.weight" in sd:
        counts = tuple(
            1 + max((int(m[1]) for k in keys if (m := re.match(rf"layer{s}\.(\d+)\.", k))), default=-1)
            for s in range(1, 5)
        )
        bottleneck = "layer1.0.conv3.weight" in sd
        width = sd["layer1.0.conv1.weight"].shape[0]
        for arch, c in resnet.CONFIGS.items():
            if (
                c.layers == counts
                and (c.block == "bottleneck") == bottleneck
                and (not bottleneck or width == 64 * c.base_width // 64)
            ):
                return arch
    return None


# ------------------------------------------------------------------ conversion
def _transform(torch_value: np.ndarray, leaf: str, target_shape: tuple) -> np.ndarray:
    v = np.asarray(torch_value)
    if leaf == "kernel":
        if v.ndim == 4:
            v = v.transpose(2, 3, 1, 0)
        elif v.ndim == 3:
            v = v[:, :, 0].T if v.shape[2] == 1 else v
        elif v.ndim == 2:
            v = v.T
    return v.astype(np.float32)


def template(arch: str) -> dict:
    """Flax variable shapes for ``arch`` (flattened ``{(collection, *path): ShapeDtypeStruct}``)."""
    opts = {"num_group": 8, "group_size": 4} if backbones.family(arch) == "pointmae" else {"include_top": True}
    module, args = backbones.build_module(arch, **opts), backbones.dummy_inputs(arch)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))
    return traverse_util.flatten_dict(dict(shapes))


def convert_state_dict(arch: str, sd: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """Map a torch ``state_dict`` onto the Flax tree of ``arch``: returns ``(variables, report)``.

    Raises :class:`ConversionError` listing unexpected keys, missing keys and
    shape mismatches, with a guess of the checkpoint's real architecture.
    ``report`` holds counts, the ignored keys and whether the classifier head
    (``fc``) was present (it is optional).
    """
    family = backbones.family(arch)
    to_path, rename, optional_top = FAMILIES[family]
    tmpl = template(arch)
    filled: dict = {}
    unexpected, mismatched, ignored = [], [], []
    mis_targets = set()
    for key, value in sd.items():
        k = rename(key) if rename else key
        if k is None:
            ignored.append(key)
            continue
        mod, _, attr = k.rpartition(".")
        if attr == "num_batches_tracked":
            ignored.append(key)
            continue
        path = to_path(mod)
        if path is None:
            unexpected.append(key)
            continue
        if ("params",) + path + ("scale",) in tmpl:  # a norm layer
            slot = {
                "weight": ("params", "scale"),
                "bias": ("params", "bias"),
                "running_mean": ("batch_stats", "mean"),
                "running_var": ("batch_stats", "var"),
            }.get(attr)
        else:
            slot = {"weight": ("params", "kernel"), "bias": ("params", "bias")}.get(attr)
        if slot is None:
            unexpected.append(key)
            continue
        target = (slot[0],) + path + (slot[1],)
        if target not in tmpl:
            unexpected.append(key)
            continue
        arr = _transform(value, slot[1], tmpl[target].shape)
        if arr.shape != tuple(tmpl[target].shape):
            mismatched.append(
                f"{key}: checkpoint {tuple(np.shape(value))} -> {arr.shape}, "
                f"{arch} needs {tuple(tmpl[target].shape)} at {'/'.join(target)}"
            )
            mis_targets.add(target)
            continue
        filled[target] = arr
    missing = [t for t in tmpl if t not in filled and t not in mis_targets]
    has_top = True
    top_missing = [t for t in missing if t[1] in optional_top]
    if top_missing and len(top_missing) == sum(1 for t in tmpl if t[1] in optional_top):
        missing = [t for t in missing if t[1] not in optional_top]
        has_top = False
    if unexpected or missing or mismatched:
        guess = guess_arch(sd)
        lines = [
            f"checkpoint does not match {arch!r}"
            + (f" (it looks like {guess!r})" if guess and guess != arch else "")
            + ":"
        ]
        for title, items in (
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
            ("missing keys", ["/".join(t) for t in missing]),
        ):
            if items:
                shown = items[:8] + ([f"... {len(items) - 8} more"] if len(items) > 8 else [])
                lines.append(f"  {len(items)} {title}: " + "; ".join(shown))
        raise ConversionError("\n".join(lines))
    variables = traverse_util.unflatten_dict(filled)
    n_params = int(sum(v.size for t, v in filled.items() if t[0] == "params"))
    report = {
        "arch": arch,
        "torch_keys": len(sd),
        "ignored_keys": len(ignored),
        "ignored_examples": ignored[:5],
        "params": n_params,
        "has_classifier": has_top,
    }
    return variables, report
