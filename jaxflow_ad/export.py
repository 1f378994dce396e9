"""Export a trained method's scorer as a self-contained StableHLO artifact (``--mode=export``).

What is written into ``out_dir`` (the engine uses ``<workdir>/<category>/export/``)::

    scorer.stablehlo   a serialized :class:`jax.export.Exported` (StableHLO + calling convention)
    params.npz         its array inputs: the flattened parameter leaves, ``p00000``, ``p00001``, ...
    meta.json          method, image size, threshold, normalisation rule, platforms, input/output spec

The exported function is ``(leaves, images) -> (maps, scores, normalized, decisions, pixel_masks)``:

* ``leaves``: the list of arrays in ``params.npz`` in key order: the state's evaluation parameters
  (:func:`~jaxflow_ad.models.base.eval_params`; the moving average where a stage keeps one), its model
  state (without the moving average) and fitted statistics, and the frozen extractor's variables when
  the method has one. They are inputs, not constants, so the StableHLO stays small and the weights
  can be read (and checked) with NumPy.
* ``images``: uint8 ``[b, S, S, 3]``, ``b`` symbolic (any batch size), ``S = config.data.image_size``
  fixed. Images must already be at that size: nothing is resized (the engine's readers resize with
  ``config.data.resize``, which the loader cannot reproduce without the training code).
* Inside: the extractor (if any) on the images, exactly as the engine's feature cache runs it, then
  ``method.score`` with the key the engine gives its first scoring batch
  (``fold_in(fold_in(PRNGKey(seed), 1), 0)``; every method's score is deterministic anyway).
* ``maps`` float32 ``[b, h, w]`` and ``scores`` float32 ``[b]``: what ``method.score`` returns (``h = w = S``
  for every configured variant except PyramidFlow's ResNet encoder, whose maps are at ``S / 4``).
* ``normalized`` float32 ``[b]``: :func:`~jaxflow_ad.metrics.normalize_scores` with the threshold's
  ``image`` and ``holdout_min`` (0.5 at the threshold); NaN without a threshold.
* ``decisions`` bool ``[b]``: ``score >= threshold["image"]``, the engine's rule
  (:func:`~jaxflow_ad.metrics.classification_at`) bit for bit: the float64 threshold is rounded *up*
  to float32 so that the float32 comparison equals the float64 one. False without a threshold.
* ``pixel_masks`` bool ``[b, h, w]``: ``map >= threshold["pixel"]`` (same rounding); False without one.

Load it with :func:`jaxflow_ad.serving.load`, which imports no training code.
"""

from __future__ import annotations

import datetime
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow_ad.metrics.threshold import normalize_scores
from jaxflow_ad.models.base import PARAM_EMA, State, eval_params

FORMAT_VERSION = 1
SCORER_FILE = "scorer.stablehlo"
PARAMS_FILE = "params.npz"
META_FILE = "meta.json"
OUTPUT_NAMES = ("maps", "scores", "normalized", "decisions", "pixel_masks")
NORMALIZATION_RULE = (
    "normalized = clip(0.5 + 0.5 * (score - threshold.image) / max(threshold.image - threshold.holdout_min, 1e-12), "
    "0, 1): 0 at the lowest held-out normal score, 0.5 at the threshold (jaxflow_ad.metrics.normalize_scores)"
)


class ExportError(RuntimeError):
    """A scorer that cannot be exported (an input the images alone do not give, a failed lowering)."""


def float32_at_least(value: float) -> np.float32:
    """The smallest float32 ``>= value``: for float32 ``x``, ``x >= result`` iff ``float64(x) >= value``."""
    f = np.float32(value)
    if float(f) < float(value):
        f = np.nextafter(f, np.float32(np.inf))
    return np.float32(f)


def scoring_tree(method, state: State) -> dict:
    """The array inputs of the exported scorer: ``{"state": {...}, "extractor": variables}`` (no
    ``extractor`` entry for a method without one). The state keeps what scoring reads: the
    evaluation parameters, the model state without the parameters' moving average, the statistics
    and the step; no optimizer state."""
    ms = state.model_state
    if isinstance(ms, Mapping) and PARAM_EMA in ms:
        ms = {k: v for k, v in ms.items() if k != PARAM_EMA}
    tree = {
        "state": {
            "step": state.step,
            "params": eval_params(state),
            "model_state": ms,
            "stats": state.stats,
        }
    }
    if method.extractor is not None:
        tree["extractor"] = method.extractor.variables
    return jax.tree_util.tree_map(lambda a: np.asarray(jax.device_get(a)), tree)


def _threshold_constants(threshold: Mapping[str, Any] | None) -> dict:
    """The constants baked into the graph (``None`` entries: outputs of that kind are NaN / False)."""
    if threshold is None:
        return {"image": None, "low": None, "pixel": None}
    if "image" not in threshold or not math.isfinite(float(threshold["image"])):
        raise ValueError(f"the threshold dict needs a finite 'image' entry (threshold.json), got {dict(threshold)}")
    low = threshold.get("holdout_min")
    pixel = threshold.get("pixel")
    return {
        "image": float(threshold["image"]),
        "low": None if low is None else float(low),
        "pixel": None if pixel is None else float(pixel),
    }


def build_scorer(method, config, treedef, threshold: Mapping[str, Any] | None):
    """The pure function ``(leaves, images uint8 [b,S,S,3]) -> outputs`` (see the module doc) that is exported."""
    t = _threshold_constants(threshold)
    seed = int(config.seed)
    ext = method.extractor

    def scorer(leaves, images):
        tree = jax.tree_util.tree_unflatten(treedef, leaves)
        s = tree["state"]
        state = State(step=s["step"], params=s["params"], model_state=s["model_state"], opt_state=(), stats=s["stats"])
        batch = {"image": images}
        if ext is not None:
            batch["features"] = ext.apply(tree["extractor"], images)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 1), 0)
        maps, scores = method.score(state, batch, key)
        maps = maps.astype(jnp.float32)
        scores = scores.astype(jnp.float32)
        if t["image"] is None:
            decisions = jnp.zeros(scores.shape, jnp.bool_)
        else:
            decisions = scores >= float32_at_least(t["image"])
        if t["image"] is None or t["low"] is None:
            normalized = jnp.full(scores.shape, jnp.nan, jnp.float32)
        else:
            normalized = normalize_scores(scores, t["image"], t["low"]).astype(jnp.float32)
        if t["pixel"] is None:
            masks = jnp.zeros(maps.shape, jnp.bool_)
        else:
            masks = maps >= float32_at_least(t["pixel"])
        return maps, scores, normalized, decisions, masks

    return scorer


def export_scorer(
    method,
    state: State,
    config,
    threshold: Mapping[str, Any] | None,
    out_dir,
    platforms: tuple[str, ...] = ("cpu", "cuda"),
) -> pathlib.Path:
    """Serialize ``method``'s scorer with ``state``'s weights and statistics into ``out_dir``.

    Args:
      method: a built :class:`~jaxflow_ad.models.base.Method` (its extractor, if any, runs inside).
      state: the restored state, statistics fitted (``method.has_statistics``).
      config: the category's config (``models.configure``): ``data.image_size`` and ``seed`` are read.
      threshold: the engine's threshold dict (``<category>/threshold.json``: ``image``, ``holdout_min``,
        ``pixel``, ...) or ``None`` (then ``normalized`` is NaN and the decisions and masks are False).
      out_dir: created if missing; its three files are overwritten.
      platforms: lowered for each (one artifact; the caller's platform is picked at call time).
        Lowering for ``cuda`` needs no GPU.

    Returns:
      ``out_dir`` as a :class:`pathlib.Path`.

    Raises:
      ExportError: an extractor reading another modality than ``image`` (the exported scorer takes
        images only), statistics missing, or a failed lowering (the cause chained).
    """
    out = pathlib.Path(out_dir)
    ext = method.extractor
    if ext is not None and ext.modality != "image":
        raise ExportError(
            f"{method.name}: its extractor reads batch[{ext.modality!r}], not the images; the exported scorer "
            "takes images only"
        )
    if method.has_statistics and not jax.tree_util.tree_leaves(state.stats):
        raise ExportError(f"{method.name}: the state has no fitted statistics; fit them before exporting")
    size = int(config.data.image_size)
    tree = scoring_tree(method, state)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    fn = build_scorer(method, config, treedef, threshold)
    (b,) = jax.export.symbolic_shape("b")
    leaf_specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
    image_spec = jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8)
    try:
        exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(leaf_specs, image_spec)
    except Exception as e:  # noqa: BLE001 - any tracing/lowering failure is reported with the method's name
        raise ExportError(f"{method.name}: exporting the scorer for {tuple(platforms)} failed: {e}") from e

    out.mkdir(parents=True, exist_ok=True)
    (out / SCORER_FILE).write_bytes(bytes(exported.serialize()))
    names = [f"p{i:05d}" for i in range(len(leaves))]
    with open(out / PARAMS_FILE, "wb") as f:
        np.savez(f, **dict(zip(names, leaves)))
    out_avals = exported.out_avals
    meta = {
        "format_version": FORMAT_VERSION,
        "method": method.name,
        "model": config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model),
        "image_size": size,
        "seed": int(config.seed),
        "step": int(np.asarray(tree["state"]["step"])),
        "input": {
            "images": {"shape": ["b", size, size, 3], "dtype": "uint8", "note": "RGB, already at image_size"},
            "params": {"file": PARAMS_FILE, "keys": names, "paths": paths},
        },
        "output_names": list(OUTPUT_NAMES),  # the order of the exported function's results
        "outputs": {
            name: {"shape": [str(d) for d in a.shape], "dtype": str(a.dtype)}
            for name, a in zip(OUTPUT_NAMES, out_avals)
        },
        "threshold": None if threshold is None else dict(threshold),
        "normalization": NORMALIZATION_RULE if threshold is not None and "holdout_min" in threshold else None,
        "decision_rule": "score >= threshold.image; pixel mask: map >= threshold.pixel",
        "without_threshold": "normalized is NaN, decisions and pixel_masks are all False",
        "extractor": None if ext is None else {"name": ext.name, "taps": list(ext.taps), "note": ext.note},
        "notes": list(method.notes),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "calling_convention_version": exported.calling_convention_version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return out
