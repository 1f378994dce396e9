"""FAIR's anomaly evaluation function (paper Sec. 3.4, Eq. 8-10).

``A = f_mean * (k A_color + A_gradient)`` with

* ``A_gradient = 1 - MSGMS(I, I_r)`` over the two finest scales (Eq. 8),
* ``A_color = (a_r - a)^2 + (b_r - b)^2`` in CIELAB, lightness ignored (Eq. 9),
* ``k = 3e-4`` and a 21x21 mean filter (Eq. 10, both as in the paper and the
  official ``test.py``),
* image score = maximum of the smoothed map.

Paper vs official code: the official ``test.py`` hands its **BGR** tensors to
``kornia.color.rgb_to_lab`` as if they were RGB, so its ``a``/``b`` channels
are those of the channel-swapped colour. The paper describes a proper CIELAB
conversion. We default to the paper (``channel_order="rgb"``: our images are
RGB); ``channel_order="bgr"`` reverses the channels before the conversion to
reproduce the official numbers. The reconstruction is not clamped, as in the
official code.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jaxflow_ad.scoring.color import rgb_to_lab
from jaxflow_ad.scoring.similarity import GMS_C, mean_filter, msgms_map

COLOR_WEIGHT = 3e-4
MEAN_FILTER_SIZE = 21


def color_difference_map(recon: jax.Array, image: jax.Array, channel_order: Literal["rgb", "bgr"] = "rgb") -> jax.Array:
    """Eq. 9: squared a*/b* differences ``[B, H, W]`` of NHWC colour images in [0, 1]."""
    if channel_order == "bgr":
        recon, image = recon[..., ::-1], image[..., ::-1]
    elif channel_order != "rgb":
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    d = rgb_to_lab(recon)[..., 1:] - rgb_to_lab(image)[..., 1:]
    return jnp.sum(d * d, axis=-1)


def fair_anomaly_map(
    recon: jax.Array,
    image: jax.Array,
    *,
    num_scales: int = 2,
    gms_c: float = GMS_C,
    color_weight: float = COLOR_WEIGHT,
    mean_size: int = MEAN_FILTER_SIZE,
    channel_order: Literal["rgb", "bgr"] = "rgb",
) -> jax.Array:
    """Eq. 10: smoothed ``k A_color + A_gradient`` as ``[B, H, W]`` (``color_weight=0`` drops the colour term)."""
    amap = msgms_map(recon, image, num_scales=num_scales, c=gms_c)
    if color_weight:
        amap = amap + color_weight * color_difference_map(recon, image, channel_order)
    return mean_filter(amap, mean_size) if mean_size > 1 else amap


def image_scores(maps: jax.Array) -> jax.Array:
    """Image-level score: the maximum of each ``[B, H, W]`` map."""
    return jnp.max(maps, axis=(1, 2))
