"""The built-in dataset: small MVTec-AD-layout categories generated offline.

Nothing is downloaded. Normal images are built from photographs that ship
inside scikit-image (``skimage.data.gravel``, ``coins``, ``grass``, ``coffee``,
``chelsea``, ``rocket``) and from procedural patterns; defects are drawn on
top with a known pixel mask.

Categories (``BUILTIN_CATEGORIES``):

- ``gravel`` (texture): random 256x256 crops of the 512x512 gravel photo,
  random flips, tinted sand-grey, brightness/contrast jitter.
  Defects: color, contamination, hole, thread.
- ``weave`` (texture): a procedural over-under woven pattern (period 18 px)
  with a random phase, fibre detail from the grass photo, brightness jitter
  and a faint illumination gradient.
  Defects: broken, color, hole, thread.
- ``coin`` (object): one bronze-tinted coin cut from the coins photo, on a
  plain dark-green background, registered up to a few pixels of shift,
  +-4 degrees of rotation and brightness jitter.
  Defects: chip, crack, scratch, stain.
- ``nut`` (object): a procedural hexagonal metal nut (turned face, chamfer,
  threaded bore) on a plain dark background, registered like ``coin``.
  Defects: chip, color, contamination, scratch.

Every image gets the same mild Gaussian sensor noise (sigma 2/255) as its
clean rendering. A defect writes only the pixels of its mask: outside the mask
a defective image is bit-for-bit its clean rendering (see :func:`render_sample`),
and inside it at least most pixels change. Each mask is one solid region the
defect rewrote (a scratch or crack is 3-5 px wide, blobs have radii of about
7-32 px), so a few pixels inside a mask can keep their clean value by chance.

Randomness: every sample draws from ``np.random.default_rng`` seeded with
(category, split, defect type, index), so any single sample can be rendered
alone and the whole set is identical on every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent import futures

import numpy as np
from PIL import Image
from scipy import ndimage

from .mvtec import DatasetError

__all__ = [
    "BUILTIN_CATEGORIES",
    "DEFECT_KINDS",
    "FORMAT_VERSION",
    "IMAGE_SIZE",
    "OBJECT_CATEGORIES",
    "Sample",
    "TEXTURE_CATEGORIES",
    "default_root",
    "ensure_builtin",
    "render_sample",
]

# Bump whenever the rendered pixels or the layout change: old copies are then
# regenerated instead of reused.
FORMAT_VERSION = 1
IMAGE_SIZE = 256
TEXTURE_CATEGORIES = ("gravel", "weave")
OBJECT_CATEGORIES = ("coin", "nut")
BUILTIN_CATEGORIES = TEXTURE_CATEGORIES + OBJECT_CATEGORIES
DEFECT_KINDS: dict[str, tuple[str, ...]] = {
    "gravel": ("color", "contamination", "hole", "thread"),
    "weave": ("broken", "color", "hole", "thread"),
    "coin": ("chip", "crack", "scratch", "stain"),
    "nut": ("chip", "color", "contamination", "scratch"),
}
# Default counts per category: 60 train, 14 test/good, 4 x 7 defective = 42 test.
N_TRAIN = 60
N_TEST_GOOD = 14
N_TEST_PER_DEFECT = 7

MANIFEST = "builtin_manifest.json"
_SEED = 0x5EED_AD
_NOISE_SIGMA = 2.0 / 255.0
_MIN_MASK_PIXELS = 40
_S = IMAGE_SIZE


def default_root() -> pathlib.Path:
    """``$JAXFLOW_AD_DATA`` if set, else ``~/.cache/jaxflow_ad/builtin``."""
    env = os.environ.get("JAXFLOW_AD_DATA")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("~/.cache/jaxflow_ad/builtin").expanduser()


# ----------------------------------------------------------------------------
# Source material (cached per process)


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as float32 in [0, 1] (read-only)."""
    import skimage.data  # local: only the generator needs scikit-image

    a = getattr(skimage.data, name)().astype(np.float32) / 255.0
    a.setflags(write=False)
    return a


@functools.cache
def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:_S, 0:_S].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (n - n.mean()) / (n.std() + 1e-8)


# ----------------------------------------------------------------------------
# Clean renderings


@dataclasses.dataclass
class _Scene:
    image: np.ndarray  # float32 [S, S, 3], no noise
    alpha: np.ndarray  # float32 [S, S] object coverage (textures: 1)
    background: np.ndarray | None  # float32 [S, S, 3] (objects only)
    params: dict  # what the renderer drew (for defects)


def _render_gravel(rng: np.random.Generator) -> _Scene:
    g = _photo("gravel")
    y0, x0 = rng.integers(0, g.shape[0] - _S + 1), rng.integers(0, g.shape[1] - _S + 1)
    crop = g[y0 : y0 + _S, x0 : x0 + _S]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    contrast, bright = rng.uniform(0.92, 1.08), rng.uniform(0.92, 1.08)
    m = crop.mean()
    v = ((crop - m) * contrast + m) * bright
    img = v[..., None] * np.array([1.0, 0.93, 0.80], np.float32)
    return _Scene(np.clip(img, 0, 1), np.ones((_S, _S), np.float32), None, {})


_WEAVE_PERIOD = 18.0
_WEAVE_HALF = 0.37  # half thread width, in periods
_WEAVE_WARP = np.array([0.80, 0.72, 0.56], np.float32)
_WEAVE_WEFT = np.array([0.70, 0.66, 0.55], np.float32)
_WEAVE_GAP = np.array([0.16, 0.13, 0.10], np.float32)


def _weave_pattern(xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Over-under weave at coordinates (xx, yy) measured in periods."""
    iu, iv = np.floor(xx), np.floor(yy)
    du, dv = np.abs(xx - iu - 0.5), np.abs(yy - iv - 0.5)
    in_warp, in_weft = du < _WEAVE_HALF, dv < _WEAVE_HALF
    # Rounded cross-section, and the thread rising where it passes over.
    warp = np.cos(0.5 * np.pi * np.minimum(du / _WEAVE_HALF, 1.0)) ** 0.5
    weft = np.cos(0.5 * np.pi * np.minimum(dv / _WEAVE_HALF, 1.0)) ** 0.5
    warp_on_top = ((iu + iv) % 2) == 0
    warp_shade = warp * (0.8 + 0.2 * np.cos(2 * np.pi * (yy - iv - 0.5)) * np.where(warp_on_top, 1, -1))
    weft_shade = weft * (0.8 + 0.2 * np.cos(2 * np.pi * (xx - iu - 0.5)) * np.where(warp_on_top, -1, 1))
    show_warp = in_warp & (~in_weft | warp_on_top)
    show_weft = in_weft & ~show_warp
    img = np.broadcast_to(_WEAVE_GAP, xx.shape + (3,)).copy()
    img[show_warp] = (warp_shade[show_warp, None] * _WEAVE_WARP) * 0.85 + 0.15 * _WEAVE_GAP
    img[show_weft] = (weft_shade[show_weft, None] * _WEAVE_WEFT) * 0.85 + 0.15 * _WEAVE_GAP
    return img


def _weave_detail(rng: np.random.Generator) -> np.ndarray:
    g = _photo("grass")
    y0, x0 = rng.integers(0, g.shape[0] - _S + 1), rng.integers(0, g.shape[1] - _S + 1)
    crop = g[y0 : y0 + _S, x0 : x0 + _S]
    return (crop - crop.mean()) / (crop.std() + 1e-6)


def _render_weave(rng: np.random.Generator) -> _Scene:
    yy, xx = _grid()
    ox, oy = rng.uniform(0, _WEAVE_PERIOD, 2)
    img = _weave_pattern((xx + ox) / _WEAVE_PERIOD, (yy + oy) / _WEAVE_PERIOD)
    detail = _weave_detail(rng)
    bright = rng.uniform(0.92, 1.08)
    gx, gy = rng.uniform(-0.04, 0.04, 2)
    light = bright * (1 + gx * (xx / _S - 0.5) + gy * (yy / _S - 0.5)) * (1 + 0.07 * detail)
    img = img * light[..., None]
    return _Scene(np.clip(img, 0, 1), np.ones((_S, _S), np.float32), None, {"ox": ox, "oy": oy, "light": light})


def _warp_sprite(sprite_rgb_premult: np.ndarray, sprite_alpha: np.ndarray, angle_deg: float, dy: float, dx: float):
    """Rotate about the centre and shift (bilinear, zero outside): returns
    (premultiplied rgb, alpha)."""
    yy, xx = _grid()
    c = (_S - 1) / 2.0
    t = np.deg2rad(angle_deg)
    ys, xs = yy - c - dy, xx - c - dx
    sy = np.cos(t) * ys - np.sin(t) * xs + c
    sx = np.sin(t) * ys + np.cos(t) * xs + c
    src = np.concatenate([sprite_rgb_premult, sprite_alpha[..., None]], -1)
    src = np.pad(src, ((1, 1), (1, 1), (0, 0)))  # zeros outside
    sy, sx = np.clip(sy + 1, 0, _S), np.clip(sx + 1, 0, _S)
    y0, x0 = np.minimum(np.floor(sy).astype(np.int32), _S), np.minimum(np.floor(sx).astype(np.int32), _S)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    out = (src[y0, x0] * (1 - fx) + src[y0, x0 + 1] * fx) * (1 - fy) + (
        src[y0 + 1, x0] * (1 - fx) + src[y0 + 1, x0 + 1] * fx
    ) * fy
    return out[..., :3], np.clip(out[..., 3], 0, 1)


def _background(rng: np.random.Generator, colour, bright: float) -> np.ndarray:
    yy, xx = _grid()
    r2 = ((yy - _S / 2) ** 2 + (xx - _S / 2) ** 2) / (_S / 2) ** 2
    vignette = 1.0 - 0.12 * r2
    return (np.asarray(colour, np.float32) * (bright * vignette)[..., None]).astype(np.float32)


def _ellipse_alpha(cy, cx, ry, rx, shape, soft=1.0) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    # Signed distance (approximately, in pixels) -> anti-aliased coverage.
    d = (r - 1.0) * min(ry, rx)
    return np.clip(0.5 - d / soft, 0, 1).astype(np.float32)


@functools.cache
def _coin_sprite() -> tuple[np.ndarray, np.ndarray]:
    """The big coin at the right of ``skimage.data.coins()`` (centre about
    row 187, column 347, 65x62 px), scaled by 2.5 and centred in 256x256."""
    src = _photo("coins")
    scale = 2.5
    cy, cx = 187.0, 347.5
    yy, xx = _grid()
    c = (_S - 1) / 2.0
    sy, sx = (yy - c) / scale + cy, (xx - c) / scale + cx
    gray = ndimage.map_coordinates(src, np.stack([sy, sx]), order=3, mode="nearest")
    alpha = _ellipse_alpha(c, c, 30.0 * scale, 31.5 * scale, (_S, _S), soft=1.5)
    g = np.clip((gray - 0.25) / 0.55, 0, 1)  # stretch the photo's range
    rgb = (0.12 + 0.88 * g)[..., None] * np.array([0.95, 0.76, 0.50], np.float32)
    rgb = rgb * alpha[..., None]
    rgb.setflags(write=False)
    alpha.setflags(write=False)
    return rgb, alpha


@functools.cache
def _nut_sprite() -> tuple[np.ndarray, np.ndarray]:
    """A hexagonal nut: across flats 160 px, chamfered corners, bore 64 px."""
    yy, xx = _grid()
    c = (_S - 1) / 2.0
    y, x = yy - c, xx - c
    r = np.hypot(y, x)
    theta = np.arctan2(y, x)
    flats = 80.0
    # Distance to the hexagon's edge along the normal of the nearest flat.
    sector = np.round(theta / (np.pi / 3)) * (np.pi / 3)
    hex_d = r * np.cos(theta - sector) - flats
    outer = np.clip(0.5 - hex_d, 0, 1)
    chamfer_r = flats * 1.08
    chamfer = np.clip((r - chamfer_r) / 4.0, 0, 1)  # corners beyond the circle
    bore_r, thread_r = 32.0, 40.0
    bore = np.clip(bore_r - r + 0.5, 0, 1)
    alpha = (outer * (1 - bore)).astype(np.float32)
    rng = np.random.default_rng(_SEED)  # the one part's surface
    marks = 0.035 * np.sin(2 * np.pi * r / 2.6 + 0.6 * _smooth_noise(rng, (_S, _S), 6))
    light = 0.10 * (x - y) / (flats * 1.4)
    face = 0.60 + marks + light + 0.03 * _smooth_noise(rng, (_S, _S), 12)
    face = face * (1 - 0.28 * chamfer) + 0.05 * chamfer * ((x + y) / (flats * 1.2))
    thread = np.clip((thread_r - r) / (thread_r - bore_r), 0, 1) > 0
    face = np.where(thread, 0.38 + 0.12 * np.sin(2 * np.pi * r / 3.2), face)
    rgb = np.clip(face, 0, 1)[..., None] * np.array([0.95, 0.97, 1.0], np.float32)
    rgb = (rgb * alpha[..., None]).astype(np.float32)
    rgb.setflags(write=False)
    alpha.setflags(write=False)
    return rgb, alpha


def _render_object(rng: np.random.Generator, sprite, bg_colour) -> _Scene:
    rgb_p, a = sprite
    angle = rng.uniform(-4, 4)
    dy, dx = rng.uniform(-4, 4, 2)
    bright = rng.uniform(0.92, 1.08)
    obj, alpha = _warp_sprite(rgb_p, a, angle, dy, dx)
    bg = _background(rng, bg_colour, rng.uniform(0.9, 1.1))
    img = bg * (1 - alpha[..., None]) + obj * bright
    return _Scene(np.clip(img, 0, 1).astype(np.float32), alpha, bg, {})


_RENDER: dict[str, Callable[[np.random.Generator], _Scene]] = {
    "gravel": _render_gravel,
    "weave": _render_weave,
    "coin": lambda rng: _render_object(rng, _coin_sprite(), (0.10, 0.22, 0.15)),
    "nut": lambda rng: _render_object(rng, _nut_sprite(), (0.11, 0.11, 0.13)),
}


# ----------------------------------------------------------------------------
# Defect shapes (bool masks)


def _blob(rng: np.random.Generator, cy: float, cx: float, radius: float) -> np.ndarray:
    """An irregular, possibly elongated blob of about ``radius`` pixels."""
    phi = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.5, 1.0)
    amps = [rng.uniform(0, 0.28 / k * 2) for k in range(2, 6)]
    phases = [rng.uniform(0, 2 * np.pi) for _ in range(2, 6)]
    # The boundary never leaves radius * (1 + sum(amps)): draw in that window.
    h = int(np.ceil(radius * (1 + sum(amps)))) + 2
    y_lo, y_hi = max(int(cy) - h, 0), min(int(cy) + h + 1, _S)
    x_lo, x_hi = max(int(cx) - h, 0), min(int(cx) + h + 1, _S)
    out = np.zeros((_S, _S), bool)
    if y_lo >= y_hi or x_lo >= x_hi:
        return out
    y, x = np.mgrid[y_lo:y_hi, x_lo:x_hi].astype(np.float32)
    y, x = y - cy, x - cx
    u = np.cos(phi) * x + np.sin(phi) * y
    v = (-np.sin(phi) * x + np.cos(phi) * y) / aspect
    r = np.hypot(u, v)
    t = np.arctan2(v, u)
    edge = np.ones_like(t)
    for k, a, ph in zip(range(2, 6), amps, phases):
        edge += a * np.cos(k * t + ph)
    out[y_lo:y_hi, x_lo:x_hi] = r <= radius * np.maximum(edge, 0.4)
    return out


def _stroke(points: np.ndarray, half_width: float) -> np.ndarray:
    """Pixels within ``half_width`` of a densely sampled polyline (N, 2) [y, x]."""
    marks = np.zeros((_S, _S), bool)
    p = np.round(points).astype(int)
    ok = (p[:, 0] >= 0) & (p[:, 0] < _S) & (p[:, 1] >= 0) & (p[:, 1] < _S)
    marks[p[ok, 0], p[ok, 1]] = True
    if not marks.any():
        return marks
    return ndimage.distance_transform_edt(~marks) <= half_width


def _curve(rng: np.random.Generator, cy: float, cx: float, length: float) -> np.ndarray:
    """A smooth curved line (cubic Bezier) centred near (cy, cx), as points."""
    a = rng.uniform(0, 2 * np.pi)
    d = np.array([np.sin(a), np.cos(a)])
    n = np.array([-d[1], d[0]])
    p0 = np.array([cy, cx]) - d * length / 2
    p3 = np.array([cy, cx]) + d * length / 2
    p1 = p0 + d * length / 3 + n * rng.uniform(-0.4, 0.4) * length
    p2 = p0 + 2 * d * length / 3 + n * rng.uniform(-0.4, 0.4) * length
    t = np.linspace(0, 1, int(length * 3) + 2)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _crack_points(rng: np.random.Generator, cy: float, cx: float, length: float) -> np.ndarray:
    """A jagged crack: straight segments of 3-9 px whose direction wanders
    about a main heading, with one or two shorter branches, as points."""

    def walk(y, x, heading, total):
        pts, a, done = [(y, x)], heading, 0.0
        while done < total:
            a = heading + 0.6 * (a - heading) + rng.normal(0, 0.45)
            seg = rng.uniform(3, 9)
            n = int(seg * 2) + 1
            for k in range(1, n + 1):
                pts.append((y + np.sin(a) * seg * k / n, x + np.cos(a) * seg * k / n))
            y, x = pts[-1]
            done += seg
        return np.array(pts)

    a0 = rng.uniform(0, 2 * np.pi)
    main = walk(cy - np.sin(a0) * length / 2, cx - np.cos(a0) * length / 2, a0, length)
    parts = [main]
    for _ in range(rng.integers(1, 3)):
        i = rng.integers(len(main) // 5, 4 * len(main) // 5)
        side = rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        parts.append(walk(*main[i], a0 + side, length * rng.uniform(0.25, 0.5)))
    return np.concatenate(parts)


# ----------------------------------------------------------------------------
# Defects: each returns (new float image, bool mask); only mask pixels count.

_PALETTE = np.array(
    [
        [0.55, 0.22, 0.08],  # rust
        [0.12, 0.18, 0.62],  # blue ink
        [0.18, 0.55, 0.30],  # green
        [0.08, 0.06, 0.05],  # oil
        [0.88, 0.72, 0.15],  # yellow
        [0.72, 0.10, 0.12],  # red
        [0.92, 0.92, 0.90],  # white
    ],
    np.float32,
)


def _contrasting_colour(rng, local_mean: np.ndarray, min_dist: float = 0.3) -> np.ndarray:
    order = rng.permutation(len(_PALETTE))
    for i in order:
        if np.linalg.norm(_PALETTE[i] - local_mean) >= min_dist:
            return _PALETTE[i]
    return _PALETTE[order[0]]


def _centre(rng: np.random.Generator, scene: _Scene, margin: int = 24) -> tuple[float, float]:
    """A defect centre: anywhere on a texture, well inside an object."""
    if scene.background is None:
        return tuple(rng.uniform(margin, _S - margin, 2))
    core = ndimage.binary_erosion(scene.alpha > 0.99, iterations=10)
    ys, xs = np.nonzero(core)
    i = rng.integers(len(ys))
    return float(ys[i]), float(xs[i])


def _support(scene: _Scene) -> np.ndarray:
    """Pixels a defect may touch: all of a texture, the object for objects."""
    if scene.background is None:
        return np.ones((_S, _S), bool)
    return scene.alpha > 0.5


def _defect_color(rng, scene):
    m = _blob(rng, *_centre(rng, scene), rng.uniform(9, 30)) & _support(scene)
    c = _contrasting_colour(rng, scene.image[m].mean(0) if m.any() else np.full(3, 0.5))
    a = rng.uniform(0.4, 0.8) * (0.85 + 0.15 * np.clip(_smooth_noise(rng, (_S, _S), 3), -1, 1))
    return scene.image * (1 - a[..., None]) + c * a[..., None], m


def _defect_hole(rng, scene):
    m = _blob(rng, *_centre(rng, scene), rng.uniform(8, 22))
    dist = ndimage.distance_transform_edt(m)
    depth = np.clip(dist / 5.0, 0, 1)[..., None]  # darker away from the rim
    new = scene.image * (0.35 - 0.25 * depth) + 0.02
    return new, m


def _defect_thread(rng, scene):
    pts = _curve(rng, *_centre(rng, scene), rng.uniform(50, 160))
    m = _stroke(pts, rng.uniform(1.0, 2.0))
    c = _contrasting_colour(rng, scene.image[m].mean(0) if m.any() else np.full(3, 0.5), 0.4)
    a = rng.uniform(0.6, 0.9)
    return scene.image * (1 - a) + c * a, m


_FOREIGN = ("immunohistochemistry", "hubble_deep_field", "chelsea", "coffee", "astronaut")


def _foreign_texture(rng) -> np.ndarray:
    p = _photo(str(rng.choice(_FOREIGN)))
    y0, x0 = rng.integers(0, p.shape[0] - _S + 1), rng.integers(0, p.shape[1] - _S + 1)
    return p[y0 : y0 + _S, x0 : x0 + _S]


def _defect_contamination(rng, scene):
    """Foreign material: a patch of another photograph, re-lit to stand out."""
    m = _blob(rng, *_centre(rng, scene), rng.uniform(9, 26)) & _support(scene)
    if not m.any():
        return scene.image, m
    tex = _foreign_texture(rng)
    host = scene.image[m].mean(0)
    lum = float(host.mean())
    shift = -rng.uniform(0.3, 0.45) if lum > 0.45 else rng.uniform(0.3, 0.45)
    detail = tex - tex[m].mean(0)
    detail = detail / (detail[m].std() + 1e-6) * rng.uniform(0.08, 0.16)
    tint = rng.uniform(-0.12, 0.12, 3).astype(np.float32)
    patch = np.clip(host + shift + tint + detail, 0, 1)
    return scene.image * 0.1 + patch * 0.9, m


def _defect_scratch(rng, scene):
    pts = _curve(rng, *_centre(rng, scene), rng.uniform(40, 130))
    m = _stroke(pts, rng.uniform(1.0, 1.8)) & _support(scene)
    a = rng.uniform(0.55, 0.8)
    if rng.random() < 0.5:
        new = scene.image * (1 - a) + 0.95 * a  # bright, polished groove
    else:
        new = scene.image * (1 - a) * 0.9  # dark groove
    return new, m


def _defect_crack(rng, scene):
    pts = _crack_points(rng, *_centre(rng, scene), rng.uniform(40, 110))
    m = _stroke(pts, rng.uniform(1.0, 1.6)) & _support(scene)
    return scene.image * 0.22, m


def _defect_chip(rng, scene):
    """A missing chunk at the object's rim: the background shows through."""
    edge = (scene.alpha > 0.5) & ~ndimage.binary_erosion(scene.alpha > 0.5)
    ys, xs = np.nonzero(edge)
    # Only the outer rim (not a bore): farther from the centre than average.
    rr = np.hypot(ys - _S / 2, xs - _S / 2)
    ys, xs = ys[rr > np.median(rr) * 0.9], xs[rr > np.median(rr) * 0.9]
    i = rng.integers(len(ys))
    m = _blob(rng, ys[i], xs[i], rng.uniform(12, 30)) & (scene.alpha > 0.02)
    return scene.background, m


def _defect_broken(rng, scene):
    """A patch where the weave runs at another angle and phase."""
    m = _blob(rng, *_centre(rng, scene), rng.uniform(14, 30))
    yy, xx = _grid()
    t = np.deg2rad(rng.choice([-1, 1]) * rng.uniform(20, 40))
    u = (np.cos(t) * xx - np.sin(t) * yy) / _WEAVE_PERIOD + rng.uniform(0, 1)
    v = (np.sin(t) * xx + np.cos(t) * yy) / _WEAVE_PERIOD + rng.uniform(0, 1)
    pat = _weave_pattern(u, v) * scene.params["light"][..., None]
    return pat, m


_DEFECTS = {
    "color": _defect_color,
    "stain": _defect_color,
    "hole": _defect_hole,
    "thread": _defect_thread,
    "contamination": _defect_contamination,
    "scratch": _defect_scratch,
    "crack": _defect_crack,
    "chip": _defect_chip,
    "broken": _defect_broken,
}


# ----------------------------------------------------------------------------
# Samples


@dataclasses.dataclass
class Sample:
    """One rendered image with its clean counterpart.

    ``image`` and ``clean`` are uint8 [256, 256, 3] and equal outside ``mask``
    (bool [256, 256], all False for good images, where they are identical).
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    category: str
    split: str
    defect_type: str
    index: int


def _seed(category: str, split: str, defect_type: str, index: int, stream: int):
    return [
        _SEED,
        zlib.crc32(category.encode()),
        0 if split == "train" else 1,
        zlib.crc32(defect_type.encode()),
        index,
        stream,
    ]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _check(category: str, split: str, defect_type: str):
    if category not in BUILTIN_CATEGORIES:
        raise ValueError(f"Unknown built-in category {category!r}; choose from {BUILTIN_CATEGORIES}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if defect_type != "good" and (split == "train" or defect_type not in DEFECT_KINDS[category]):
        raise ValueError(
            f"Defect type {defect_type!r} is not one of {category!r}'s "
            f"{DEFECT_KINDS[category]} (train holds only 'good')."
        )


def render_sample(category: str, split: str, defect_type: str, index: int) -> Sample:
    """Render one sample exactly as :func:`ensure_builtin` writes it."""
    _check(category, split, defect_type)
    scene = _RENDER[category](np.random.default_rng(_seed(category, split, defect_type, index, 0)))
    noise = (
        np.random.default_rng(_seed(category, split, defect_type, index, 2))
        .normal(0.0, _NOISE_SIGMA, (_S, _S, 3))
        .astype(np.float32)
    )
    clean = _to_uint8(scene.image + noise)
    if defect_type == "good":
        return Sample(clean, clean.copy(), np.zeros((_S, _S), bool), category, split, defect_type, index)
    rng = np.random.default_rng(_seed(category, split, defect_type, index, 1))
    for _ in range(50):
        new, mask = _DEFECTS[defect_type](rng, scene)
        if mask.sum() < _MIN_MASK_PIXELS:
            continue
        image = np.where(mask[..., None], _to_uint8(new + noise), clean)
        changed = (image != clean).any(-1)
        # A defect must visibly change most of its region.
        if changed[mask].mean() >= 0.75:
            return Sample(image, clean, mask, category, split, defect_type, index)
    raise RuntimeError(f"could not place a {defect_type} defect on {category} #{index}")


# ----------------------------------------------------------------------------
# Writing the folders


def _layout(n_train: int, n_test_good: int, n_test_per_defect: int, category: str):
    """(split, defect_type, index) for every image of a category."""
    out = [("train", "good", i) for i in range(n_train)]
    out += [("test", "good", i) for i in range(n_test_good)]
    for kind in DEFECT_KINDS[category]:
        out += [("test", kind, i) for i in range(n_test_per_defect)]
    return out


def _spec(category, n_train, n_test_good, n_test_per_defect) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "category": category,
        "image_size": IMAGE_SIZE,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "defect_kinds": list(DEFECT_KINDS[category]),
    }


def _expected_counts(spec: dict) -> dict[str, int]:
    counts = {"train/good": spec["n_train"], "test/good": spec["n_test_good"]}
    for kind in spec["defect_kinds"]:
        counts[f"test/{kind}"] = spec["n_test_per_defect"]
        counts[f"ground_truth/{kind}"] = spec["n_test_per_defect"]
    return counts


def category_complete(cat_dir: pathlib.Path, manifest: str, spec: dict, counts: dict[str, tuple[int, str]]) -> bool:
    """True if ``cat_dir`` holds a finished copy: its ``manifest`` file records ``spec`` and every folder
    of ``counts`` holds ``n`` files of its extension (``{folder: (n, ext)}``). Shared by the built-in RGB
    and multimodal sets."""
    try:
        recorded = json.loads((cat_dir / manifest).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("spec") != spec:
        return False
    for folder, (n, ext) in counts.items():
        d = cat_dir / folder
        if not d.is_dir() or sum(1 for p in d.iterdir() if p.suffix == ext) != n:
            return False
    return True


def _is_complete(cat_dir: pathlib.Path, spec: dict) -> bool:
    """True if ``cat_dir`` holds a finished copy matching ``spec``."""
    return category_complete(cat_dir, MANIFEST, spec, {k: (n, ".png") for k, n in _expected_counts(spec).items()})


def _save_png(array: np.ndarray, path: pathlib.Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _write_category(out: pathlib.Path, category: str, spec: dict, workers: int) -> None:
    items = _layout(spec["n_train"], spec["n_test_good"], spec["n_test_per_defect"], category)
    for folder in _expected_counts(spec):
        (out / folder).mkdir(parents=True, exist_ok=True)

    def one(item):
        split, kind, i = item
        s = render_sample(category, split, kind, i)
        _save_png(s.image, out / split / kind / f"{i:03d}.png")
        if kind != "good":
            _save_png(s.mask.astype(np.uint8) * 255, out / "ground_truth" / kind / f"{i:03d}_mask.png")

    if workers > 1:
        with futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, items))
    else:
        for item in items:
            one(item)
    manifest = {"spec": spec, "generator": "jaxflow_ad.data.synthetic", "files": _expected_counts(spec)}
    # The manifest is written last: a folder without it is never reused.
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _remove_stale_temps(root: pathlib.Path, category: str, max_age_s: float = 3600.0) -> None:
    now = time.time()
    for p in root.glob(f".{category}.tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def install_category(
    root: pathlib.Path,
    category: str,
    *,
    complete: Callable[[pathlib.Path], bool],
    write: Callable[[pathlib.Path], None],
    manifest: str,
    owner: str,
) -> None:
    """Make ``root/category`` a complete copy (``complete(folder)``), written by ``write(folder)`` into a
    hidden temporary folder beside it and renamed into place: an interrupted run never leaves a
    half-written category, a complete one is kept, an outdated one (other counts, an older format)
    replaced, and several processes may race (the loser finds the winner's copy complete). A folder
    there without ``manifest`` is someone else's: :class:`DatasetError` (``owner`` names the writer).
    Shared by the built-in RGB set and the multimodal one (:mod:`jaxflow_ad.data.synthetic3d`)."""
    target = root / category
    if complete(target):
        return
    if target.exists() and not (target / manifest).is_file():
        raise DatasetError(
            f"{target} exists but was not written by {owner} (it has no {manifest}). "
            "Delete or move it, or pass another root."
        )
    _remove_stale_temps(root, category)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root))
    try:
        write(tmp)
        if target.exists():  # an older version or other counts: replace it
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{category}.tmp-old-", dir=root))
            with contextlib.suppress(OSError):  # someone else moved it first
                os.rename(target, old / category)
        try:
            os.rename(tmp, target)
        except OSError:
            if not complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in root.glob(f".{category}.tmp-old-*"):
            shutil.rmtree(p, ignore_errors=True)


def ensure_builtin(
    root: str | os.PathLike | None = None,
    categories: Sequence[str] | None = None,
    *,
    n_train: int = N_TRAIN,
    n_test_good: int = N_TEST_GOOD,
    n_test_per_defect: int = N_TEST_PER_DEFECT,
    num_workers: int | None = None,
) -> pathlib.Path:
    """Write the built-in dataset (once) and return its root.

    Each category is generated into a hidden temporary folder under ``root``
    and renamed into place when complete, so an interrupted run never leaves a
    half-written category; a category is reused when its manifest matches the
    format version and the requested counts and its folders hold the
    expected number of files, and regenerated otherwise. Several processes
    may call this at once.

    Args:
      root: where to write; default :func:`default_root`.
      categories: subset of ``BUILTIN_CATEGORIES`` (default: all).
      n_train, n_test_good, n_test_per_defect: image counts per category
        (smaller values make quick test fixtures).
      num_workers: threads rendering and encoding (default: CPU count, max 8).

    Returns:
      ``root``, readable with ``load_split(root, category, split, size)``.
    """
    root = pathlib.Path(root).expanduser() if root is not None else default_root()
    cats = (
        BUILTIN_CATEGORIES if categories is None else tuple([categories] if isinstance(categories, str) else categories)
    )
    for c in cats:
        if c not in BUILTIN_CATEGORIES:
            raise ValueError(f"Unknown built-in category {c!r}; choose from {BUILTIN_CATEGORIES}.")
    for name, n, lo in (
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_per_defect", n_test_per_defect, 0),
    ):
        if not isinstance(n, (int, np.integer)) or n < lo or n > 999:
            raise ValueError(f"{name} must be an int in [{lo}, 999], got {n!r}.")
    if n_test_good + n_test_per_defect == 0:
        raise ValueError("n_test_good and n_test_per_defect cannot both be 0 (the test split would be empty).")
    workers = num_workers or min(8, os.cpu_count() or 1)
    root.mkdir(parents=True, exist_ok=True)
    for category in cats:
        spec = _spec(category, int(n_train), int(n_test_good), int(n_test_per_defect))
        install_category(
            root,
            category,
            complete=lambda d, spec=spec: _is_complete(d, spec),
            write=lambda tmp, category=category, spec=spec: _write_category(tmp, category, spec, workers),
            manifest=MANIFEST,
            owner="ensure_builtin",
        )
    return root
