"""Augmentation in pure NumPy, driven by an explicit ``np.random.Generator``."""

from __future__ import annotations

import numpy as np

__all__ = ["flip_rot90"]


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
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    n = images.shape[0]
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape[:3] != images.shape[:3]:
            raise ValueError(f"masks {masks.shape} do not match images {images.shape}")
    hflip = rng.random(n) < p
    vflip = rng.random(n) < p
    rot = rng.random(n) < p
    k = rng.integers(0, 4, n) * rot
    if np.any(k % 2 == 1) and images.shape[1] != images.shape[2]:
        raise ValueError(f"rot90 needs square images, got H, W = {images.shape[1:3]}")

    def apply(x, i):
        if hflip[i]:
            x = x[:, ::-1]
        if vflip[i]:
            x = x[::-1, :]
        if k[i]:
            x = np.rot90(x, k[i], axes=(0, 1))
        return x

    out = np.stack([apply(images[i], i) for i in range(n)]) if n else images.copy()
    if masks is None:
        return out
    out_m = np.stack([apply(masks[i], i) for i in range(n)]) if n else masks.copy()
    return out, out_m
