"""Augmentation in pure NumPy, driven by an explicit ``np.random.Generator``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["flip_rot90", "flip_rot90_samples"]


def _draw(rng: np.random.Generator, n: int, p: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample (hflip, vflip, k): the only place that consumes ``rng``.

    Both :func:`flip_rot90` and :func:`flip_rot90_samples` draw here, in this
    order, so the same generator state gives the same transform to an image
    array alone and to a dict of modalities.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    hflip = rng.random(n) < p
    vflip = rng.random(n) < p
    rot = rng.random(n) < p
    k = rng.integers(0, 4, n) * rot
    return hflip, vflip, k


def _check_square(x: np.ndarray, k: np.ndarray, what: str) -> None:
    if np.any(k % 2 == 1) and x.shape[1] != x.shape[2]:
        raise ValueError(
            f"rot90 needs square {what}, got H, W = {x.shape[1:3]}; resize them to a square, "
            "or augment with p=0 for rotations"
        )


def _transform(x: np.ndarray, hflip: np.ndarray, vflip: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Apply sample i's flips and k[i] quarter turns to ``x[i]`` ([N, H, W, ...]).

    Samples are grouped by their (hflip, vflip, k) combination, at most 16,
    so a batch costs a handful of NumPy calls instead of one per sample; the
    result is the same permutation of pixels either way. The output shape is
    the input's because an odd k is only allowed on square arrays.
    """
    out = np.empty_like(x)
    combo = hflip.astype(np.int64) * 8 + vflip.astype(np.int64) * 4 + k
    for c in np.unique(combo):
        idx = np.flatnonzero(combo == c)
        y = x[idx]
        if c & 8:
            y = y[:, :, ::-1]
        if c & 4:
            y = y[:, ::-1]
        if c & 3:
            y = np.rot90(y, int(c & 3), axes=(1, 2))
        out[idx] = y
    return out


def flip_rot90(images: np.ndarray, rng: np.random.Generator, p: float = 0.5, masks: np.ndarray | None = None):
    """Random horizontal flip, vertical flip and 90-degree rotation per image.

    The texture augmentation of PyramidFlow's official code (albumentations
    ``HorizontalFlip(p)``, ``VerticalFlip(p)``, ``RandomRotate90(p)``, applied
    in that order): each image is flipped left-right with probability ``p``,
    then up-down with probability ``p``, then with probability ``p`` rotated
    by k * 90 degrees, k uniform in {0, 1, 2, 3} (as ``RandomRotate90`` draws
    it, so k = 0 can happen).

    Args:
      images: [N, H, W] or [N, H, W, C]; rotation needs H == W.
      rng: the generator; the same state gives the same result.
      p: probability of each of the three operations.
      masks: optional [N, H, W] (or [N, H, W, C]) transformed identically.

    Returns:
      A new array like ``images`` (and the transformed masks if given).
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape[:3] != images.shape[:3]:
            raise ValueError(f"masks {masks.shape} do not match images {images.shape}")
    hflip, vflip, k = _draw(rng, images.shape[0], p)
    _check_square(images, k, "images")
    out = _transform(images, hflip, vflip, k)
    if masks is None:
        return out
    return out, _transform(masks, hflip, vflip, k)


def _spatial_leaves(tree: Mapping[str, Any], prefix: str, explicit: bool):
    """(path, array) for every array to transform under ``tree``.

    Implicitly (``keys=None``) only arrays with ndim >= 3 count; an array
    named explicitly must be [N, H, W, ...], else ValueError.
    """
    for key, value in tree.items():
        name = f"{prefix}[{key!r}]"
        if isinstance(value, Mapping):
            yield from _spatial_leaves(value, name, explicit)
            continue
        ndim = np.ndim(value)
        if ndim >= 3:
            yield name, value
        elif explicit:
            raise ValueError(
                f"{name} has shape {np.shape(value)}: only [N, H, W, ...] arrays can be flipped and rotated. "
                "Leave it out of keys."
            )


def flip_rot90_samples(
    batch: Mapping[str, Any], rng: np.random.Generator, p: float = 0.5, keys: Iterable[str] | None = None
) -> dict[str, Any]:
    """:func:`flip_rot90` applied alike to every spatial modality of a batch.

    One (hflip, vflip, k) is drawn per sample, exactly as :func:`flip_rot90`
    draws it, so ``flip_rot90_samples({"image": x}, rng)["image"]`` equals
    ``flip_rot90(x, rng)`` bit for bit with the same generator state. It is
    then applied to each selected array in that array's own H, W: a feature
    map at 1/4 resolution is flipped and rotated like the image, so it stays
    aligned with the (downsampled) transformed image.

    Args:
      batch: sample dict, e.g. ``Split.take(idx)``: arrays [N, ...] and
        nested dicts of them (``batch["features"]``).
      rng: the generator; the same state gives the same result.
      p: probability of each of the three operations.
      keys: top-level keys to transform (a nested dict is transformed
        whole). Default: every array with ndim >= 3, also inside nested
        dicts; 1-D and 2-D entries such as labels are not spatial and pass
        through unchanged.

    Returns:
      A new dict (nested dicts are new too) with the selected arrays
      transformed, dtypes unchanged, and every other entry as it was.

    Raises:
      ValueError: a key is missing, the arrays disagree on N, or an odd
        number of quarter turns is drawn for an array with H != W (the
        message names the key).
    """
    if keys is None:
        selected = list(_spatial_leaves(batch, "batch", explicit=False))
    else:
        keys = [keys] if isinstance(keys, str) else list(keys)
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"keys {missing} are not in the batch (keys {sorted(batch)}); pass existing keys.")
        selected = list(_spatial_leaves({k: batch[k] for k in keys}, "batch", explicit=True))
    if not selected:
        raise ValueError(
            f"Nothing to augment: the batch (keys {sorted(batch)}) has no [N, H, W, ...] array"
            f"{'' if keys is None else f' under keys {keys}'}."
        )
    arrays = {name: np.asarray(a) for name, a in selected}
    n = next(iter(arrays.values())).shape[0]
    for name, a in arrays.items():
        if a.shape[0] != n:
            raise ValueError(f"{name} has {a.shape[0]} samples but {selected[0][0]} has {n}; a batch needs one N.")
    hflip, vflip, k = _draw(rng, n, p)
    for name, a in arrays.items():
        _check_square(a, k, f"arrays: {name}")
    done = {name: _transform(a, hflip, vflip, k) for name, a in arrays.items()}

    def rebuild(tree, prefix):
        out = {}
        for key, value in tree.items():
            name = f"{prefix}[{key!r}]"
            if isinstance(value, Mapping):
                out[key] = rebuild(value, name)
            else:
                out[key] = done.get(name, value)
        return out

    return rebuild(batch, "batch")
