"""Host-side synthetic anomalies for FAIR-style training (NumPy, seeded).

FAIR (Liu et al., Sec. 3.1) corrupts every training image before high-pass
filtering with one of two kinds of synthetic anomaly:

* **DRAEM anomalies** (Zavrtanik et al., ICCV 2021): a binary mask made by
  thresholding Perlin noise, filled with a texture. Facts from the official
  FAIR/DRAEM data loaders: the noise is 2-D gradient Perlin noise with the
  quintic fade ``6t^5 - 15t^4 + 10t^3`` and amplitude ``sqrt(2)``, on a lattice
  of ``2^i x 2^j`` cells with ``i, j`` drawn independently from ``{0..5}``; it
  is rotated by a uniform angle in ``[-90, 90]`` degrees (bilinear, zero fill)
  and thresholded at ``> 0.5``. The texture is a DTD image resized to the image
  size with 3 of 10 photometric/geometric operations applied; the blend is
  ``img (1 - m) + (1 - beta) tex m + beta img m`` with ``beta ~ U[0, 0.8)``.
* **Large CutPaste** (after Li et al., CVPR 2021): a crop of 80-90 % of the
  image *side* (so 64-81 % of its area; the paper says "more than 50 % of the
  image content") pasted elsewhere in the same image; the mask is the pasted
  rectangle.

Schedule (official ``data_loaderbhpf``, the paper's version): CutPaste or
DRAEM with probability 1/2 each, and each branch leaves the image clean half
the time, so 25 % CutPaste, 25 % DRAEM, 50 % clean (``p_cutpaste``,
``p_anomaly``). Before that, the clean image is rotated by a uniform angle in
``[-90, 90]`` degrees with probability 0.3 and the rotated image is also the
restoration target: :func:`random_rotate` does that step separately because it
changes the target, then :func:`synthesize` corrupts the result.

Texture source: a folder in the DTD layout ``<root>/images/<class>/*.jpg``
(``<root>/<class>/*.jpg`` is accepted too) when ``texture_root`` is given;
otherwise the training images themselves, as the official "noDTD" loader does
(the paper's ``FAIR_noDTD``, Table 12). The official loader draws any training
image; :func:`synthesize` only sees its batch, so it draws a random image of the
batch (the batch is a random sample of the training set). In that mode the two
extra operations of the noDTD loader (hue shift by up to 90 OpenCV hue units,
i.e. half the hue circle, and channel dropout with p 0.5) join the pool, so 3
of 12 operations are applied.

The photometric operations re-implement the *intent* of DRAEM's imgaug pool
(gamma contrast, brightness multiply/add, sharpness, hue/saturation shift,
solarize, posterize, invert, autocontrast, equalize, rotation by up to 45
degrees) in NumPy with the published parameter ranges; they are not
bit-identical to imgaug.

**The official CutPaste quirk** (``CutpasteAugment.py``). The patch side
lengths are drawn in ``[0.8 H, 0.9 H)`` (the width uses ``H`` too), rounded
down to even, but the crop starts at a uniform ``top, left`` in ``[0, H)`` and
is clipped by the image border, so the patch is often much smaller than 80 %
and can be a thin sliver. It is then "rotated" by ``randrange(-6, 6)`` --
an integer angle in *radians*, 0 included -- with ``cv2.warpAffine`` about the
patch's top-left corner without re-centring, so for most angles most of the
rotated patch is black (outside the source). It is pasted at a uniform position
``[1, H - h - 1)``; the mask is the whole rectangle. ``cutpaste_mode=
"official"`` (the default) reproduces this, since the paper's numbers come from
it: in effect the "CutPaste" anomalies are mostly large black rectangles with a
rotated piece of the image in one corner. ``cutpaste_mode="clean"`` is what the
paper describes: a crop fully inside the image with both sides in
``[0.8, 0.9]`` of the image side, not rotated, pasted at a different position
fully inside the image.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Parameters of :func:`synthesize` (defaults: the official FAIR loader).

    Attributes:
      p_cutpaste: probability of the CutPaste branch (else DRAEM).
      p_anomaly: probability that the chosen branch corrupts the image at all.
      cutpaste_mode: ``"official"`` (the quirky official CutPaste) or ``"clean"``.
      cutpaste_scale: side fraction range of the CutPaste patch.
      perlin_scale_exponents: lattice ``2^i`` cells with ``i`` in ``[lo, hi)``.
      perlin_threshold: noise threshold of the mask.
      perlin_rotation: the noise is rotated by ``U[-r, r]`` degrees.
      beta_max: texture opacity parameter ``beta ~ U[0, beta_max)``.
      texture_root: DTD-like folder, or ``None`` for the training images.
      texture_ops: how many texture operations are chained.
      rotate_prob, rotate_max_deg: :func:`random_rotate` of the clean image.
    """

    p_cutpaste: float = 0.5
    p_anomaly: float = 0.5
    cutpaste_mode: str = "official"
    cutpaste_scale: tuple[float, float] = (0.8, 0.9)
    perlin_scale_exponents: tuple[int, int] = (0, 6)
    perlin_threshold: float = 0.5
    perlin_rotation: float = 90.0
    beta_max: float = 0.8
    texture_root: str | None = None
    texture_ops: int = 3
    rotate_prob: float = 0.3
    rotate_max_deg: float = 90.0

    def __post_init__(self):
        if self.cutpaste_mode not in ("official", "clean"):
            raise ValueError(f"cutpaste_mode must be 'official' or 'clean', got {self.cutpaste_mode!r}")
        for name in ("p_cutpaste", "p_anomaly", "rotate_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"synthesis config {name} must be in [0, 1], got {v}")
        lo, hi = self.cutpaste_scale
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"cutpaste_scale must satisfy 0 < lo <= hi < 1, got {self.cutpaste_scale}")
        if self.perlin_scale_exponents[0] >= self.perlin_scale_exponents[1]:
            raise ValueError(f"perlin_scale_exponents must be (lo, hi) with lo < hi, got {self.perlin_scale_exponents}")

    @classmethod
    def from_config(cls, config: Any) -> SynthConfig:
        """From ``None``, a ``SynthConfig``, a dict or an ``ml_collections.ConfigDict``."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        items = dict(config.items()) if hasattr(config, "items") else dict(config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(items) - names)
        if unknown:
            raise ValueError(f"unknown anomaly-synthesis keys {unknown}; known keys: {sorted(names)}")
        for key in ("cutpaste_scale", "perlin_scale_exponents"):
            if key in items:
                items[key] = tuple(items[key])
        return cls(**items)


# --------------------------------------------------------------------------- Perlin masks


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise ``[H, W]`` on a ``res[0] x res[1]`` lattice, roughly in ``[-1, 1]``.

    Random unit gradients at the ``(res[0] + 1) x (res[1] + 1)`` lattice nodes,
    dot products with the offsets to the 4 corners of each cell, blended with
    the quintic fade; scaled by ``sqrt(2)`` as DRAEM does. Any ``H, W`` work
    (DRAEM needs them divisible by ``res``).
    """
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.arange(h) * (ry / h)
    x = np.arange(w) * (rx / w)
    cy, cx = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - cy)[:, None], (x - cx)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[(cy + dy)[:, None], (cx + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    n0 = corner(0, 0) * (1 - ty) + corner(1, 0) * ty
    n1 = corner(0, 1) * (1 - ty) + corner(1, 1) * ty
    return math.sqrt(2.0) * (n0 * (1 - tx) + n1 * tx)


def rotate(image: np.ndarray, angle_deg: float, order: int = 1) -> np.ndarray:
    """Rotate ``[H, W]`` or ``[H, W, C]`` about the image centre, same size, zero fill."""
    if angle_deg == 0.0:
        return image
    return ndimage.rotate(image, angle_deg, axes=(1, 0), reshape=False, order=order, mode="constant", cval=0.0)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, config: Any = None) -> np.ndarray:
    """DRAEM's anomaly shape: thresholded, rotated Perlin noise as a float32 ``{0, 1}`` ``[H, W]`` mask."""
    cfg = SynthConfig.from_config(config)
    lo, hi = cfg.perlin_scale_exponents
    res = (2 ** int(rng.integers(lo, hi)), 2 ** int(rng.integers(lo, hi)))
    noise = perlin_noise(shape, res, rng)
    noise = rotate(noise, rng.uniform(-cfg.perlin_rotation, cfg.perlin_rotation))
    return (noise > cfg.perlin_threshold).astype(np.float32)


# --------------------------------------------------------------------------- texture operations

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hsv

    return rgb2hsv(x)


def _hsv_to_rgb(x: np.ndarray) -> np.ndarray:
    from skimage.color import hsv2rgb

    return hsv2rgb(x)


def _op_gamma(x, rng):  # GammaContrast((0.5, 2.0), per_channel=True)
    return np.power(x, rng.uniform(0.5, 2.0, size=3))


def _op_brightness(x, rng):  # MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)): on the luma only
    y = x @ _LUMA
    y_new = y * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30) / 255.0
    return x + (y_new - y)[..., None]


def _op_sharpness(x, rng):  # pillike.EnhanceSharpness(): blend with PIL's SMOOTH-filtered image, factor in [0, 2]
    k = np.ones((3, 3, 1), np.float32)
    k[1, 1, 0] = 5.0
    smooth = ndimage.correlate(x, k / 13.0, mode="nearest")
    return smooth + rng.uniform(0.0, 2.0) * (x - smooth)


def _op_hue_saturation(x, rng):  # AddToHueAndSaturation((-50, 50), per_channel=True); hue range 255 <-> 360 deg
    hsv = _rgb_to_hsv(np.clip(x, 0, 1))
    dh, ds = rng.uniform(-50, 50, size=2)
    hsv[..., 0] = (hsv[..., 0] + dh / 255.0) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] + ds / 255.0, 0, 1)
    return _hsv_to_rgb(hsv)


def _op_solarize(x, rng):  # Solarize(0.5, threshold=(32, 128))
    if rng.random() >= 0.5:
        return x
    t = rng.uniform(32, 128) / 255.0
    return np.where(x >= t, 1.0 - x, x)


def _op_posterize(x, rng):  # Posterize(): keep 1..8 bits
    bits = int(rng.integers(1, 9))
    q = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    return (q & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.float32) / 255.0


def _op_invert(x, rng):  # Invert()
    return 1.0 - x


def _op_autocontrast(x, rng):  # pillike.Autocontrast(cutoff=(0, 20)): per-channel stretch after clipping cutoff %
    cut = rng.uniform(0, 20)
    lo = np.percentile(x, cut, axis=(0, 1))
    hi = np.percentile(x, 100 - cut, axis=(0, 1))
    span = np.where(hi > lo, hi - lo, 1.0)
    out = (x - lo) / span
    return np.where(hi > lo, out, x)


def _op_equalize(x, rng):  # pillike.Equalize(): per-channel histogram equalisation on 256 levels
    q = np.clip(np.round(x * 255.0), 0, 255).astype(np.int64)
    out = np.empty_like(x)
    for c in range(x.shape[-1]):
        hist = np.bincount(q[..., c].ravel(), minlength=256)
        cdf = np.cumsum(hist).astype(np.float64)
        nz = cdf[cdf > 0]
        denom = cdf[-1] - nz[0]
        lut = (cdf - nz[0]) / denom if denom > 0 else np.arange(256) / 255.0
        out[..., c] = np.clip(lut, 0, 1)[q[..., c]]
    return out


def _op_rotate(x, rng):  # Affine(rotate=(-45, 45))
    return rotate(x, rng.uniform(-45, 45))


def _op_hue_add(x, rng):  # noDTD: WithColorspace(HSV, WithChannels(0, Add((0, 90)))); OpenCV hue has 180 units
    hsv = _rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(0, 90) / 180.0) % 1.0
    return _hsv_to_rgb(hsv)


def _op_channel_dropout(x, rng):  # noDTD: Dropout2d(p=0.5), at least one channel kept
    keep = rng.random(x.shape[-1]) >= 0.5
    if not keep.any():
        keep[rng.integers(x.shape[-1])] = True
    return x * keep.astype(x.dtype)


TEXTURE_OPS: tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], ...] = (
    _op_gamma,
    _op_brightness,
    _op_sharpness,
    _op_hue_saturation,
    _op_solarize,
    _op_posterize,
    _op_invert,
    _op_autocontrast,
    _op_equalize,
    _op_rotate,
)
NO_DTD_EXTRA_OPS = (_op_hue_add, _op_channel_dropout)


def augment_texture(
    texture: np.ndarray, rng: np.random.Generator, n_ops: int = 3, extra_ops: bool = False
) -> np.ndarray:
    """Apply ``n_ops`` distinct random operations of DRAEM's pool (plus the noDTD extras) to ``[H, W, 3]``."""
    pool = TEXTURE_OPS + (NO_DTD_EXTRA_OPS if extra_ops else ())
    x = np.asarray(texture, np.float32)
    for i in rng.choice(len(pool), size=min(n_ops, len(pool)), replace=False):
        x = np.clip(pool[int(i)](x, rng), 0.0, 1.0).astype(np.float32)
    return x


# --------------------------------------------------------------------------- texture folder


@functools.lru_cache(maxsize=8)
def list_texture_files(root: str) -> tuple[str, ...]:
    """The ``*.jpg`` files of a DTD-like folder: ``<root>/images/<class>/*.jpg`` or ``<root>/<class>/*.jpg``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"texture folder {root!r} does not exist; download DTD (robots.ox.ac.uk/~vgg/data/dtd) "
            "and point texture_root at its root, or set texture_root=None to use the training images"
        )
    base = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root
    files = tuple(sorted(glob.glob(os.path.join(base, "*", "*.jpg"))))
    if not files:
        raise FileNotFoundError(
            f"no textures found under {base!r}: expected the DTD layout <root>/images/<class>/*.jpg"
        )
    return files


def load_texture(path: str, size: tuple[int, int]) -> np.ndarray:
    """One texture file as float32 RGB ``[H, W, 3]`` in [0, 1], resized bilinearly to ``size = (H, W)``.

    The file is decoded as the dataset readers decode images
    (:func:`jaxflow_ad.data.imageio.read_image`: grayscale on three channels,
    alpha ignored, 16-bit scaled to 8 bits).

    Raises:
      DatasetError: naming the file, if it cannot be decoded or has no exact 8-bit reading (e.g. a float TIFF).
    """
    from PIL import Image

    from .imageio import read_image

    im = read_image(path, what="texture image").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im, np.float32) / 255.0


# --------------------------------------------------------------------------- the two anomaly kinds


def draem_anomaly(
    image: np.ndarray, texture: np.ndarray, rng: np.random.Generator, config: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Perlin-shaped texture anomaly: ``(augmented [H, W, C], mask [H, W])``; the texture is used as given."""
    cfg = SynthConfig.from_config(config)
    mask = perlin_mask(image.shape[:2], rng, cfg)
    beta = rng.uniform(0.0, cfg.beta_max)
    m = mask[..., None]
    out = image * (1.0 - m) + (1.0 - beta) * texture * m + beta * image * m
    return out.astype(np.float32), mask


def _warp_about_top_left(patch: np.ndarray, angle: float) -> np.ndarray:
    """``cv2.warpAffine(patch, [[cos, -sin, 0], [sin, cos, 0]], (w, h))``: bilinear, zero border."""
    h, w = patch.shape[:2]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    c, s = math.cos(angle), math.sin(angle)
    # destination (x=col, y=row) samples the source at the inverse rotation of (x, y)
    src_x = c * cols + s * rows
    src_y = -s * cols + c * rows
    out = np.empty_like(patch)
    for ch in range(patch.shape[2]):
        out[..., ch] = ndimage.map_coordinates(patch[..., ch], [src_y, src_x], order=1, mode="constant", cval=0.0)
    return out


def large_cutpaste(image: np.ndarray, rng: np.random.Generator, config: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """FAIR's large CutPaste: ``(augmented [H, W, C], mask [H, W])`` (see module docstring for the modes)."""
    cfg = SynthConfig.from_config(config)
    h, w = image.shape[:2]
    lo, hi = cfg.cutpaste_scale
    out = image.copy()
    mask = np.zeros((h, w), np.float32)
    if cfg.cutpaste_mode == "official":

        def side() -> int:  # randrange(round(0.8 h), round(0.9 h)), made even; the code uses h for both sides
            n = int(rng.integers(round(h * lo), max(round(h * hi), round(h * lo) + 1)))
            return n - (n % 2)

        top = int(rng.integers(0, h))
        bottom = top + side()
        left = int(rng.integers(0, w))
        right = left + side()
        patch = image[top:bottom, left:right]  # clipped at the border, as the official slice is
        ph, pw = patch.shape[:2]
        angle = float(rng.integers(-6, 6))  # integer radians
        patch = _warp_about_top_left(patch, angle)
        y = int(rng.integers(1, max(h - ph - 1, 2)))
        x = int(rng.integers(1, max(w - pw - 1, 2)))
        ph, pw = min(ph, h - y), min(pw, w - x)
        out[y : y + ph, x : x + pw] = patch[:ph, :pw]
        mask[y : y + ph, x : x + pw] = 1.0
        return out.astype(np.float32), mask
    ph = int(rng.integers(math.ceil(h * lo), math.floor(h * hi) + 1))
    pw = int(rng.integers(math.ceil(w * lo), math.floor(w * hi) + 1))
    top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    y, x = top, left
    for _ in range(16):  # paste somewhere else, so the patch really moves
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        if (y, x) != (top, left):
            break
    out[y : y + ph, x : x + pw] = image[top : top + ph, left : left + pw]
    mask[y : y + ph, x : x + pw] = 1.0
    return out.astype(np.float32), mask


# --------------------------------------------------------------------------- batched entry points


def random_rotate(images: np.ndarray, rng: np.random.Generator, config: Any = None) -> np.ndarray:
    """Rotate each NHWC image with probability ``rotate_prob`` by ``U[-max, max]`` degrees (zero fill).

    The official loader does this to the clean image *before* corruption and
    uses the rotated image as the restoration target.
    """
    cfg = SynthConfig.from_config(config)
    out = np.array(images, dtype=np.float32, copy=True)
    for i in range(out.shape[0]):
        if rng.random() < cfg.rotate_prob:
            out[i] = np.clip(rotate(out[i], rng.uniform(-cfg.rotate_max_deg, cfg.rotate_max_deg)), 0.0, 1.0)
    return out


def synthesize(images: np.ndarray, rng: np.random.Generator, config: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a batch of NHWC float32 images in [0, 1] with FAIR's synthetic anomalies.

    Args:
      images: ``[B, H, W, 3]`` float32 in [0, 1] (the clean targets).
      rng: the NumPy generator all randomness comes from (same seed, same output).
      config: a :class:`SynthConfig`, a mapping/``ConfigDict`` of its fields, or ``None``.

    Returns:
      ``(augmented [B, H, W, 3] float32 in [0, 1], masks [B, H, W] float32 in {0, 1})``.
    """
    cfg = SynthConfig.from_config(config)
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"synthesize expects NHWC images, got shape {images.shape}")
    b, h, w, _ = images.shape
    files = list_texture_files(cfg.texture_root) if cfg.texture_root else None
    out = images.copy()
    masks = np.zeros((b, h, w), np.float32)
    for i in range(b):
        use_cutpaste = rng.random() < cfg.p_cutpaste
        if rng.random() >= cfg.p_anomaly:
            continue
        if use_cutpaste:
            out[i], masks[i] = large_cutpaste(images[i], rng, cfg)
            continue
        if files is not None:
            tex = load_texture(files[int(rng.integers(len(files)))], (h, w))
        else:
            tex = images[int(rng.integers(b))]
        tex = augment_texture(tex, rng, cfg.texture_ops, extra_ops=files is None)
        out[i], masks[i] = draem_anomaly(images[i], tex, rng, cfg)
    return np.clip(out, 0.0, 1.0), masks
