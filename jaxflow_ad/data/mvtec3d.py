"""Reader for MVTec 3D-AD (``data.layout=mvtec3d``): RGB images with organised point clouds.

The layout (Bergmann et al., VISAPP 2022; the public archive)::

    <root>/<category>/train/good/rgb/000.png
    <root>/<category>/train/good/xyz/000.tiff
    <root>/<category>/validation/good/{rgb,xyz}/...
    <root>/<category>/test/good/{rgb,xyz,gt}/000.{png,tiff,png}
    <root>/<category>/test/<defect>/{rgb,xyz,gt}/000.{png,tiff,png}
    <root>/<category>/calibration/camera_parameters.json     (not read)
    <root>/<category>/class_ids.json                          (not read)

A sample is the image ``rgb/<stem>.png``, the cloud ``xyz/<stem>.tiff`` and, in ``test``, the mask
``gt/<stem>.png`` of the same stem (no suffix). Numbering restarts in every folder, so samples are
keyed by ``(split, defect type, stem)``. Splits are the folders ``train``, ``validation`` and
``test``; train and validation hold only ``good/``. Defect types are the names of the test
folders (tire: ``combined``, ``contamination``, ``cut``, ``good``, ``hole``); ``class_ids.json``
is not needed and not read (its names do not cover ``combined``).

Pixels:

* rgb: read like MVTec AD images (:mod:`~jaxflow_ad.data.imageio`: 8-bit RGB) and resized to
  ``image_size`` x ``image_size`` with ``resize``; uint8 ``samples["image"]`` [N, S, S, 3].
* gt: values are 255 minus a defect index (tire: 253..255), binarised with ``> 0`` at the
  native size. ``test/good/gt`` exists in the archive and is all zero; it is read and must stay
  all zero. A ``gt/`` folder is optional for ``good/`` folders (missing: all-False masks) and
  required for defect folders.
* xyz: ``tifffile.imread`` gives float32 [H, W, 3], x, y, z in metres, with the image's H x W.
  A point is missing when it is (0, 0, 0) or has a NaN (or inf) coordinate; every missing point
  becomes exact (0, 0, 0). Optionally cleaned at the native size (``clean``), then resized with
  torch's legacy nearest rule (:func:`~jaxflow_ad.data.pointcloud.resize_nearest`) to
  ``cloud_size`` x ``cloud_size`` (default: ``image_size``). Like the RGB image, a non-square
  cloud (tire: 600 W x 800 H) is squashed to the square, so that pixel (i, j) of the image and of
  the cloud still look at the same place; ``samples["xyz"]`` is float32 [N, C, C, 3].
* with ``depth``: ``samples["depth"]`` float32 [N, C, C] and ``samples["foreground"]`` bool
  [N, C, C], as AST and MADFlow compute them: :func:`~jaxflow_ad.data.pointcloud.depth_branch`
  (filled z, corner-plane background, 7 mm threshold, largest component, centred depth x 100) on
  the native cloud *before* cleaning, then resized bilinearly (``align_corners=False``) to C, the
  foreground binarised with ``> 0``. Dilation and the soft foreground at the feature size are the
  model's steps.

Options (``config.data.mvtec3d``, see :class:`CloudOptions`): ``cloud_size`` (None: the image
size), ``clean`` (False; RANSAC background plane and largest DBSCAN cluster,
:func:`~jaxflow_ad.data.pointcloud.clean_cloud`, at the native size before resizing), ``depth``
(False; the depth branch above), ``seed`` (0: the seed of ``clean``'s RANSAC, the same for every sample, so a sample is
cleaned alike whatever its position or the thread that reads it).

``Split.files`` lists every rgb, gt and xyz file read, so ``Split.fingerprint`` covers the clouds.
It does not cover the options: a cache of features of ``xyz`` must key on them too.

Everything that looks wrong raises one :class:`~jaxflow_ad.data.mvtec.DatasetError` naming the
file and the fix: a missing split folder, a file where only folders belong, a defect folder in
train or validation, a folder other than ``rgb/``, ``xyz/`` and ``gt/`` in a sample folder, a
non-image file, two files of one stem, an image without its cloud or a cloud without its image,
a defect image without its mask or a mask without its image, an empty split, an unreadable image
or mask, a mask whose size differs from its image, a nonzero mask of a good image, an unreadable
TIFF, a TIFF that is not H x W x 3 floating point, a cloud whose H x W differs from its image's,
a cloud with no valid point and (``depth``) a cloud with no background in its corners. Only
hidden files and loose files directly under the root or a category folder are ignored.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import numbers
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import tifffile

from .mvtec import (
    GOOD,
    DatasetError,
    Record,
    Split,
    _category_dir,
    _check_load_args,
    _image_files,
    _is_hidden,
    _load_one,
    _natural_key,
    _warn_surprises,
    stat_file,
)
from .mvtec import (
    list_categories as _list_categories,
)
from .pointcloud import clean_cloud, depth_branch, resize_bilinear, resize_nearest, valid_points
from .sample_cache import SampleCache

__all__ = [
    "DEFAULT_OPTIONS",
    "MVTEC3D_CATEGORIES",
    "SPLITS",
    "CloudOptions",
    "Record3D",
    "cloud_options",
    "list_categories",
    "load_split",
    "prepare_cloud",
    "read_cloud",
    "scan_split",
]

MVTEC3D_CATEGORIES = (
    "bagel",
    "cable_gland",
    "carrot",
    "cookie",
    "dowel",
    "foam",
    "peach",
    "potato",
    "rope",
    "tire",
)
SPLITS = ("train", "validation", "test")
RGB, XYZ, GT = "rgb", "xyz", "gt"
CLOUD_EXTENSIONS = (".tiff", ".tif")
_LAYOUT = "MVTec 3D-AD"


# ----------------------------------------------------------------------------
# Options (shared with the Eyecandies reader)


@dataclasses.dataclass(frozen=True)
class CloudOptions:
    """The point-cloud options of the ``mvtec3d`` and ``eyecandies`` layouts, checked.

    Attributes:
      cloud_size: side C of the square resized cloud; None: the image size (the native size
        when ``image_size`` is None too).
      clean: remove the background plane (RANSAC) and keep the largest DBSCAN cluster, with
        :func:`~jaxflow_ad.data.pointcloud.clean_cloud`, at the native size before resizing.
      depth: add ``depth`` and ``foreground``: :func:`~jaxflow_ad.data.pointcloud.depth_branch` of
        the native uncleaned cloud, resized bilinearly to C (:func:`prepare_cloud`).
      seed: the seed passed to ``clean_cloud`` (one for every sample).
      cache_dir: where the result of ``clean`` and ``depth`` is kept per sample
        (:class:`~jaxflow_ad.data.sample_cache.SampleCache`), so that they run once per file and
        setting rather than at every load; None: no cache. The engine sets it to
        ``<workdir>/<category>/cache`` when the config leaves it unset.
    """

    cloud_size: int | None = None
    clean: bool = False
    depth: bool = False
    seed: int = 0
    cache_dir: str | None = None

    def settings(self, **more) -> str:
        """The options that change the samples (all but ``cache_dir``), as a stable string for
        :attr:`Split.settings`: features cached from a split follow a change of them."""
        kept = {k: v for k, v in dataclasses.asdict(self).items() if k != "cache_dir"}
        return json.dumps({**kept, **more}, sort_keys=True)


DEFAULT_OPTIONS = {f.name: f.default for f in dataclasses.fields(CloudOptions)}


def _bad(layout: str, name: str, value, need: str) -> DatasetError:
    return DatasetError(f"config key data.{layout}.{name}={value!r} is invalid: {need}.")


def cloud_options(layout: str = "mvtec3d", **options) -> CloudOptions:
    """The options ``options`` (the keys of ``config.data.<layout>``) checked, defaults filled in.

    Raises:
      DatasetError: an unknown option or a value of the wrong type, naming the config key.
    """
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise DatasetError(
            f"Unknown option(s) {', '.join(f'data.{layout}.{k}' for k in unknown)} of the {layout} layout; "
            f"the options are {', '.join(DEFAULT_OPTIONS)}."
        )
    o = {**DEFAULT_OPTIONS, **options}
    # a config file spells "unset" as 0 and "" (ml_collections cannot override a None field from the command line)
    if o["cloud_size"] == 0 and not isinstance(o["cloud_size"], bool):
        o["cloud_size"] = None
    if o["cache_dir"] == "":
        o["cache_dir"] = None
    size = o["cloud_size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
        raise _bad(layout, "cloud_size", size, "it must be a positive int (the side of the square cloud) or None")
    for name in ("clean", "depth"):
        if not isinstance(o[name], (bool, np.bool_)):
            raise _bad(layout, name, o[name], "it must be True or False")
    seed = o["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise _bad(layout, "seed", seed, "it must be an int")
    cache_dir = o["cache_dir"]
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise _bad(layout, "cache_dir", cache_dir, "it must be a folder path or None")
    return CloudOptions(
        cloud_size=None if size is None else int(size),
        clean=bool(o["clean"]),
        depth=bool(o["depth"]),
        seed=int(seed),
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
    )


def cached_prepare_cloud(
    xyz: np.ndarray,
    path: str | os.PathLike,
    size: tuple[int, int],
    opts: CloudOptions,
    sources: Sequence[tuple[str | os.PathLike, tuple[int, int]]],
) -> dict[str, np.ndarray]:
    """:func:`prepare_cloud`, through ``opts.cache_dir`` when it is set and there is something costly
    to keep (``clean`` or ``depth``); ``sources``: ``(path, stat)`` of every file ``xyz`` was read from."""
    if opts.cache_dir is None or not (opts.clean or opts.depth):
        return prepare_cloud(xyz, path, size, opts)
    settings = {"size": list(size), "clean": opts.clean, "depth": opts.depth, "seed": opts.seed}
    cache = SampleCache(opts.cache_dir, "cloud", settings)
    return cache.get(sources, lambda: prepare_cloud(xyz, path, size, opts))


# ----------------------------------------------------------------------------
# Clouds (shared with the Eyecandies reader)


def read_cloud(path: str | os.PathLike) -> np.ndarray:
    """float32 [H, W, 3]: the organised cloud in the TIFF at ``path``, as stored (NaN kept).

    Raises:
      DatasetError: naming the file: it cannot be read, or it is not H x W x 3 floating point.
    """
    try:
        a = tifffile.imread(path)
    except Exception as e:  # tifffile raises TiffFileError, ValueError, OSError, struct.error, ...
        raise DatasetError(
            f"Cannot read the point cloud {path}: {type(e).__name__}: {e}. The file is corrupt, truncated or "
            "not a TIFF (a TIFF compressed with a floating-point predictor also needs the imagecodecs package); "
            "replace it with a good copy (re-extract the archive) or remove the sample."
        ) from e
    a = np.asarray(a)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype.kind != "f":
        raise DatasetError(
            f"The point cloud {path} is {a.dtype} with shape {a.shape}, not an H x W x 3 floating-point array "
            "(x, y, z in metres per pixel, as MVTec 3D-AD's xyz/*.tiff). Replace it with the archive's file, or "
            "write it with tifffile.imwrite(path, xyz.astype(np.float32)) for xyz of shape (H, W, 3)."
        )
    return a.astype(np.float32, copy=False)


def prepare_cloud(
    xyz: np.ndarray, path: str | os.PathLike, size: tuple[int, int], opts: CloudOptions
) -> dict[str, np.ndarray]:
    """The sample arrays of one native cloud: ``{"xyz": float32 [h, w, 3]}`` resized to ``size``
    (``(h, w)``), plus ``"depth"`` float32 and ``"foreground"`` bool [h, w] when ``opts.depth``.

    Missing points (a NaN or inf coordinate, or all zero) become exact zeros. ``opts.clean`` cleans
    the cloud at its native size before the nearest resize. The depth branch follows AST/MADFlow:
    :func:`~jaxflow_ad.data.pointcloud.depth_branch` of the native, *uncleaned* cloud (its
    background plane comes from the corners, which cleaning zeroes), then ``depth`` resized with
    :func:`~jaxflow_ad.data.pointcloud.resize_bilinear` and ``foreground`` resized likewise and
    binarised with ``> 0``. ``xyz`` is not modified.

    Raises:
      DatasetError: naming ``path``: the cloud has no valid point, or (``depth``) its corners hold no
        background point.
    """
    xyz = np.asarray(xyz, np.float32)
    valid = valid_points(xyz)
    if not valid.any():
        raise DatasetError(
            f"The point cloud {path} has no valid point: every point is (0, 0, 0) or NaN. The file is empty or "
            "was overwritten by a failed preprocessing run; replace it with the archive's file or remove the sample."
        )
    xyz = np.where(valid[..., None], xyz, np.float32(0))
    out = {}
    if opts.depth:
        try:
            depth, foreground = depth_branch(xyz)
        except ValueError as e:
            raise DatasetError(
                f"Cannot compute the depth input of the point cloud {path}: {e}. The depth branch needs the raw "
                "cloud, whose image corners show the background; this copy may have been preprocessed in place "
                "(M3DM/3D-ADS remove the plane and pad). Use the original archive, or set depth=False."
            ) from e
        out["depth"] = resize_bilinear(np.asarray(depth, np.float32), size).astype(np.float32)
        out["foreground"] = resize_bilinear(np.asarray(foreground, np.float32), size) > 0
    if opts.clean:
        xyz = np.asarray(clean_cloud(xyz, seed=opts.seed), np.float32)
    return {"xyz": np.ascontiguousarray(resize_nearest(xyz, size), np.float32), **out}


def cloud_side(image_size: int | None, opts: CloudOptions, native: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of the resized cloud: ``cloud_size``, else ``image_size``, else the native size."""
    side = opts.cloud_size if opts.cloud_size is not None else image_size
    return tuple(native) if side is None else (side, side)


class Loaded3D(NamedTuple):
    """What was read for one sample (the fields :func:`~jaxflow_ad.data.mvtec._warn_surprises` reads
    first)."""

    image: np.ndarray  # uint8 [S, S, 3] (or native)
    mask: np.ndarray  # bool [H, W]
    mode: str  # the image file's mode as decoded
    native: tuple[int, int]  # the image's native (H, W)
    cloud: dict[str, np.ndarray]  # "xyz" (+ "depth", "foreground")
    defect_type: str
    files: list[str]  # every file read, in the order of stats
    stats: list[tuple[int, int]]


def map_records(fn: Callable[[Record], Loaded3D], records: Sequence[Record], num_workers: int | None) -> list:
    """``[fn(r) for r in records]``, on threads (decoding and tifffile release the GIL)."""
    workers = num_workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(records) > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, records))
    return [fn(r) for r in records]


def assemble(
    records: Sequence[Record],
    loaded: Sequence[Loaded3D],
    category: str,
    split: str,
    image_size: int | None,
    settings: str = "",
) -> Split:
    """The :class:`Split` of the samples read; warnings as for MVTec AD. ``settings``: the options
    that shaped the samples (:meth:`CloudOptions.settings`), hashed by :meth:`Split.fingerprint`."""
    for key, what in (("image", "Images"), ("xyz", "Point clouds")):
        arrays = [x.image if key == "image" else x.cloud["xyz"] for x in loaded]
        for rec, a in zip(records, arrays):
            if a.shape != arrays[0].shape:
                raise DatasetError(
                    f"{what} of {category}/{split} differ in size: {rec.image_path} gives {a.shape[1]}x{a.shape[0]}, "
                    f"{records[0].image_path} gives {arrays[0].shape[1]}x{arrays[0].shape[0]}. Pass image_size=S "
                    "(and data.<layout>.cloud_size) to resize them all to SxS."
                )
    # Good samples may have an (all-zero) mask file; only defect samples' empty masks are worth a warning.
    shown = [
        dataclasses.replace(r, mask_path=None, more_masks=()) if x.defect_type == GOOD else r
        for r, x in zip(records, loaded)
    ]
    _warn_surprises(shown, list(loaded), f"{category}/{split}", image_size)
    samples = {"image": np.stack([x.image for x in loaded])}
    for key in loaded[0].cloud:
        samples[key] = np.stack([x.cloud[key] for x in loaded])
    return Split(
        samples=samples,
        masks=[x.mask for x in loaded],
        labels=np.array([0 if x.defect_type == GOOD else 1 for x in loaded], dtype=np.int32),
        defect_types=[x.defect_type for x in loaded],
        paths=[str(r.image_path) for r in records],
        split=split,
        category=category,
        files=[f for x in loaded for f in x.files],
        file_stats=[st for x in loaded for st in x.stats],
        settings=settings,
    )


def check_good_mask(rec: Record, mask: np.ndarray, fix: str) -> None:
    """A defect-free sample's mask must be all zero."""
    if rec.defect_type == GOOD and mask.any():
        paths = ", ".join(str(p) for p in rec.mask_paths)
        raise DatasetError(
            f"The mask {paths} of the defect-free image {rec.image_path} marks {int(mask.sum())} pixel(s) as "
            f"defective. {fix}"
        )


# ----------------------------------------------------------------------------
# Scanning the folders (no pixels read)


@dataclasses.dataclass(frozen=True)
class Record3D(Record):
    """A sample of MVTec 3D-AD: a :class:`~jaxflow_ad.data.mvtec.Record` and its cloud."""

    xyz_path: pathlib.Path | None = None


def _sample_dirs(sub: pathlib.Path, need_gt: bool) -> dict[str, pathlib.Path]:
    """``rgb``, ``xyz`` (and ``gt`` if there) folders of a sample folder; anything else raises."""
    found: dict[str, pathlib.Path] = {}
    for p in sorted(sub.iterdir()):
        if _is_hidden(p):
            continue
        if not p.is_dir() or p.name not in (RGB, XYZ, GT):
            kind = "folder" if p.is_dir() else "file"
            raise DatasetError(
                f"Unexpected {kind} {p}: in the {_LAYOUT} layout {sub} holds only the folders rgb/, xyz/ and gt/ "
                "(gt/ with the masks). Move it out of the dataset."
            )
        found[p.name] = p
    for name in (RGB, XYZ) + ((GT,) if need_gt else ()):
        if name not in found:
            what = "the masks gt/<stem>.png of its defect images" if name == GT else f"{name}/"
            raise DatasetError(
                f"Missing folder {sub / name}: every sample folder of the {_LAYOUT} layout holds rgb/<stem>.png and "
                f"xyz/<stem>.tiff{' and gt/<stem>.png' if need_gt else ''}; {sub} lacks {what}. Restore it from the "
                "archive or move the folder out of the dataset."
            )
    return found


def _orphans(extra: set[str], files: dict[str, pathlib.Path], what: str, expected: pathlib.Path, fix: str) -> None:
    if extra:
        first = sorted(extra, key=_natural_key)[0]
        more = f" ({len(extra)} such files in {files[first].parent})" if len(extra) > 1 else ""
        raise DatasetError(f"{what} {files[first]} has no image {expected / first}.png{more}. {fix}")


def scan_split(root: str | os.PathLike, category: str, split: str, **options) -> list[Record3D]:
    """All samples of one split of one MVTec 3D-AD category, sorted by (defect type, stem), checked for
    layout and pairing (image, cloud, mask) without reading any pixel.

    Raises:
      DatasetError: naming the file or folder, on anything missing or unexpected.
    """
    cloud_options("mvtec3d", **options)
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}.")
    cat_dir = _category_dir(root, category)
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise DatasetError(
            f"Missing folder {split_dir}: a category in the {_LAYOUT} layout holds train/good/, validation/good/ "
            "and test/<good|defect>/, each with rgb/ and xyz/ (and gt/ in test). Check the root and category."
        )
    records: list[Record3D] = []
    for sub in sorted(split_dir.iterdir(), key=lambda p: _natural_key(p.name)):
        if _is_hidden(sub):
            continue
        if not sub.is_dir():
            raise DatasetError(
                f"Unexpected file {sub}: {split_dir} must hold only folders (good/ and, for test, one folder per "
                "defect type). Move it."
            )
        defect = sub.name
        if split != "test" and defect != GOOD:
            raise DatasetError(
                f"Unexpected folder {sub}: the {split} split holds only defect-free samples in {split_dir / GOOD}. "
                f"Move {defect}/ under test/ (with masks in gt/) or remove it."
            )
        dirs = _sample_dirs(sub, need_gt=defect != GOOD)
        where = f"{category}/{split}/{defect}"
        images = _image_files(dirs[RGB], f"{where}/rgb", layout=_LAYOUT)
        clouds = _image_files(dirs[XYZ], f"{where}/xyz", layout=_LAYOUT, extensions=CLOUD_EXTENSIONS)
        masks = _image_files(dirs[GT], f"{where}/gt", layout=_LAYOUT) if GT in dirs else None
        for stem in sorted(images, key=_natural_key):
            if stem not in clouds:
                raise DatasetError(
                    f"No point cloud for the image {images[stem]}: expected {dirs[XYZ] / stem}.tiff. Add the "
                    "cloud or move the image out of the dataset."
                )
            if masks is not None and stem not in masks:
                raise DatasetError(
                    f"No mask for the {'image' if defect == GOOD else 'defect image'} {images[stem]}: expected "
                    f"{dirs[GT] / stem}.png (the image's stem, no suffix). Add the mask"
                    f"{' (all zero for a defect-free image)' if defect == GOOD else ''} or move the image out."
                )
            mask = None if masks is None else masks[stem]
            records.append(Record3D(split, defect, stem, images[stem], mask, xyz_path=clouds[stem]))
        fix = "Add the image or remove the file."
        _orphans(set(clouds) - set(images), clouds, "Point cloud", dirs[RGB], fix)
        if masks is not None:
            _orphans(set(masks) - set(images), masks, "Mask", dirs[RGB], fix)
    if not records:
        raise DatasetError(
            f"The {split} split of {category!r} is empty: no images under {split_dir}. Put samples (rgb/ and xyz/) "
            f"in {split_dir / GOOD}{' and defect folders' if split == 'test' else ''}."
        )
    return records


def list_categories(root: str | os.PathLike, **options) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that hold train/ or test/."""
    cloud_options("mvtec3d", **options)
    return _list_categories(root)


# ----------------------------------------------------------------------------
# Reading pixels and clouds


def _load_record(rec: Record3D, image_size: int | None, resize: str, opts: CloudOptions) -> Loaded3D:
    base = _load_one(rec, image_size, resize)  # stats: the image, then its mask (if any)
    fix = "A good image's gt must be all zero: zero it, or move the sample to a defect folder."
    check_good_mask(rec, base.mask, fix)
    xyz_stat = stat_file(rec.xyz_path)
    xyz = read_cloud(rec.xyz_path)
    if xyz.shape[:2] != base.native:
        raise DatasetError(
            f"The point cloud {rec.xyz_path} is {xyz.shape[1]}x{xyz.shape[0]} (WxH) but its image {rec.image_path} "
            f"is {base.native[1]}x{base.native[0]}: a cloud has one point per image pixel. Replace the cloud or the "
            "image with the matching file."
        )
    size = cloud_side(image_size, opts, base.native)
    cloud = cached_prepare_cloud(xyz, rec.xyz_path, size, opts, [(rec.xyz_path, xyz_stat)])
    files = [str(rec.image_path), *(str(m) for m in rec.mask_paths), str(rec.xyz_path)]
    stats = [*base.stats, xyz_stat]
    return Loaded3D(base.image, base.mask, base.mode, base.native, cloud, rec.defect_type, files, stats)


def load_split(
    root: str | os.PathLike,
    category: str,
    split: str,
    image_size: int | None = 256,
    *,
    resize: str = "pil_bilinear",
    num_workers: int | None = None,
    **options,
) -> Split:
    """Read one split of one MVTec 3D-AD category into memory.

    Args:
      root: the folder holding one sub-folder per category.
      category: e.g. ``"tire"``.
      split: ``"train"``, ``"validation"`` or ``"test"``.
      image_size, resize, num_workers: as for :func:`jaxflow_ad.data.load_split` (the size and filter of the
        RGB images; with ``image_size=None`` every image must have the same native size).
      **options: ``cloud_size``, ``clean``, ``depth``, ``seed`` (:class:`CloudOptions`).

    Returns:
      A :class:`~jaxflow_ad.data.mvtec.Split` with ``samples`` ``"image"`` uint8 [N, S, S, 3], ``"xyz"``
      float32 [N, C, C, 3] (missing points exactly 0) and, with ``depth``, ``"depth"`` float32 [N, C, C] and
      ``"foreground"`` bool [N, C, C]; masks at the native size; ``files`` the rgb, gt and xyz files read.

    Raises:
      DatasetError: on any missing, unreadable or inconsistent file, or a bad option (module docstring).
    """
    opts = cloud_options("mvtec3d", **options)
    _check_load_args(image_size, resize)
    records = scan_split(root, category, split)
    loaded = map_records(lambda r: _load_record(r, image_size, resize, opts), records, num_workers)
    return assemble(records, loaded, category, split, image_size, opts.settings())
