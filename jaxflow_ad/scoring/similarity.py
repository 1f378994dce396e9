"""Image similarity maps used by FAIR: SSIM (training loss) and MSGMS (anomaly map).

All functions take NHWC float images and are pure, jit-friendly ``jax.numpy``.

SSIM (Wang et al. 2004; FAIR Eq. 7 uses ``L = l2 + (1 - SSIM)``, after
Bergmann et al. 2018). Facts from the official FAIR ``loss.py``, followed here:

* 11x11 Gaussian window with sigma 1.5, normalised, applied per channel
  (depthwise) with zero padding of 5, so the map has the input size and the
  border windows see zeros; the loss is the mean of the map over batch,
  channels and pixels.
* ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, with the dynamic range ``L``
  inferred from the *first* argument (the reconstruction during training):
  ``max_val = 255 if max(x) > 128 else 1``, ``min_val = -1 if min(x) < -0.5
  else 0``, ``L = max_val - min_val``. That is ``data_range=None`` here; pass a
  number to fix ``L`` instead.

MSGMS (multi-scale gradient magnitude similarity; Zavrtanik et al. 2021 "RIAD",
GMS from Xue et al. 2013), FAIR Eq. 8. Facts from the official ``msgms.py``:

* Prewitt kernels divided by 3, zero padding 1, per channel;
  ``GM = sqrt(gx^2 + gy^2 + 1e-12)``.
* ``GMS = (2 GM1 GM2 + c) / (GM1^2 + GM2^2 + c + 1e-12)``, ``c = 0.0026``.
* Scale ``s > 0`` is reached by 2x2 average pooling (floor), and every GMS
  map is resized back bilinearly (half-pixel centres, ``align_corners=False``).
* The map is ``mean_c(1 - sum_s GMS_s / S)``; the official test uses ``S = 2``
  (RIAD's own default is 3).

The mean filter of FAIR Eq. 10 (``f_mean``, 21x21) divides by ``k^2``
everywhere and pads with zeros, as the official ``mean_smoothing`` does, so
values fall off within 10 px of the border.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

GMS_C = 0.0026


def gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian of odd ``size`` centred on ``size // 2``."""
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _depthwise(x: jax.Array, kernel: np.ndarray | jax.Array) -> jax.Array:
    """Cross-correlate every channel of NHWC ``x`` with the 2-D ``kernel`` (zero padding, same size)."""
    kernel = jnp.asarray(kernel, jnp.float32)
    kh, kw = kernel.shape
    c = x.shape[-1]
    rhs = jnp.broadcast_to(kernel[:, :, None, None], (kh, kw, 1, c))
    return jax.lax.conv_general_dilated(
        x.astype(jnp.float32),
        rhs,
        window_strides=(1, 1),
        padding=((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,
    )


def _separable(x: jax.Array, taps_h: np.ndarray, taps_w: np.ndarray) -> jax.Array:
    return _depthwise(_depthwise(x, np.asarray(taps_h)[:, None]), np.asarray(taps_w)[None, :])


def official_dynamic_range(x: jax.Array) -> jax.Array:
    """``L`` as the official SSIM infers it from its first argument (see module docstring)."""
    max_val = jnp.where(jnp.max(x) > 128.0, 255.0, 1.0)
    min_val = jnp.where(jnp.min(x) < -0.5, -1.0, 0.0)
    return max_val - min_val


def ssim_map(
    x: jax.Array,
    y: jax.Array,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float | None = None,
) -> jax.Array:
    """Per-pixel, per-channel SSIM ``[B, H, W, C]`` of NHWC images (Gaussian window, zero padding)."""
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    taps = gaussian_taps(window_size, sigma)
    blur = lambda t: _separable(t, taps, taps)  # noqa: E731
    L = official_dynamic_range(x) if data_range is None else jnp.float32(data_range)
    c1 = (0.01 * L) ** 2
    c2 = (0.03 * L) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return num / den


def ssim(
    x: jax.Array,
    y: jax.Array,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float | None = None,
    per_image: bool = False,
) -> jax.Array:
    """Mean SSIM: a scalar over the whole batch (official), or ``[B]`` with ``per_image=True``."""
    m = ssim_map(x, y, window_size, sigma, data_range)
    return m.mean(axis=(1, 2, 3)) if per_image else m.mean()


def restoration_loss(
    recon: jax.Array, target: jax.Array, data_range: float | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """FAIR Eq. 7: ``mean((recon - target)^2) + (1 - SSIM(recon, target))``.

    Returns ``(loss, {"mse": ..., "ssim": ...})``. ``recon`` comes first, as in
    the official call ``loss_ssim(gray_rec, gray_batch)``: it sets ``L``.
    """
    mse = jnp.mean((recon.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)
    s = ssim(recon, target, data_range=data_range)
    return mse + (1.0 - s), {"mse": mse, "ssim": s}


PREWITT_X = np.array([[1.0, 0.0, -1.0]] * 3, np.float32) / 3.0
PREWITT_Y = PREWITT_X.T.copy()


def gradient_magnitude(x: jax.Array) -> jax.Array:
    """Prewitt gradient magnitude per channel of NHWC ``x`` (zero padding 1)."""
    gx = _depthwise(x, PREWITT_X)
    gy = _depthwise(x, PREWITT_Y)
    return jnp.sqrt(gx**2 + gy**2 + 1e-12)


def gms_map(x: jax.Array, y: jax.Array, c: float = GMS_C) -> jax.Array:
    """Gradient magnitude similarity ``[B, H, W, C]`` (Xue et al. 2013), 1 where gradients agree."""
    g1 = gradient_magnitude(x)
    g2 = gradient_magnitude(y)
    return (2.0 * g1 * g2 + c) / (g1**2 + g2**2 + c + 1e-12)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 of NHWC ``x`` (odd trailing rows/columns dropped)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def msgms_map(x: jax.Array, y: jax.Array, num_scales: int = 2, c: float = GMS_C) -> jax.Array:
    """FAIR's gradient term ``1 - MSGMS`` (Eq. 8) as a ``[B, H, W]`` map, averaged over channels."""
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    b, h, w, ch = x.shape
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    total = jnp.zeros((b, h, w, ch), jnp.float32)
    for s in range(num_scales):
        if s > 0:
            x, y = avg_pool2(x), avg_pool2(y)
        g = gms_map(x, y, c)
        if g.shape[1:3] != (h, w):
            g = jax.image.resize(g, (b, h, w, ch), method="bilinear", antialias=False)
        total = total + g
    return jnp.mean(1.0 - total / num_scales, axis=-1)


def mean_filter(maps: jax.Array, size: int = 21) -> jax.Array:
    """``size x size`` box mean of ``[B, H, W]`` maps, zero padding, always divided by ``size^2``."""
    taps = np.full((size,), 1.0 / size, np.float32)
    return _separable(maps[..., None], taps, taps)[..., 0]
