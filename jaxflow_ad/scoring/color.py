"""sRGB to CIELAB in ``jax.numpy`` (for FAIR's colour term, paper Eq. 9).

Standard definitions (IEC 61966-2-1 sRGB, CIE 1976 L*a*b*), with the constants
scikit-image uses so that results match ``skimage.color.rgb2lab`` (D65, 2 deg
observer):

* linearise: ``c / 12.92`` if ``c <= 0.04045`` else ``((c + 0.055) / 1.055)^2.4``
* ``XYZ = M @ rgb_linear`` with the sRGB/D65 matrix below
* normalise by the white point ``(0.95047, 1.0, 1.08883)``
* ``f(t) = t^(1/3)`` if ``t > 0.008856`` else ``7.787 t + 16/116``
* ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))``

Inputs are not clipped (the official FAIR code feeds the unclamped
reconstruction to its Lab conversion); values below 0 follow the linear
branches. The official code reaches Lab through kornia's ``rgb_to_lab`` with
the same formulas.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
D65_WHITE = (0.95047, 1.0, 1.08883)


def srgb_to_linear(rgb: jax.Array) -> jax.Array:
    """Undo the sRGB transfer curve (element-wise)."""
    rgb = rgb.astype(jnp.float32)
    hi = ((jnp.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4
    return jnp.where(rgb > 0.04045, hi, rgb / 12.92)


def rgb_to_xyz(rgb: jax.Array) -> jax.Array:
    """``[..., 3]`` sRGB in [0, 1] to CIE XYZ (D65)."""
    m = jnp.asarray(XYZ_FROM_RGB, jnp.float32)
    return jnp.einsum("...c,dc->...d", srgb_to_linear(rgb), m, precision=jax.lax.Precision.HIGHEST)


def xyz_to_lab(xyz: jax.Array) -> jax.Array:
    """``[..., 3]`` CIE XYZ to L*a*b* relative to the D65 white."""
    t = xyz / jnp.asarray(D65_WHITE, jnp.float32)
    eps = 0.008856
    f = jnp.where(t > eps, jnp.cbrt(jnp.maximum(t, eps)), 7.787 * t + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
    """``[..., 3]`` sRGB in [0, 1] to CIELAB ``[..., 3]`` (L in [0, 100])."""
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_lab expects 3 channels in the last axis, got shape {rgb.shape}")
    return xyz_to_lab(rgb_to_xyz(rgb))
