"""The built-in multimodal dataset: small RGB + point-cloud categories in the MVTec 3D-AD layout,
generated offline.

Specification: ``madflow-brief.md`` section 4 ("Built-in multimodal set") and section 7
("Generator"); the on-disk layout is ``datasets.md`` section 4 (MVTec 3D-AD); the depth branch
that consumes it is ``madflow-brief.md`` section 1 step 4 (AST: foreground = more than 7 mm off a
bilinear plane through the four image corners). Nothing is downloaded: the textures come from
photographs that ship inside scikit-image, like the RGB built-in set (``synthetic.py``).

Scene. A pinhole camera (focal length ``f = 1000 * size / 256`` px, so the scene looks the same at
every size; principal point at the image centre) looks down the +z axis at a support plane about
0.40 m away (396-404 mm), tilted by up to 1.7 degrees in a random direction. One object stands on
the plane, described as a height field (its height over the plane, along the plane's normal) in
object coordinates; the object is shifted by up to +-5 mm and turned by up to +-10 degrees in the
plane (pose jitter). Each pixel's ray is cast through the height field (a 0.5 mm march down from
above the object, then Illinois regula falsi), so occlusion and parallax are exact. Categories
(``BUILTIN3D_CATEGORIES``):

- ``puck``: a cylinder, radius 30 +- 0.5 mm, 12 mm high, with a 1.5 mm 45-degree chamfer and an
  engraved ring (radius 0.6 r, 1.6 mm wide, 0.6 mm deep); texture from ``skimage.data.gravel``.
- ``bun``: an ellipsoidal cap 25 mm high (an ellipsoid of semi-axes about 34 x 29 x 30 mm cut
  5 mm above its equator), so its rim is steep; texture from ``skimage.data.grass``, browner on top.
- ``plate``: a rounded-rectangle slab 64 x 44 mm, 12 mm thick with a 1 mm chamfer, carrying 0.4 mm
  ridges (period 2.5 mm) on its top; texture from ``skimage.data.brick``. The brief's 6 mm (and
  the 8-10 mm suggested with it) is too thin: AST's depth branch drops everything within 7 mm of
  the background plane, and a 4 mm dent in a 10 mm slab would put its floor at 6 mm, where the
  depth branch would flatten it to the foreground mean. At 12 mm a defect's floor stays at least
  7.5 mm above the plane (and every object then stands the brief's "at least 12 mm proud").

The support plane has a smooth grey texture (``skimage.data.moon``, blurred). Every object stays
inside the image with a margin (the widest, the plate, reaches about 40 mm from the optical axis
where the image half-width is about 50 mm), so the image corners, 70 mm out, always see the plane.

Point cloud (``xyz``): float32 [S, S, 3] in metres, the 3-D point of each pixel in camera
coordinates (z along the optical axis). Nuisances: z noise (sigma 0.15 mm, applied along the
ray), 0.3 % random dropouts, and missing steep walls: a point whose surface normal makes more than
80 degrees with its view ray is dropped. A dropped point is (0, 0, 0).

RGB: texture albedo x Lambertian shading (ambient 0.3, one distant light from the upper left)
of the **clean** surface, plus Gaussian noise (sigma 2/255), rounded to uint8.

Defects (test split, ``DEFECT_KINDS_3D``), all placed on the object's top surface (where the clean
height is at least 11.3 mm on ``puck``, 15 mm on ``bun`` and 11.5 mm on ``plate``, so that even a
4 mm dent keeps its floor above AST's 7 mm threshold):

- ``bump``, ``dent``: an elliptical patch (radius 6-14 px at 256, aspect 0.7-1) raised or sunk by
  a bowl profile, 1.7-3.2 mm at its rim and 1.25 times that (up to 4 mm) in its centre, with
  vertical walls. Geometry only.
- ``cut``: a curved groove (a circular arc 20-50 px long, 3-5 px wide at 256), 1.6-2.4 mm deep at
  its walls and up to 3 mm on its centre line. Geometry only.
- ``hole``: the points of an irregular blob (radius 6-14 px) are missing and its albedo is dark.
  Both modalities.
- ``stain``: an irregular blob (radius 8-16 px) of another colour. RGB only.

The mask is the set of pixels that see the defect's footprint (in the clean or, for the geometric
kinds, in the defective surface). Promises, which the renderer verifies (redrawing the defect if
needed) and the tests check: for ``bump``, ``cut`` and ``dent`` the RGB is byte-identical to the
defect-free rendering of the same sample and z moves by at least 1.5 mm on at least 75 % of the
mask's pixels that are present in both clouds; for ``stain`` the cloud is byte-identical to the
defect-free one; every defective mask is non-empty. The brief's depths (1.5-4 mm for dents and
bumps, 1-3 mm for cuts) are narrowed at the low end so that the 1.5 mm promise also holds on
sloped surfaces, where parallax and the tilt shrink a height change seen along z by a few percent.

Randomness: a sample is fully determined by its seed. All the randomness of the clean sample
(pose, tilt, shape, textures, light, every noise field) is drawn first; the defect draws from a
separate generator, so one seed rendered as ``good`` and as a defect kind gives the same clean
scene. On disk every sample has its own seed (``sample_seed``: category, split, defect type and
index), so the files are identical on every run.

Layout written by :func:`ensure_builtin3d` (``datasets.md`` section 4)::

    <root>/<cat>/train/good/{rgb/NNN.png, xyz/NNN.tiff}
    <root>/<cat>/validation/good/{rgb/NNN.png, xyz/NNN.tiff}
    <root>/<cat>/test/<good|kind>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}
    <root>/<cat>/class_ids.json                    # mask value -> defect name
    <root>/<cat>/calibration/camera_parameters.json
    <root>/<cat>/builtin3d_manifest.json

``gt`` values are ``255 - k`` for the k-th kind of ``DEFECT_KINDS_3D[cat]`` (0-based), and 0 on
good pixels; ``test/good/gt`` masks exist and are all zero. Tiffs are uncompressed float32 written
with ``tifffile.imwrite`` (no predictor).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import zlib
from collections.abc import Callable, Sequence
from concurrent import futures

import numpy as np
from PIL import Image
from scipy import ndimage

from .synthetic import category_complete, install_category

__all__ = [
    "BUILTIN3D_CATEGORIES",
    "DEFECT_KINDS_3D",
    "FORMAT_VERSION",
    "GEOMETRY_KINDS_3D",
    "IMAGE_SIZE",
    "MANIFEST",
    "default_root3d",
    "ensure_builtin3d",
    "render_sample3d",
    "sample_seed",
]

# Bump whenever the rendered data or the layout change: old copies are then regenerated.
FORMAT_VERSION = 1
IMAGE_SIZE = 256
BUILTIN3D_CATEGORIES = ("puck", "bun", "plate")
_KINDS = ("bump", "cut", "dent", "hole", "stain")
DEFECT_KINDS_3D: dict[str, tuple[str, ...]] = {c: _KINDS for c in BUILTIN3D_CATEGORIES}
# Kinds visible in the point cloud only (their RGB equals the defect-free rendering).
GEOMETRY_KINDS_3D = ("bump", "cut", "dent")
N_TRAIN, N_VALIDATION, N_TEST_GOOD, N_TEST_PER_DEFECT = 48, 6, 12, 6
MIN_SIZE, MAX_SIZE = 64, 2048

MANIFEST = "builtin3d_manifest.json"
_SEED = 0x3D5EED
_SPLITS = ("train", "validation", "test")

# Scene constants (millimetres, radians).
_F256 = 1000.0  # focal length in pixels at size 256
_PLANE_DIST = (396.0, 404.0)
_MAX_TILT = np.deg2rad(1.7)
_SHIFT_MM = 5.0
_MAX_TURN = np.deg2rad(10.0)
_Z_NOISE_MM = 0.15
_DROPOUT = 0.003
_STEEP_COS = float(np.cos(np.deg2rad(80.0)))
_RGB_NOISE = 2.0 / 255.0
_STEP_MM = 0.5  # ray-march step
_ILLINOIS_ITERS = 14
_FD_MM = 0.02  # finite-difference step for normals
_MIN_MOVE_MM = 1.5  # the geometric promise
_MIN_MOVED_FRACTION = 0.75

_PUCK_H, _PUCK_CHAMFER, _RING_HW, _RING_DEPTH = 12.0, 1.5, 0.8, 0.6
_BUN_C0, _BUN_CUT = 30.0, 5.0  # ellipsoid z semi-axis, cut height: a 25 mm cap
_PLATE_HALF, _PLATE_CORNER, _PLATE_T, _PLATE_CHAMFER = (32.0, 22.0), 5.0, 12.0, 1.0
_RIDGE_AMP, _RIDGE_PERIOD, _RIDGE_FADE = 0.4, 2.5, 2.5
_H_PLACE = {"puck": 11.3, "bun": 15.0, "plate": 11.5}  # defects go where the clean height >= this

# Textures: photograph, texels per mm, contrast, tint.
_TEXTURE = {
    "puck": ("gravel", 2.5, 0.20, (0.40, 0.42, 0.47)),
    "bun": ("grass", 2.5, 0.12, (0.80, 0.56, 0.30)),
    "plate": ("brick", 2.0, 0.05, (0.72, 0.74, 0.78)),
}
_BUN_TOP_TINT = (0.62, 0.38, 0.17)
_BG_TINT = (0.60, 0.59, 0.55)
_BG_TEXELS_PER_MM = 2.0
_PALETTE = np.array(
    [
        [0.55, 0.22, 0.08],  # rust
        [0.12, 0.18, 0.62],  # blue ink
        [0.18, 0.55, 0.30],  # green
        [0.08, 0.06, 0.05],  # oil
        [0.88, 0.72, 0.15],  # yellow
        [0.92, 0.92, 0.90],  # white
    ],
    np.float32,
)


def default_root3d() -> pathlib.Path:
    """``$JAXFLOW_AD_DATA3D`` if set, else ``~/.cache/jaxflow_ad/builtin3d``."""
    env = os.environ.get("JAXFLOW_AD_DATA3D")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("~/.cache/jaxflow_ad/builtin3d").expanduser()


# ----------------------------------------------------------------------------
# Source material (cached per process)


@functools.cache
def _texture(name: str, blur: float = 0.0) -> np.ndarray:
    """A scikit-image photograph as zero-mean, unit-std float32 grey (read-only)."""
    import skimage.data  # local: only the generator needs scikit-image

    a = getattr(skimage.data, name)().astype(np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(-1)
    if blur:
        a = ndimage.gaussian_filter(a, blur)
    a = (a - a.mean()) / (a.std() + 1e-6)
    a.setflags(write=False)
    return a


def _lookup(tex: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup (mirrored outside)."""
    return ndimage.map_coordinates(tex, np.stack([rows, cols]), order=1, mode="mirror").astype(np.float32)


# ----------------------------------------------------------------------------
# Scene: camera, plane, object pose and shape, and the clean sample's noise


@dataclasses.dataclass
class _Scene:
    category: str
    size: int
    f: float
    n: np.ndarray  # unit plane normal, facing the camera
    p0: np.ndarray  # a point of the plane (on the optical axis)
    e1: np.ndarray  # in-plane unit axes
    e2: np.ndarray
    shift: np.ndarray  # object centre in plane coordinates (mm)
    cos_t: float  # in-plane rotation of the object
    sin_t: float
    shape: dict  # category-specific shape parameters
    hmax: float  # the object's maximum height (mm)
    bound: float  # radius (mm) of a circle around the object centre holding the object
    tex_offset: np.ndarray  # texture offsets (texels)
    tex_gain: float
    bg_offset: np.ndarray
    bg_gain: float
    light: np.ndarray  # unit vector towards the light (camera coordinates)
    light_gain: float
    z_noise: np.ndarray  # [S, S] mm
    dropout: np.ndarray  # [S, S] bool
    rgb_noise: np.ndarray  # [S, S, 3] float32
    # Per-pixel ray geometry: plane coordinates (a, b) of the ray at height h are
    # (a0 + h a1, b0 + h b1); the point is t d with t = t0 + h t1.
    dirs: np.ndarray = dataclasses.field(repr=False, default=None)
    a0: np.ndarray = dataclasses.field(repr=False, default=None)
    a1: np.ndarray = dataclasses.field(repr=False, default=None)
    b0: np.ndarray = dataclasses.field(repr=False, default=None)
    b1: np.ndarray = dataclasses.field(repr=False, default=None)
    t0: np.ndarray = dataclasses.field(repr=False, default=None)
    t1: np.ndarray = dataclasses.field(repr=False, default=None)

    def to_object(self, a, b):
        da, db = a - self.shift[0], b - self.shift[1]
        return self.cos_t * da + self.sin_t * db, -self.sin_t * da + self.cos_t * db

    def to_plane(self, xo, yo):
        return (
            self.cos_t * xo - self.sin_t * yo + self.shift[0],
            self.sin_t * xo + self.cos_t * yo + self.shift[1],
        )


def _draw_scene(category: str, rng: np.random.Generator, size: int) -> _Scene:
    """Draw all the randomness of a clean sample, in a fixed order."""
    tilt, azimuth = rng.uniform(0, _MAX_TILT), rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(*_PLANE_DIST)
    shift = rng.uniform(-_SHIFT_MM, _SHIFT_MM, 2)
    turn = rng.uniform(-_MAX_TURN, _MAX_TURN)
    if category == "puck":
        r = rng.uniform(29.5, 30.5)
        shape, hmax, bound = {"r": r}, _PUCK_H, r
    elif category == "bun":
        ax, ay = rng.uniform(33.5, 35.5), rng.uniform(28.0, 30.0)
        shape, hmax, bound = {"ax": ax, "ay": ay}, _BUN_C0 - _BUN_CUT, max(ax, ay)
    else:
        shape, hmax, bound = {}, _PLATE_T + _RIDGE_AMP, float(np.hypot(*_PLATE_HALF))
    tex_offset = rng.uniform(120, 392, 2)
    tex_gain = rng.uniform(0.95, 1.05)
    bg_offset = rng.uniform(120, 392, 2)
    bg_gain = rng.uniform(0.95, 1.05)
    light = np.array([-0.35 + rng.uniform(-0.05, 0.05), -0.45 + rng.uniform(-0.05, 0.05), -1.0])
    light_gain = rng.uniform(0.95, 1.05)
    z_noise = rng.standard_normal((size, size)) * _Z_NOISE_MM
    dropout = rng.random((size, size)) < _DROPOUT
    rgb_noise = rng.normal(0.0, _RGB_NOISE, (size, size, 3)).astype(np.float32)

    n = np.array([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), -np.cos(tilt)])
    p0 = np.array([0.0, 0.0, dist])
    e1 = np.array([1.0, 0.0, 0.0]) - n[0] * n
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e1, n)
    sc = _Scene(
        category=category,
        size=size,
        f=_F256 * size / 256.0,
        n=n,
        p0=p0,
        e1=e1,
        e2=e2,
        shift=shift,
        cos_t=float(np.cos(turn)),
        sin_t=float(np.sin(turn)),
        shape=shape,
        hmax=hmax,
        bound=bound,
        tex_offset=tex_offset,
        tex_gain=tex_gain,
        bg_offset=bg_offset,
        bg_gain=bg_gain,
        light=light / np.linalg.norm(light),
        light_gain=light_gain,
        z_noise=z_noise,
        dropout=dropout,
        rgb_noise=rgb_noise,
    )
    c = (size - 1) / 2.0
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.stack([(u - c) / sc.f, (v - c) / sc.f, np.ones_like(u)], -1)
    nd = d @ n
    # height(p) = n . (p - p0) = h  for p = t d  =>  t = (h + n . p0) / (n . d)
    sc.dirs = d
    sc.t0, sc.t1 = (n @ p0) / nd, 1.0 / nd
    for name, e in (("a", e1), ("b", e2)):
        ed = d @ e
        setattr(sc, name + "0", sc.t0 * ed - e @ p0)
        setattr(sc, name + "1", sc.t1 * ed)
    return sc


def _object_height(sc: _Scene, xo: np.ndarray, yo: np.ndarray) -> np.ndarray:
    """The clean object's height (mm) over the plane at object coordinates."""
    if sc.category == "puck":
        rad = sc.shape["r"]
        r = np.hypot(xo, yo)
        h = _PUCK_H - np.clip(r - (rad - _PUCK_CHAMFER), 0.0, None)
        h -= _RING_DEPTH * np.clip(1.0 - ((r - 0.6 * rad) / _RING_HW) ** 2, 0.0, None)
        return np.where(r <= rad, h, 0.0)
    if sc.category == "bun":
        q = 1.0 - (xo / sc.shape["ax"]) ** 2 - (yo / sc.shape["ay"]) ** 2
        return np.maximum(_BUN_C0 * np.sqrt(np.maximum(q, 0.0)) - _BUN_CUT, 0.0)
    hx, hy = _PLATE_HALF
    qx = np.abs(xo) - (hx - _PLATE_CORNER)
    qy = np.abs(yo) - (hy - _PLATE_CORNER)
    sd = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0)) + np.minimum(np.maximum(qx, qy), 0.0) - _PLATE_CORNER
    inner = sd + _PLATE_CHAMFER  # < 0 on the flat top
    h = _PLATE_T - np.clip(inner, 0.0, None)
    fade = np.clip(-inner / _RIDGE_FADE, 0.0, 1.0)
    h += _RIDGE_AMP * (0.5 + 0.5 * np.cos(2 * np.pi * yo / _RIDGE_PERIOD)) * fade
    return np.where(sd <= 0, h, 0.0)


# ----------------------------------------------------------------------------
# Ray casting


def _cast(sc: _Scene, idx: np.ndarray, height: Callable, zmax: float) -> np.ndarray:
    """Heights (mm) at which the rays of the flat pixel indices ``idx`` first meet the height
    field ``height(a, b)`` (plane coordinates). The march uses the absolute levels k * step, so a
    ray that never comes near a local change of the field gets bit-identical results."""
    a0, a1 = sc.a0.ravel()[idx], sc.a1.ravel()[idx]
    b0, b1 = sc.b0.ravel()[idx], sc.b1.ravel()[idx]
    g = lambda z, sel=slice(None): height(a0[sel] + z * a1[sel], b0[sel] + z * b1[sel]) - z
    n = idx.size
    za, ga = np.zeros(n), np.zeros(n)  # above the surface: g < 0
    zb, gb = np.zeros(n), np.zeros(n)  # at or below it: g >= 0
    k_top = int(np.ceil(zmax / _STEP_MM)) + 1
    active = np.arange(n)
    g_prev = np.full(n, -1.0)
    for k in range(k_top, -1, -1):
        z = k * _STEP_MM
        gk = g(z, active)
        hit = gk >= 0
        if k == 0:
            hit[:] = True  # the plane: height >= 0 everywhere
        i = active[hit]
        za[i], ga[i], zb[i], gb[i] = z + _STEP_MM, g_prev[hit], z, gk[hit]
        if k == k_top and hit.any():
            raise AssertionError("ray march started inside the surface")
        active, g_prev = active[~hit], gk[~hit]
        if active.size == 0:
            break
    # Refine the brackets (za, zb) by Illinois regula falsi; a ray with g(zb) = 0 (the bare plane
    # at height 0) is already exact.
    out = zb.copy()
    live = np.flatnonzero(gb > 0)
    za, ga, zb, gb = za[live], ga[live], zb[live], gb[live]
    side = np.zeros(live.size, np.int8)
    for _ in range(_ILLINOIS_ITERS):
        zn = zb - gb * (za - zb) / (ga - gb)
        gn = g(zn, live)
        below = gn >= 0
        ga = np.where(below & (side == 1), 0.5 * ga, ga)
        gb = np.where(~below & (side == -1), 0.5 * gb, gb)
        zb, gb = np.where(below, zn, zb), np.where(below, gn, gb)
        za, ga = np.where(below, za, zn), np.where(below, ga, gn)
        side = np.where(below, 1, -1).astype(np.int8)
    out[live] = zb - gb * (za - zb) / (ga - gb)
    return out


@dataclasses.dataclass
class _Hits:
    idx: np.ndarray  # flat pixel indices cast
    h: np.ndarray  # height of the hit over the plane (mm)
    a: np.ndarray  # plane coordinates of the hit
    b: np.ndarray
    normal: np.ndarray  # [n, 3] unit surface normal, camera coordinates
    points: np.ndarray  # [n, 3] noise-free point (mm)


def _hits(sc: _Scene, idx: np.ndarray, height: Callable, zmax: float) -> _Hits:
    h = _cast(sc, idx, height, zmax)
    a = sc.a0.ravel()[idx] + h * sc.a1.ravel()[idx]
    b = sc.b0.ravel()[idx] + h * sc.b1.ravel()[idx]
    e = _FD_MM
    ha = (height(a + e, b) - height(a - e, b)) / (2 * e)
    hb = (height(a, b + e) - height(a, b - e)) / (2 * e)
    normal = sc.n[None] - ha[:, None] * sc.e1[None] - hb[:, None] * sc.e2[None]
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    t = sc.t0.ravel()[idx] + h * sc.t1.ravel()[idx]
    points = t[:, None] * sc.dirs.reshape(-1, 3)[idx]
    return _Hits(idx, h, a, b, normal, points)


def _xyz(sc: _Scene, hits: _Hits) -> np.ndarray:
    """float32 [n, 3] metres: noisy points, with dropouts and steep walls zeroed."""
    p = hits.points
    z = p[:, 2] + sc.z_noise.ravel()[hits.idx]
    out = p * (z / p[:, 2])[:, None] / 1000.0
    d = sc.dirs.reshape(-1, 3)[hits.idx]
    cos = np.abs(np.sum(hits.normal * d, -1)) / np.linalg.norm(d, axis=-1)
    drop = sc.dropout.ravel()[hits.idx] | (cos < _STEEP_COS)
    out[drop] = 0.0
    return out.astype(np.float32)


# ----------------------------------------------------------------------------
# Clean rendering


@dataclasses.dataclass
class _Clean:
    hits: _Hits  # every pixel
    object_idx: np.ndarray  # flat indices of the pixels cast against the object
    xo: np.ndarray  # [S*S] object coordinates of each pixel's hit
    yo: np.ndarray
    albedo: np.ndarray  # [S*S, 3] float32
    shade: np.ndarray  # [S*S] float32 (light gain included)
    xyz: np.ndarray  # [S, S, 3] float32
    rgb: np.ndarray  # [S, S, 3] uint8


def _smax(sc: _Scene) -> float:
    return float(np.sqrt(sc.a1**2 + sc.b1**2).max())


def _near(sc: _Scene, ac: float, bc: float, radius: float, zmax: float) -> np.ndarray:
    """Flat indices of the pixels whose ray passes within ``radius`` of (ac, bc) below ``zmax``."""
    reach = radius + zmax * _smax(sc) + 0.5
    d2 = (sc.a0 - ac) ** 2 + (sc.b0 - bc) ** 2
    return np.flatnonzero(d2.ravel() <= reach**2)


def _shade_rgb(sc: _Scene, albedo: np.ndarray, shade: np.ndarray) -> np.ndarray:
    s = sc.size
    x = albedo.reshape(s, s, 3) * shade.reshape(s, s, 1) + sc.rgb_noise
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _render_clean(sc: _Scene) -> _Clean:
    s = sc.size
    height = lambda a, b: _object_height(sc, *sc.to_object(a, b))
    obj_idx = _near(sc, sc.shift[0], sc.shift[1], sc.bound, sc.hmax)
    cast = _hits(sc, obj_idx, height, sc.hmax)
    # Every other pixel sees the plane.
    all_idx = np.arange(s * s)
    h = np.zeros(s * s)
    a, b = sc.a0.ravel().copy(), sc.b0.ravel().copy()
    normal = np.broadcast_to(sc.n, (s * s, 3)).copy()
    points = sc.t0.reshape(-1, 1) * sc.dirs.reshape(-1, 3)
    h[obj_idx], a[obj_idx], b[obj_idx] = cast.h, cast.a, cast.b
    normal[obj_idx], points[obj_idx] = cast.normal, cast.points
    hits = _Hits(all_idx, h, a, b, normal, points)
    xo, yo = sc.to_object(a, b)

    # Albedo: the plane's texture in plane coordinates, the object's in object coordinates.
    bg = _texture("moon", 1.5)
    k = _BG_TEXELS_PER_MM
    bg_val = _lookup(bg, b * k + sc.bg_offset[1], a * k + sc.bg_offset[0])
    albedo = np.asarray(_BG_TINT, np.float32) * (sc.bg_gain * (1.0 + 0.06 * bg_val))[:, None]
    on = np.flatnonzero(h > 1e-9)
    name, k, contrast, tint = _TEXTURE[sc.category]
    tex = _lookup(_texture(name), yo[on] * k + sc.tex_offset[1], xo[on] * k + sc.tex_offset[0])
    tint = np.broadcast_to(np.asarray(tint, np.float32), (on.size, 3))
    if sc.category == "bun":
        w = np.clip(h[on] / (_BUN_C0 - _BUN_CUT), 0, 1).astype(np.float32)[:, None] ** 1.5
        tint = tint * (1 - w) + np.asarray(_BUN_TOP_TINT, np.float32) * w
    albedo[on] = tint * (sc.tex_gain * np.clip(1.0 + contrast * tex, 0.3, 1.7))[:, None]
    shade = (0.3 + 0.7 * np.clip(normal @ sc.light, 0.0, None)) * sc.light_gain
    shade = shade.astype(np.float32)
    xyz = _xyz(sc, hits).reshape(s, s, 3)
    return _Clean(hits, obj_idx, xo, yo, albedo, shade, xyz, _shade_rgb(sc, albedo, shade))


# ----------------------------------------------------------------------------
# Defects


@dataclasses.dataclass
class _Defect:
    kind: str
    centre: tuple[float, float]  # object coordinates (mm)
    bound: float  # radius (mm) around the centre holding the footprint
    footprint: Callable  # (xo, yo) -> bool
    displacement: Callable | None = None  # (xo, yo) -> signed mm (geometric kinds)
    lift: float = 0.0  # the most the defect raises the surface (mm)
    colour: np.ndarray | None = None  # stain
    alpha: float = 0.0


def _rotated(xo, yo, cx, cy, phi):
    dx, dy = xo - cx, yo - cy
    return np.cos(phi) * dx + np.sin(phi) * dy, -np.sin(phi) * dx + np.cos(phi) * dy


def _bowl(depth: float, q: np.ndarray) -> np.ndarray:
    """The defect profile: ``depth`` at the rim (q = 1), 1.25 ``depth`` in the middle (q = 0)."""
    return np.where(q < 1.0, depth * (1.0 + 0.25 * (1.0 - q)), 0.0)


def _pick_centre(rng, clean: _Clean, top: np.ndarray, radius_px: float, size: int):
    """A pixel at least ``radius_px`` inside the top region; None when there is none."""
    ok = ndimage.distance_transform_edt(top.reshape(size, size)).ravel() > radius_px + 1.0
    cand = np.flatnonzero(ok)
    if cand.size == 0:
        return None
    return int(cand[rng.integers(cand.size)])


def _draw_defect(kind: str, rng, sc: _Scene, clean: _Clean, top: np.ndarray) -> _Defect | None:
    s = sc.size
    px = s / 256.0  # pixels at this size per pixel at 256
    if kind in ("bump", "dent"):
        r256, aspect, phi = rng.uniform(6, 14), rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
        depth = rng.uniform(1.7, 3.2)
        extent256 = r256
    elif kind == "cut":
        length256, hw256, depth = rng.uniform(20, 50), rng.uniform(1.5, 2.5), rng.uniform(1.6, 2.4)
        rc256, heading, bend = rng.uniform(30, 120), rng.uniform(0, 2 * np.pi), rng.choice([-1.0, 1.0])
        extent256 = length256 / 2 + hw256
    else:
        r256 = rng.uniform(6, 14) if kind == "hole" else rng.uniform(8, 16)
        phi, aspect = rng.uniform(0, np.pi), rng.uniform(0.6, 1.0)
        amps = rng.uniform(0, 1, 4) * 0.28 * 2 / np.arange(2, 6)
        phases = rng.uniform(0, 2 * np.pi, 4)
        extent256 = r256 * (1 + amps.sum())
    pix = _pick_centre(rng, clean, top, extent256 * px, s)
    if pix is None:
        return None
    cx, cy = float(clean.xo[pix]), float(clean.yo[pix])
    mm = clean.hits.points[pix, 2] / _F256  # mm per pixel-at-256 there
    tol = 0.05  # mm: hits on a wall count as inside
    if kind in ("bump", "dent"):
        rx, ry = r256 * mm, r256 * mm * aspect
        sign = 1.0 if kind == "bump" else -1.0

        def q(xo, yo):
            u, v = _rotated(xo, yo, cx, cy, phi)
            return (u / rx) ** 2 + (v / ry) ** 2

        return _Defect(
            kind,
            (cx, cy),
            rx + tol,
            lambda xo, yo: q(xo, yo) <= (1 + tol / ry) ** 2,
            lambda xo, yo: sign * _bowl(depth, q(xo, yo)),
            lift=1.25 * depth if sign > 0 else 0.0,
        )
    if kind == "cut":
        length, hw, rc = length256 * mm, hw256 * mm, rc256 * mm
        half = length / (2 * rc)  # half the arc's angle
        t = np.array([np.cos(heading), np.sin(heading)])
        nrm = bend * np.array([-t[1], t[0]])
        ccx, ccy = cx + nrm[0] * rc, cy + nrm[1] * rc  # centre of curvature
        back = -nrm  # from the centre of curvature to the arc's middle
        ends = []
        for ang in (-half, half):  # the arc's end points
            ex = ccx + rc * (np.cos(ang) * back[0] - np.sin(ang) * back[1])
            ends.append((ex, ccy + rc * (np.sin(ang) * back[0] + np.cos(ang) * back[1])))

        def dist(xo, yo):
            wx, wy = xo - ccx, yo - ccy
            beta = np.arctan2(back[0] * wy - back[1] * wx, back[0] * wx + back[1] * wy)
            on_arc = np.abs(np.hypot(wx, wy) - rc)
            to_end = np.minimum(*(np.hypot(xo - ex, yo - ey) for ex, ey in ends))
            return np.where(np.abs(beta) <= half, on_arc, to_end)

        return _Defect(
            kind,
            (cx, cy),
            length / 2 + hw + tol,
            lambda xo, yo: dist(xo, yo) <= hw + tol,
            lambda xo, yo: -_bowl(depth, (dist(xo, yo) / hw) ** 2),
        )
    rad = r256 * mm

    def blob(xo, yo):
        u, v = _rotated(xo, yo, cx, cy, phi)
        v = v / aspect
        theta = np.arctan2(v, u)
        edge = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in zip(range(2, 6), amps, phases))
        return np.hypot(u, v) <= rad * np.maximum(edge, 0.4)

    d = _Defect(kind, (cx, cy), rad * (1 + amps.sum()), blob)
    if kind == "stain":
        m = blob(clean.xo, clean.yo)
        local = clean.albedo[m].mean(0) if m.any() else np.full(3, 0.5, np.float32)
        order = rng.permutation(len(_PALETTE))
        far = [i for i in order if np.linalg.norm(_PALETTE[i] - local) >= 0.35]
        d.colour = _PALETTE[far[0] if far else order[0]]
        d.alpha = rng.uniform(0.55, 0.85)
    return d


def _apply(sc: _Scene, clean: _Clean, d: _Defect):
    """(rgb, xyz, mask) of the defective sample."""
    s = sc.size
    on = clean.hits.h > 1e-9
    if d.displacement is None:  # hole, stain: the clean geometry
        mask = d.footprint(clean.xo, clean.yo) & on
        albedo = clean.albedo.copy()
        if d.kind == "hole":
            albedo[mask] = albedo[mask] * 0.12 + 0.01
        else:
            albedo[mask] = albedo[mask] * (1 - d.alpha) + d.colour * d.alpha
        rgb = np.where(mask.reshape(s, s, 1), _shade_rgb(sc, albedo, clean.shade), clean.rgb)
        xyz = clean.xyz.copy()
        if d.kind == "hole":
            xyz[mask.reshape(s, s)] = 0.0
        return rgb, xyz, mask.reshape(s, s)

    def height(a, b):
        xo, yo = sc.to_object(a, b)
        return np.maximum(_object_height(sc, xo, yo) + d.displacement(xo, yo), 0.0)

    zmax = sc.hmax + d.lift
    ac, bc = sc.to_plane(*d.centre)
    idx = _near(sc, ac, bc, d.bound, zmax)
    hits = _hits(sc, idx, height, zmax)
    new = _xyz(sc, hits)
    xyz = clean.xyz.reshape(-1, 3).copy()
    xyz[idx] = new
    mask = d.footprint(clean.xo, clean.yo) & on
    mask[idx] |= d.footprint(*sc.to_object(hits.a, hits.b))
    return clean.rgb, xyz.reshape(s, s, 3), mask.reshape(s, s)


def _min_mask_pixels(size: int) -> int:
    return max(3, int(round(20 * (size / 256.0) ** 2)))


def _accept(kind: str, clean: _Clean, rgb, xyz, mask, top: np.ndarray, size: int) -> bool:
    if mask.sum() < _min_mask_pixels(size) or not top[mask.ravel()].all():
        return False
    if kind in GEOMETRY_KINDS_3D:
        valid = mask & (xyz != 0).any(-1) & (clean.xyz != 0).any(-1)
        if valid.sum() < 0.3 * mask.sum():
            return False
        moved = np.abs(xyz[..., 2] - clean.xyz[..., 2])[valid] >= _MIN_MOVE_MM / 1000.0
        return bool(moved.mean() >= _MIN_MOVED_FRACTION)
    if kind == "stain":
        diff = np.abs(rgb.astype(np.int16) - clean.rgb.astype(np.int16))[mask]
        return bool((diff.max(-1) > 0).mean() >= 0.75 and diff.mean() > 12)
    return True


# ----------------------------------------------------------------------------
# Samples


def _check_category(category: str) -> None:
    if category not in BUILTIN3D_CATEGORIES:
        raise ValueError(f"Unknown built-in 3-D category {category!r}; choose from {BUILTIN3D_CATEGORIES}.")


def _check_size(size) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an int in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}.")


def render_sample3d(
    category: str, kind: str, rng_or_seed: np.random.Generator | int | Sequence[int], size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one sample of the built-in multimodal set.

    Args:
      category: one of ``BUILTIN3D_CATEGORIES``.
      kind: ``"good"`` or one of ``DEFECT_KINDS_3D[category]``.
      rng_or_seed: a seed (int or sequence of non-negative ints) or a ``np.random.Generator``.
        With a seed, the clean scene and the defect draw from two generators spawned from it;
        with a generator, the clean scene draws first and the defect afterwards. Either way the
        same seed (or generator state) gives the same clean scene for every ``kind``.
      size: image side in pixels (the focal length scales with it, so the scene is the same).

    Returns:
      ``(rgb, xyz, mask)``: uint8 [S, S, 3]; float32 [S, S, 3] in metres with (0, 0, 0) for
      missing points; bool [S, S], all False for ``"good"``.
    """
    _check_category(category)
    if kind != "good" and kind not in DEFECT_KINDS_3D[category]:
        raise ValueError(f"kind {kind!r} is neither 'good' nor one of {category!r}'s {DEFECT_KINDS_3D[category]}.")
    _check_size(size)
    size = int(size)
    if isinstance(rng_or_seed, np.random.Generator):
        rng_clean = rng_defect = rng_or_seed
    else:
        seq = rng_or_seed if isinstance(rng_or_seed, np.random.SeedSequence) else np.random.SeedSequence(rng_or_seed)
        c, d = seq.spawn(2)
        rng_clean, rng_defect = np.random.default_rng(c), np.random.default_rng(d)
    sc = _draw_scene(category, rng_clean, size)
    clean = _render_clean(sc)
    if kind == "good":
        return clean.rgb, clean.xyz, np.zeros((size, size), bool)
    top = clean.hits.h >= _H_PLACE[category]
    for _ in range(50):
        d = _draw_defect(kind, rng_defect, sc, clean, top)
        if d is None:
            continue
        rgb, xyz, mask = _apply(sc, clean, d)
        if _accept(kind, clean, rgb, xyz, mask, top, size):
            return rgb, xyz, mask
    raise RuntimeError(f"could not place a {kind} defect on {category} at size {size}")


def sample_seed(category: str, split: str, kind: str, index: int) -> list[int]:
    """The seed of one sample on disk: ``render_sample3d(category, kind, sample_seed(...), size)``
    reproduces the files :func:`ensure_builtin3d` writes."""
    _check_category(category)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    return [
        _SEED,
        BUILTIN3D_CATEGORIES.index(category),
        _SPLITS.index(split),
        zlib.crc32(kind.encode()),
        int(index),
    ]


# ----------------------------------------------------------------------------
# Writing the folders


def _spec(category, size, n_train, n_validation, n_test_good, n_test_per_defect) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "category": category,
        "image_size": size,
        "n_train": n_train,
        "n_validation": n_validation,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "defect_kinds": list(DEFECT_KINDS_3D[category]),
    }


def _groups(spec: dict) -> list[tuple[str, str, int]]:
    """(split, label, count) of every sample folder."""
    out = [("train", "good", spec["n_train"]), ("validation", "good", spec["n_validation"])]
    out.append(("test", "good", spec["n_test_good"]))
    out += [("test", k, spec["n_test_per_defect"]) for k in spec["defect_kinds"]]
    return out


def _expected_counts(spec: dict) -> dict[str, tuple[int, str]]:
    counts = {}
    for split, label, n in _groups(spec):
        for sub, ext in (("rgb", ".png"), ("xyz", ".tiff")) + ((("gt", ".png"),) if split == "test" else ()):
            counts[f"{split}/{label}/{sub}"] = (n, ext)
    return counts


def _is_complete(cat_dir: pathlib.Path, spec: dict) -> bool:
    """True if ``cat_dir`` holds a finished copy matching ``spec``."""
    if not category_complete(cat_dir, MANIFEST, spec, _expected_counts(spec)):
        return False
    return (cat_dir / "class_ids.json").is_file() and (cat_dir / "calibration" / "camera_parameters.json").is_file()


def _save_png(array: np.ndarray, path: pathlib.Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _save_tiff(array: np.ndarray, path: pathlib.Path) -> None:
    import tifffile  # local: only the generator writes tiffs

    tifffile.imwrite(path, array, photometric="rgb", planarconfig="contig", compression=None)


def _class_ids(kinds: Sequence[str]) -> dict[str, str]:
    out = {str(255 - k): kind for k, kind in enumerate(kinds)}
    out["0"] = "good"
    return out


def _camera_parameters(size: int) -> dict:
    """HALCON ``area_scan_division`` parameters of the pinhole camera (as MVTec 3D-AD's file):
    a 5 um pixel, focus in metres, principal point in pixels, no distortion."""
    sx = 5e-6
    return {
        "cx": (size - 1) / 2.0,
        "cy": (size - 1) / 2.0,
        "focus": _F256 * size / 256.0 * sx,
        "image_height": size,
        "image_width": size,
        "kappa": 0.0,
        "sx": sx,
        "sy": sx,
    }


def _write_category(out: pathlib.Path, category: str, spec: dict, workers: int) -> None:
    size = spec["image_size"]
    kinds = spec["defect_kinds"]
    for folder in _expected_counts(spec):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / "calibration").mkdir()
    items = [(split, label, i) for split, label, n in _groups(spec) for i in range(n)]

    def one(item):
        split, label, i = item
        rgb, xyz, mask = render_sample3d(category, label, sample_seed(category, split, label, i), size)
        folder = out / split / label
        _save_png(rgb, folder / "rgb" / f"{i:03d}.png")
        _save_tiff(xyz, folder / "xyz" / f"{i:03d}.tiff")
        if split == "test":
            value = 0 if label == "good" else 255 - kinds.index(label)
            _save_png(mask.astype(np.uint8) * np.uint8(value), folder / "gt" / f"{i:03d}.png")

    if workers > 1:
        with futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, items))
    else:
        for item in items:
            one(item)
    dump = lambda obj: json.dumps(obj, indent=1, sort_keys=True) + "\n"
    (out / "class_ids.json").write_text(dump(_class_ids(kinds)))
    (out / "calibration" / "camera_parameters.json").write_text(dump(_camera_parameters(size)))
    files = {k: n for k, (n, _) in _expected_counts(spec).items()}
    manifest = {"spec": spec, "generator": "jaxflow_ad.data.synthetic3d", "files": files}
    # The manifest is written last: a folder without it is never reused.
    (out / MANIFEST).write_text(dump(manifest))


def ensure_builtin3d(
    root: str | os.PathLike | None = None,
    categories: Sequence[str] | None = None,
    *,
    n_train: int = N_TRAIN,
    n_validation: int = N_VALIDATION,
    n_test_good: int = N_TEST_GOOD,
    n_test_per_defect: int = N_TEST_PER_DEFECT,
    size: int = IMAGE_SIZE,
    num_workers: int | None = None,
) -> pathlib.Path:
    """Write the built-in multimodal dataset (once) and return its root.

    Each category is generated into a hidden temporary folder under ``root`` and renamed into
    place when complete, so an interrupted run never leaves a half-written category; a category
    is reused when its manifest matches the format version, the size and the requested counts
    and its folders hold the expected files, and regenerated otherwise. Several processes may
    call this at once.

    Args:
      root: where to write; default :func:`default_root3d`.
      categories: subset of ``BUILTIN3D_CATEGORIES`` (default: all).
      n_train, n_validation, n_test_good, n_test_per_defect: sample counts per category
        (smaller values make quick test fixtures).
      size: image side in pixels.
      num_workers: threads rendering and encoding (default: CPU count, max 8).

    Returns:
      ``root``, laid out as MVTec 3D-AD.
    """
    root = pathlib.Path(root).expanduser() if root is not None else default_root3d()
    cats = (
        BUILTIN3D_CATEGORIES
        if categories is None
        else tuple([categories] if isinstance(categories, str) else categories)
    )
    for c in cats:
        _check_category(c)
    for name, n, lo in (
        ("n_train", n_train, 1),
        ("n_validation", n_validation, 0),
        ("n_test_good", n_test_good, 0),
        ("n_test_per_defect", n_test_per_defect, 0),
    ):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < lo or n > 999:
            raise ValueError(f"{name} must be an int in [{lo}, 999], got {n!r}.")
    if n_test_good + n_test_per_defect == 0:
        raise ValueError("n_test_good and n_test_per_defect cannot both be 0 (the test split would be empty).")
    _check_size(size)
    if num_workers is not None and (not isinstance(num_workers, (int, np.integer)) or num_workers < 1):
        raise ValueError(f"num_workers must be a positive int or None, got {num_workers!r}.")
    workers = int(num_workers or min(8, os.cpu_count() or 1))
    root.mkdir(parents=True, exist_ok=True)
    for category in cats:
        spec = _spec(category, int(size), int(n_train), int(n_validation), int(n_test_good), int(n_test_per_defect))
        install_category(
            root,
            category,
            complete=lambda d, spec=spec: _is_complete(d, spec),
            write=lambda tmp, category=category, spec=spec: _write_category(tmp, category, spec, workers),
            manifest=MANIFEST,
            owner="ensure_builtin3d",
        )
    return root
