"""Reader for the Eyecandies dataset (``data.layout=eyecandies``), and a converter to the MVTec 3D-AD layout.

The layout (Bonfiglioli et al., ACCV 2022; a Pipelime "underfolder" per split)::

    <root>/<Category>/train/data/<ID>_<item>.<ext>
    <root>/<Category>/val/data/<ID>_<item>.<ext>
    <root>/<Category>/test_public/data/<ID>_<item>.<ext>

Categories have no spaces (``CandyCane``, ``ChocolateCookie``, ...). ``<ID>`` is the file name up to
its first ``_`` (zero-padded: ``000`` in train, ``00`` in test_public); the rest of the stem is the
item. The items of a sample, and what this reader reads:

=====================================  ======================================================
``image_0`` ... ``image_5`` (.png)     RGB under six lights; ``image_<image_index>`` (default
                                       4, M3DM's choice) is ``samples["image"]``
``depth`` (.png, 16-bit gray)          depth normalised to 0..65535, read at full depth
``info_depth`` (.yaml)                 ``normalization: {min, max}`` in metres
``pose`` (.txt)                        the 4x4 camera pose
``metadata`` (.yaml)                   ``anomalous`` (0/1): the label (required in test)
``mask`` (.png, 8-bit gray)            ground truth, ``> 0`` (required in test)
``bumps_mask``, ``dents_mask``,        which kinds of defect a sample has (the defect type)
``colors_mask``, ``normals_mask``
``normals`` (.png), ``obj_params``     not read
=====================================  ======================================================

Splits: ``train`` = ``train/``, ``validation`` = ``val/``, ``test`` = ``test_public/``
(``test_private/`` has no labels and is not read). Train and validation samples are normal (a
``metadata.yaml`` there, if read, must say ``anomalous: 0``; their masks are not read).

Labels and defect types: a test sample is anomalous when its ``metadata.yaml`` says
``anomalous: 1``. A normal sample has defect type ``"good"`` (its mask must be all zero); an
anomalous one has the names of its non-empty part masks joined by ``"+"`` in the order bumps,
dents, colors, normals (e.g. ``"bumps"``, ``"dents+colors"``), or ``"bad"`` if it has none, so
that per-defect-type metrics separate geometric from colour defects. An anomalous sample with an
empty ``mask`` is logged as a warning, as for MVTec AD.

Depth to xyz (the official docs and M3DM's ``preprocess_eyecandies.py``)::

    d   = png / 65535 * (max - min) + min                      (metres)
    K4  = [[f, 0, W/2, 0], [0, f, H/2, 0], [0, 0, 1, 0], [0, 0, 0, 1]],   f = 711.11
    xyz = (d * inv(K4 @ pose) @ [u, v, 1, 1/d])[:3]           (u: column, v: row)

computed in float64 and stored as float32 [H, W, 3]; a pixel with ``d <= 0`` or non-finite
becomes a missing (0, 0, 0) point. This is the raw cloud in the world frame: M3DM's extra
background removal, axis swap and ``[0.1, -0.1, 0.1]`` scaling are not applied (the pipelime
stage ``pose @ inv(K4)`` is a different formula, not used). The cloud then goes through the same
steps and options as MVTec 3D-AD's (:mod:`~jaxflow_ad.data.mvtec3d`: ``cloud_size``, ``clean``,
``depth``, ``seed``), plus ``image_index``.

:func:`to_mvtec3d` writes a copy in the MVTec 3D-AD layout (rgb copied, xyz as float32 TIFF, gt
as 0/255 PNG), which the ``mvtec3d`` reader loads to the same arrays.

Everything that looks wrong raises one :class:`~jaxflow_ad.data.mvtec.DatasetError` naming the
file and the fix: a missing folder, a file not named ``<ID>_<item>.<ext>`` with a known item and
its extension, a folder inside ``data/``, a sample without one of the files it needs, an anomalous
train or validation sample, an unreadable or malformed YAML, pose or image, a depth map that is not
16-bit grayscale, a size mismatch between a sample's image, depth and masks, a nonzero mask of a
normal sample, a singular pose, a cloud with no valid point, an empty split.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import pathlib
import shutil

import numpy as np
import yaml
from PIL import Image

from .imageio import _open
from .mvtec import (
    GOOD,
    DatasetError,
    Record,
    Split,
    _check_load_args,
    _is_hidden,
    _load_one,
    _natural_key,
    read_mask,
    stat_file,
)
from .mvtec3d import (
    DEFAULT_OPTIONS as _CLOUD_OPTIONS,
)
from .mvtec3d import (
    Loaded3D,
    assemble,
    cached_prepare_cloud,
    check_good_mask,
    cloud_options,
    cloud_side,
    map_records,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "EYECANDIES_CATEGORIES",
    "FOCAL_LENGTH",
    "FOLDERS",
    "EyecandiesRecord",
    "decode_depth",
    "depth_to_xyz",
    "list_categories",
    "load_split",
    "read_sample_cloud",
    "scan_split",
    "to_mvtec3d",
]

EYECANDIES_CATEGORIES = (
    "CandyCane",
    "ChocolateCookie",
    "ChocolatePraline",
    "Confetto",
    "GummyBear",
    "HazelnutTruffle",
    "LicoriceSandwich",
    "Lollipop",
    "Marshmallow",
    "PeppermintCandy",
)
FOLDERS = {"train": "train", "validation": "val", "test": "test_public"}
SPLITS = tuple(FOLDERS)
DATA = "data"
FOCAL_LENGTH = 711.11  # the one camera of the dataset, in pixels
PARTS = ("bumps", "dents", "colors", "normals")  # the part masks <ID>_<part>_mask.png, in defect-type order
BAD = "bad"  # defect type of an anomalous sample whose part masks are all empty or absent
DEFAULT_OPTIONS = {**_CLOUD_OPTIONS, "image_index": 4}
_EXT = {
    **{f"image_{i}": ".png" for i in range(6)},
    "depth": ".png",
    "normals": ".png",
    "mask": ".png",
    **{f"{p}_mask": ".png" for p in PARTS},
    "info_depth": ".yaml",
    "obj_params": ".yaml",
    "metadata": ".yaml",
    "pose": ".txt",
}
_LAYOUT = "Eyecandies"


def _options(**options) -> tuple[int, object]:
    """``(image_index, CloudOptions)`` of the ``eyecandies`` layout's options, checked."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise DatasetError(
            f"Unknown option(s) {', '.join(f'data.eyecandies.{k}' for k in unknown)} of the eyecandies layout; "
            f"the options are {', '.join(DEFAULT_OPTIONS)}."
        )
    index = options.pop("image_index", DEFAULT_OPTIONS["image_index"])
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index <= 5:
        raise DatasetError(
            f"config key data.eyecandies.image_index={index!r} is invalid: it must be an int in 0..5, the light of "
            "<ID>_image_<k>.png used as the RGB image (4 as in M3DM; 5 is the global light)."
        )
    return int(index), cloud_options("eyecandies", **options)


# ----------------------------------------------------------------------------
# Scanning (no pixels read)


@dataclasses.dataclass(frozen=True)
class EyecandiesRecord(Record):
    """A sample of Eyecandies: the RGB image (``image_path``), ``mask_path`` (test only) and the files the
    cloud and the labels come from. ``defect_type`` is ``"good"`` or ``"bad"`` here; loading refines
    ``"bad"`` from the part masks."""

    depth_path: pathlib.Path | None = None
    info_path: pathlib.Path | None = None
    pose_path: pathlib.Path | None = None
    metadata_path: pathlib.Path | None = None
    metadata_stat: tuple[int, int] | None = None  # (size, mtime_ns) of metadata_path as it was read
    part_masks: tuple[tuple[str, pathlib.Path], ...] = ()  # (part, path) of the part masks present


def _root(root: str | os.PathLike) -> pathlib.Path:
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} does not exist or is not a folder. Pass the folder holding one folder per "
            "Eyecandies category (CandyCane, ChocolateCookie, ...), each with train/, val/ and test_public/."
        )
    return root


def list_categories(root: str | os.PathLike, **options) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that hold train/, val/ or test_public/."""
    _options(**options)
    root = _root(root)
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not _is_hidden(p) and any((p / f).is_dir() for f in FOLDERS.values())
    )


def _read_yaml(path: pathlib.Path, what: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(
            f"Cannot read the {what} {path}: {type(e).__name__}: {e}. Replace it with the archive's file."
        ) from e


def _anomalous(path: pathlib.Path) -> tuple[bool, tuple[int, int]]:
    """``metadata.yaml``'s ``anomalous`` flag and the file's stat as read."""
    st = stat_file(path)
    meta = _read_yaml(path, "metadata file")
    value = meta.get("anomalous") if isinstance(meta, dict) else None
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value), st
    raise DatasetError(
        f"The metadata file {path} has anomalous: {value!r}; it must map the key 'anomalous' to 0 or 1 (normal or "
        "anomalous sample). Replace it with the archive's file."
    )


def _sample_files(data_dir: pathlib.Path) -> dict[str, dict[str, pathlib.Path]]:
    """``{ID: {item: path}}`` of ``data_dir``; a file of another name raises."""
    samples: dict[str, dict[str, pathlib.Path]] = {}
    for p in sorted(data_dir.iterdir()):
        if _is_hidden(p):
            continue
        if p.is_dir():
            raise DatasetError(
                f"Unexpected folder {p} inside {data_dir}: the {_LAYOUT} layout has only files "
                "<ID>_<item>.<ext> there. Move it out of the dataset."
            )
        sid, sep, item = p.stem.partition("_")
        if not sid or not sep or item not in _EXT or p.suffix.lower() != _EXT[item]:
            expected = f"; the item {item!r} has the extension {_EXT[item]}" if item in _EXT else ""
            raise DatasetError(
                f"Unexpected file {p}: the {_LAYOUT} layout has only files <ID>_<item>.<ext> in {data_dir}, with "
                f"item one of {', '.join(_EXT)}{expected}. Remove or rename the file."
            )
        items = samples.setdefault(sid, {})
        if item in items:
            raise DatasetError(
                f"Two files for the item {item!r} of sample {sid} in {data_dir}: {items[item].name} "
                f"and {p.name}. Keep only one."
            )
        items[item] = p
    return samples


def scan_split(root: str | os.PathLike, category: str, split: str, **options) -> list[EyecandiesRecord]:
    """All samples of one split of one Eyecandies category, sorted by ID, checked for layout and
    labels (``metadata.yaml`` is read) without reading any pixel.

    Raises:
      DatasetError: naming the file or folder, on anything missing or unexpected.
    """
    index, _ = _options(**options)
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}.")
    root = _root(root)
    cat_dir = root / category
    if not cat_dir.is_dir():
        found = list_categories(root)
        raise DatasetError(
            f"Category {category!r} not found: {cat_dir} is not a folder. Categories under {root}: "
            f"{', '.join(found) if found else 'none'}. Fix the category name or the root."
        )
    data_dir = cat_dir / FOLDERS[split] / DATA
    if not data_dir.is_dir():
        raise DatasetError(
            f"Missing folder {data_dir}: the {split} split of an {_LAYOUT} category is {FOLDERS[split]}/{DATA}/ "
            "with the files <ID>_<item>.<ext> of every sample. Check the root and category, or download the split."
        )
    test = split == "test"
    image_item = f"image_{index}"
    needed = (image_item, "depth", "info_depth", "pose") + (("metadata", "mask") if test else ())
    records = []
    for sid, items in sorted(_sample_files(data_dir).items(), key=lambda kv: _natural_key(kv[0])):
        for item in needed:
            if item not in items:
                raise DatasetError(
                    f"Sample {sid} of {data_dir} has no {sid}_{item}{_EXT[item]} (found: "
                    f"{', '.join(sorted(p.name for p in items.values()))}). Every {split} sample needs "
                    f"{', '.join(f'<ID>_{i}{_EXT[i]}' for i in needed)}: restore the file or remove the sample's files."
                )
        meta = items.get("metadata")
        anomalous, meta_stat = _anomalous(meta) if meta is not None else (False, None)
        if anomalous and not test:
            raise DatasetError(
                f"The metadata file {meta} says anomalous: 1, but the {split} split ({data_dir}) holds only normal "
                "samples. Move the sample's files to test_public/ or replace the file with the archive's."
            )
        parts = tuple((p, items[f"{p}_mask"]) for p in PARTS if anomalous and f"{p}_mask" in items)
        records.append(
            EyecandiesRecord(
                split,
                BAD if anomalous else GOOD,
                sid,
                items[image_item],
                items["mask"] if test else None,
                depth_path=items["depth"],
                info_path=items["info_depth"],
                pose_path=items["pose"],
                metadata_path=meta,
                metadata_stat=meta_stat,
                part_masks=parts,
            )
        )
    if not records:
        raise DatasetError(
            f"The {split} split of {category!r} is empty: no sample files in {data_dir}. Put the split's files "
            "<ID>_<item>.<ext> there (download it again)."
        )
    return records


# ----------------------------------------------------------------------------
# Depth to xyz


def decode_depth(png: np.ndarray, depth_min: float, depth_max: float) -> np.ndarray:
    """float64 [H, W] depth in metres of a 16-bit depth PNG: ``png / 65535 * (max - min) + min``."""
    return np.asarray(png, np.float64) / 65535.0 * (depth_max - depth_min) + depth_min


def depth_to_xyz(depth: np.ndarray, pose: np.ndarray, focal: float = FOCAL_LENGTH) -> np.ndarray:
    """float32 [H, W, 3]: the point of every pixel, ``(d * inv(K4 @ pose) @ [u, v, 1, 1/d])[:3]``.

    ``depth`` [H, W] in metres, ``pose`` the 4x4 matrix of ``pose.txt``, ``K4`` the intrinsics with
    focal ``focal`` and principal point ``(W/2, H/2)``; ``u`` is the column, ``v`` the row. Written as
    ``d * (M[:3,0] u + M[:3,1] v + M[:3,2]) + M[:3,3]`` with ``M = inv(K4 @ pose)``, in float64.
    Pixels with ``d <= 0`` or non-finite give (0, 0, 0).

    Raises:
      numpy.linalg.LinAlgError: ``K4 @ pose`` is singular.
    """
    d = np.asarray(depth, np.float64)
    h, w = d.shape
    k4 = np.array([[focal, 0, w / 2, 0], [0, focal, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)
    m = np.linalg.inv(k4 @ np.asarray(pose, np.float64))
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    ray = u[..., None] * m[:3, 0] + v[..., None] * m[:3, 1] + m[:3, 2]
    pts = d[..., None] * ray + m[:3, 3]
    ok = np.isfinite(d) & (d > 0)
    return np.where(ok[..., None] & np.isfinite(pts), pts, 0.0).astype(np.float32)


def _read_depth_png(path: pathlib.Path) -> np.ndarray:
    im, _ = _open(path, "depth map")
    if not (im.mode == "I" or im.mode.startswith("I;16")):
        raise DatasetError(
            f"The depth map {path} has PIL mode {im.mode!r}, not 16-bit grayscale: Eyecandies stores depth as a "
            "16-bit PNG normalised to 0..65535, and an 8-bit copy has lost the precision. Replace it with the "
            "archive's file."
        )
    a = np.asarray(im)
    if a.dtype.kind != "u" or a.dtype.itemsize > 2:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise DatasetError(
                f"The depth map {path} has values {lo}..{hi}, outside the 16-bit range 0..65535. Replace it with "
                "the archive's file."
            )
    return a


def _read_range(path: pathlib.Path) -> tuple[float, float]:
    info = _read_yaml(path, "depth range file")
    norm = info.get("normalization") if isinstance(info, dict) else None
    lo = norm.get("min") if isinstance(norm, dict) else None
    hi = norm.get("max") if isinstance(norm, dict) else None
    ok = all(isinstance(x, numbers.Real) and not isinstance(x, bool) and np.isfinite(x) for x in (lo, hi))
    if not ok or hi < lo:
        raise DatasetError(
            f"The depth range file {path} has normalization: {norm!r}; it must be {{min: <metres>, max: <metres>}} "
            "with min <= max. Replace it with the archive's file."
        )
    return float(lo), float(hi)


def _read_pose(path: pathlib.Path) -> np.ndarray:
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"Cannot read the pose {path}: {type(e).__name__}: {e}. It must hold a 4x4 matrix of numbers "
            "(np.loadtxt); replace it with the archive's file."
        ) from e
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DatasetError(
            f"The pose {path} holds an array of shape {pose.shape}, not a finite 4x4 matrix. Replace it with the "
            "archive's file."
        )
    return pose


def read_sample_cloud(rec: EyecandiesRecord, focal: float = FOCAL_LENGTH) -> tuple[np.ndarray, list, list]:
    """The native float32 [H, W, 3] cloud of a sample, the files read and their stats (depth, range, pose).

    Raises:
      DatasetError: naming the file: unreadable or malformed, or a singular pose.
    """
    stats = [stat_file(rec.depth_path)]
    png = _read_depth_png(rec.depth_path)
    stats.append(stat_file(rec.info_path))
    lo, hi = _read_range(rec.info_path)
    stats.append(stat_file(rec.pose_path))
    pose = _read_pose(rec.pose_path)
    try:
        xyz = depth_to_xyz(decode_depth(png, lo, hi), pose, focal)
    except np.linalg.LinAlgError as e:
        raise DatasetError(
            f"The pose {rec.pose_path} makes the camera matrix K4 @ pose singular ({e}), so the depth cannot be "
            "turned into points. Replace it with the archive's file."
        ) from e
    return xyz, [str(rec.depth_path), str(rec.info_path), str(rec.pose_path)], stats


def _defect_type(rec: EyecandiesRecord, native: tuple[int, int], files: list, stats: list) -> str:
    """``"good"``, or the non-empty part masks of an anomalous sample joined by ``"+"`` (``"bad"`` if none)."""
    if rec.defect_type == GOOD:
        return GOOD
    kinds = []
    for part, path in rec.part_masks:
        stats.append(stat_file(path))
        files.append(str(path))
        m = read_mask(path)
        if m.shape != native:
            raise DatasetError(
                f"Mask {path} is {m.shape[1]}x{m.shape[0]} (WxH) but its image {rec.image_path} is "
                f"{native[1]}x{native[0]}. A mask must have its image's size; replace it with the archive's file."
            )
        if m.any():
            kinds.append(part)
    return "+".join(kinds) or BAD


def _load_record(
    rec: EyecandiesRecord, image_size: int | None, resize: str, opts, *, cloud: bool = True
) -> tuple[Loaded3D, np.ndarray]:
    """One sample read: its :class:`Loaded3D` (cloud resized per ``opts`` when ``cloud``) and its native cloud."""
    base = _load_one(rec, image_size, resize)  # image, then mask (test only); mask size checked
    check_good_mask(
        rec,
        base.mask,
        f"Its metadata {rec.metadata_path} says anomalous: 0; fix whichever of the two is wrong.",
    )
    files = [str(rec.image_path), *(str(m) for m in rec.mask_paths)]
    stats = list(base.stats)
    if rec.metadata_path is not None:
        files.append(str(rec.metadata_path))
        stats.append(rec.metadata_stat)
    defect = _defect_type(rec, base.native, files, stats)
    xyz, cloud_files, cloud_stats = read_sample_cloud(rec)
    if xyz.shape[:2] != base.native:
        raise DatasetError(
            f"The depth map {rec.depth_path} is {xyz.shape[1]}x{xyz.shape[0]} (WxH) but its image {rec.image_path} "
            f"is {base.native[1]}x{base.native[0]}: a depth map has one value per image pixel. Replace the file "
            "with the archive's."
        )
    sample = {}
    if cloud:
        size = cloud_side(image_size, opts, base.native)
        sample = cached_prepare_cloud(xyz, rec.depth_path, size, opts, list(zip(cloud_files, cloud_stats)))
    loaded = Loaded3D(
        base.image, base.mask, base.mode, base.native, sample, defect, files + cloud_files, stats + cloud_stats
    )
    return loaded, xyz


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
    """Read one split of one Eyecandies category into memory.

    Args:
      root: the folder holding one folder per category.
      category: e.g. ``"CandyCane"``.
      split: ``"train"`` (``train/``), ``"validation"`` (``val/``) or ``"test"`` (``test_public/``).
      image_size, resize, num_workers: as for :func:`jaxflow_ad.data.load_split`.
      **options: ``image_index`` (0..5, default 4) and the cloud options ``cloud_size``, ``clean``,
        ``depth``, ``seed`` (:class:`~jaxflow_ad.data.mvtec3d.CloudOptions`).

    Returns:
      A :class:`~jaxflow_ad.data.mvtec.Split` with the sample keys of the ``mvtec3d`` layout (``"image"``,
      ``"xyz"``, and ``"depth"``, ``"foreground"`` with ``depth``); masks at the native size (all False
      outside test); defect types as the module docstring says; ``files`` every file read.

    Raises:
      DatasetError: on any missing, unreadable or inconsistent file, or a bad option (module docstring).
    """
    index, opts = _options(**options)
    _check_load_args(image_size, resize)
    records = scan_split(root, category, split, image_index=index)
    loaded = map_records(lambda r: _load_record(r, image_size, resize, opts)[0], records, num_workers)
    return assemble(records, loaded, category, split, image_size, opts.settings(image_index=index))


def to_mvtec3d(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    categories: list[str] | None = None,
    *,
    image_index: int = 4,
) -> pathlib.Path:
    """Write Eyecandies (``src``) in the MVTec 3D-AD layout under ``dst`` and return ``dst``.

    Per category and split (train, validation, test): ``<split>/<defect type>/rgb/<ID>.png`` (a copy of
    ``<ID>_image_<image_index>.png``), ``xyz/<ID>.tiff`` (the raw float32 cloud of :func:`depth_to_xyz`,
    missing points zero) and, in test, ``gt/<ID>.png`` (the mask as 0/255; all zero for good samples).
    Defect types are those of :func:`load_split`. Each category is written to a hidden temporary folder
    and renamed when complete; an existing ``dst/<category>`` raises rather than being overwritten.

    Raises:
      DatasetError: as :func:`load_split`, or ``dst/<category>`` exists.
    """
    import tifffile

    index, opts = _options(image_index=image_index)
    dst = pathlib.Path(dst).expanduser()
    cats = list_categories(src) if categories is None else list(categories)
    for category in cats:
        final = dst / category
        if final.exists():
            raise DatasetError(f"{final} already exists: to_mvtec3d does not overwrite. Remove it or pick another dst.")
        tmp = dst / f".{category}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        for split in SPLITS:
            for rec in scan_split(src, category, split, image_index=index):
                loaded, xyz = _load_record(rec, None, "pil_bilinear", opts, cloud=False)
                folder = tmp / split / loaded.defect_type
                for sub in ("rgb", "xyz") + (("gt",) if split == "test" else ()):
                    (folder / sub).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(rec.image_path, folder / "rgb" / f"{rec.stem}.png")
                tifffile.imwrite(folder / "xyz" / f"{rec.stem}.tiff", xyz, photometric="rgb")
                if split == "test":
                    gt = np.where(loaded.mask, np.uint8(255), np.uint8(0))
                    Image.fromarray(gt, "L").save(folder / "gt" / f"{rec.stem}.png")
        tmp.rename(final)
    return dst
