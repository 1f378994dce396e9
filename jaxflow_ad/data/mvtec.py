"""Reader for folders in the MVTec AD layout.

The layout (Bergmann et al., CVPR 2019; the public archive)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png

Numbering restarts in every folder, so a sample is identified by
``(split, defect_type, stem)``, never by its stem alone. Good images have no
mask file; their mask is all False at the image's native size. Masks are
binarised with ``> 0`` at the file's full bit depth (the archive stores 0/255,
other tools write 0/1). Pixels are decoded by :mod:`~jaxflow_ad.data.imageio`:
every image becomes 8-bit RGB (grayscale on three channels, alpha ignored,
16-bit scaled by the fixed range 65535 -> 255); float images raise.

Everything that looks wrong raises one :class:`DatasetError` naming the file
and the fix; nothing is skipped silently. The only files ignored are hidden
ones (names starting with ``.``) and loose files directly under the root or a
category folder (the archive ships ``license.txt`` and ``readme.txt`` there).
What is harmless but maybe unintended is logged as a warning on the
``jaxflow_ad`` logger, naming the files: images of one split in different
modes (e.g. grayscale and RGB) or native sizes, and defect images whose mask
is empty.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

# DatasetError is defined next to the pixel decoding and is re-exported here, where it always was.
from .imageio import DatasetError, read_image, read_mask, read_rgb
from .resize import check_resize, resize_image

__all__ = [
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "MVTEC_CATEGORIES",
    "MVTEC_TEXTURE_CATEGORIES",
    "Record",
    "Split",
    "list_categories",
    "load_split",
    "read_image",
    "read_mask",
    "scan_split",
    "stat_file",
]

# The 15 categories of the public MVTec AD archive and its 5 texture classes
# (the ones PyramidFlow's official code augments with flips and rot90).
MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
MVTEC_TEXTURE_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood")

# Compared lower-case, so .PNG and .Png are accepted too.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")
GOOD = "good"
MASK_SUFFIX = "_mask"
# How many files the warnings about a split name at most: per mode or size, and of the empty masks.
WARN_EXAMPLES_PER_KIND = 3
WARN_EMPTY_MASKS = 5

log = logging.getLogger("jaxflow_ad")


@dataclasses.dataclass(frozen=True)
class Record:
    """One sample found on disk, before any pixel is read."""

    split: str
    defect_type: str  # "good" or the defect folder name
    stem: str  # file name without extension
    image_path: pathlib.Path
    mask_path: pathlib.Path | None  # None for good images
    # Further mask files of the same image, OR-ed with mask_path (MVTec LOCO AD stores a folder of
    # masks per image, one per defect); empty for every other layout.
    more_masks: tuple[pathlib.Path, ...] = ()

    @property
    def mask_paths(self) -> tuple[pathlib.Path, ...]:
        """Every mask file of the sample (none for a good image)."""
        return (() if self.mask_path is None else (self.mask_path,)) + self.more_masks

    @property
    def label(self) -> int:
        return 0 if self.defect_type == GOOD else 1

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.split, self.defect_type, self.stem)


def _check_rows(tree: Mapping[str, Any], n: int, prefix: str) -> None:
    """Every array in the (nested) sample dict ``tree`` has ``n`` rows."""
    for key, value in tree.items():
        name = f"{prefix}[{key!r}]"
        if isinstance(value, Mapping):
            _check_rows(value, n, name)
            continue
        shape = np.shape(value)
        if not shape or shape[0] != n:
            raise ValueError(
                f"{name} has shape {shape} but the split has {n} samples: every sample "
                f"array needs leading dimension {n} (one row per sample, in the order of "
                "Split.paths). Pass an array with one row per sample."
            )


def _as_arrays(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A new nested dict with every leaf as a NumPy array (no copy for NumPy input)."""
    return {k: _as_arrays(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def _take(tree: Mapping[str, Any], idx: np.ndarray) -> dict[str, Any]:
    return {k: _take(v, idx) if isinstance(v, Mapping) else v[idx] for k, v in tree.items()}


def _hash_arrays(h, tree: Mapping[str, Any], prefix: str) -> None:
    for key in sorted(tree):
        value = tree[key]
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            _hash_arrays(h, value, name)
            continue
        a = np.ascontiguousarray(value)
        h.update(f"{name}\0{a.shape}\0{a.dtype.str}\0".encode())
        h.update(a.tobytes())


@dataclasses.dataclass
class Split:
    """One split of one category, fully in memory.

    A sample is a dict of modalities rather than a single image array so that
    datasets with more than RGB (point maps, depth, foreground masks) and
    derived per-sample data (backbone features) travel together and are
    indexed, shuffled and augmented alike (see :meth:`take`,
    :func:`~jaxflow_ad.data.augment.flip_rot90_samples`).

    Attributes:
      samples: per-sample arrays, each with leading dimension N, keyed by
        modality. ``"image"`` is always there: uint8 [N, S, S, 3], resized to
        ``image_size`` with PIL bilinear, decoded to 8-bit RGB by
        :func:`~jaxflow_ad.data.imageio.read_image` (grayscale on three
        channels, 16-bit files scaled to 8 bits). Images stay uint8 because
        float32 would take 4x the memory for no information the models use;
        models convert per batch. Other
        readers add e.g. ``"xyz"`` float32 [N, S, S, 3], ``"depth"``
        [N, S, S], ``"foreground"`` bool [N, S, S]; a value may itself be a
        dict of arrays (``samples["features"] = {tap: float32 [N, h, w, c]}``).
      masks: N bool arrays at each image's native resolution (H, W); all
        False for good images.
      labels: int32 [N], 1 = defective.
      defect_types: "good" or the defect folder name, per sample.
      paths: image file paths (str), per sample.
      split, category: where the split came from.
      files: every file read to build the split (images and masks), which
        :meth:`fingerprint` stats; empty for a split built in memory.
      file_stats: ``(size, st_mtime_ns)`` of each of ``files`` as taken just
        before the file was read (:func:`stat_file`), or empty if the reader
        did not record them. They let :meth:`fingerprint` describe the data
        in memory rather than whatever is on disk when it is called.
      has_masks: False when the dataset has no ground-truth masks (e.g. the
        ``folder`` layout without a mask folder): ``masks`` are then all-False
        placeholders at each image's native size, also for defective images,
        and pixel-level metrics must not be computed from them. True for every
        layout that ships masks (good images' all-False masks are then exact).
      settings: the reader options that shaped the samples beyond the files and the image size
        (e.g. MVTec 3D-AD's ``clean``, ``depth``, ``cloud_size``), as a string; hashed by
        :meth:`fingerprint` so that features cached from a split follow a change of them.
    """

    samples: dict[str, Any]
    masks: list[np.ndarray]
    labels: np.ndarray
    defect_types: list[str]
    paths: list[str]
    split: str = ""
    category: str = ""
    files: list[str] = dataclasses.field(default_factory=list)
    file_stats: list[tuple[int, int]] = dataclasses.field(default_factory=list, repr=False)
    has_masks: bool = True
    settings: str = ""

    def __post_init__(self):
        # Checked here, once, so that a mismatched row count fails where the
        # split is built and not later as a silently misaligned batch.
        if not isinstance(self.samples, Mapping) or "image" not in self.samples:
            raise ValueError(
                "Split.samples must be a dict with at least the key 'image' (uint8 [N, S, S, 3]); got "
                f"{type(self.samples).__name__}"
                f"{' with keys ' + str(sorted(self.samples)) if isinstance(self.samples, Mapping) else ''}. "
                "Wrap the image array: Split(samples={'image': images}, ...)."
            )
        image = self.samples["image"]
        if np.ndim(image) != 4 or np.shape(image)[-1] != 3 or np.asarray(image).dtype != np.uint8:
            raise ValueError(
                f"Split.samples['image'] must be uint8 [N, S, S, 3], got {np.asarray(image).dtype} "
                f"{np.shape(image)}. Convert float images in [0, 1] with "
                "np.rint(images * 255).astype(np.uint8)."
            )
        n = len(self.paths)
        for name in ("masks", "labels", "defect_types"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Split.{name} has {len(getattr(self, name))} entries but Split.paths has {n}: "
                    "every per-sample field needs one entry per sample."
                )
        _check_rows(self.samples, n, "Split.samples")
        if self.file_stats and len(self.file_stats) != len(self.files):
            raise ValueError(
                f"Split.file_stats has {len(self.file_stats)} entries but Split.files has {len(self.files)}: "
                "record one (size, mtime_ns) per file with stat_file(), or leave file_stats empty."
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def images(self) -> np.ndarray:
        """``samples["image"]``: uint8 [N, S, S, 3]."""
        return self.samples["image"]

    @property
    def keys(self) -> list[tuple[str, str, str]]:
        """Unique ``(split, defect_type, stem)`` per sample."""
        return [(self.split, d, pathlib.Path(p).stem) for d, p in zip(self.defect_types, self.paths)]

    def take(self, indices) -> dict[str, Any]:
        """Rows ``indices`` of every sample array, as a new nested dict.

        ``indices`` is a 1-D integer array (a batch of sample indices, in any
        order, repeats allowed). Nested dicts such as ``samples["features"]``
        are indexed alike, so a batch keeps every modality aligned.
        """
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.intp)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise ValueError(
                f"Split.take needs a 1-D integer array of sample indices, got {idx.dtype} {idx.shape}. "
                "Pass e.g. np.arange(n) or a permutation slice."
            )
        return _take(self.samples, idx)

    def with_samples(self, **arrays) -> Split:
        """A copy with extra or replaced ``samples`` entries, e.g.
        ``split.with_samples(features={"p2": f2, "p3": f3})``.

        The other entries and fields are shared, not copied. Values are
        converted to NumPy (a device array is brought to the host once here
        rather than at every :meth:`take`); every array, also inside nested
        dicts, must have one row per sample, else ValueError naming the key.
        """
        new = _as_arrays(arrays)
        _check_rows(new, len(self), "with_samples")
        return dataclasses.replace(self, samples={**self.samples, **new})

    def subset(self, rows, name: str) -> Split:
        """Rows ``rows`` (sorted, unique) as a split of their own, e.g. the normal images held out
        of training to choose a threshold on.

        Its ``split`` is ``"<split>[<name>:<digest of rows>]"``, so its :meth:`fingerprint` (and
        any feature cached under it) differs from the whole split's and from another subset's.
        ``files`` stay those of the whole split: they are what was read.
        """
        idx = np.unique(np.asarray(rows, np.int64))
        if idx.size and (idx[0] < 0 or idx[-1] >= len(self)):
            raise ValueError(f"Split.subset: rows must be in [0, {len(self)}), got {idx[0]}..{idx[-1]}")
        digest = hashlib.sha256(idx.tobytes()).hexdigest()[:8]
        return dataclasses.replace(
            self,
            samples=self.take(idx),
            masks=[self.masks[i] for i in idx],
            labels=np.asarray(self.labels)[idx],
            defect_types=[self.defect_types[i] for i in idx],
            paths=[self.paths[i] for i in idx],
            split=f"{self.split}[{name}:{digest}]",
        )

    def fingerprint(self) -> str:
        """A sha256 hex digest of what the split was built from, for caches keyed by data.

        It covers ``category``, ``split``, the shape and dtype of
        ``samples["image"]`` (so another ``image_size`` gives another
        fingerprint), ``settings`` and, for every file in ``files``, its path, size and
        modification time in ns. Stat-ing instead of hashing contents keeps it
        cheap enough to compute on every run for a whole dataset; like make
        or rsync's quick check it misses a rewrite that keeps both the size
        and the timestamp (a timestamp is as fine as the file system's clock,
        a few ms on Linux), which no normal copy or regeneration does.

        The sizes and times hashed are those recorded when each file was read
        (``file_stats``), and every file is stat-ed again now: a file that
        vanished or changed since raises, because the pixels in memory no
        longer match the disk and features cached under either state would be
        served for the other. Without ``file_stats`` the current stats are
        hashed. A split built in memory (``files`` empty) has nothing on disk;
        its fingerprint hashes the bytes of every sample array instead, so it
        still never matches different data.

        Raises:
          DatasetError: a file in ``files`` vanished or changed since it was read.
        """
        h = hashlib.sha256()
        image = np.asarray(self.samples["image"])
        h.update(f"jaxflow_ad.Split/1\0{self.category}\0{self.split}\0{image.shape}\0{image.dtype.str}\0".encode())
        if self.settings:  # absent from the digest when empty, so RGB splits keep their fingerprints
            h.update(f"settings\0{self.settings}\0".encode())
        if not self.files:
            _hash_arrays(h, self.samples, "samples")
            return h.hexdigest()
        recorded = self.file_stats or [None] * len(self.files)
        for path, then in zip(self.files, recorded):
            now = stat_file(path, f"{self.category}/{self.split}")
            if then is not None and tuple(then) != now:
                raise DatasetError(
                    f"File {path} of {self.category}/{self.split} changed on disk since the split was read "
                    f"(size, mtime_ns {tuple(then)} -> {now}): the data in memory is stale. Load the split again."
                )
            h.update(os.fsencode(path) + f"\0{now[0]}\0{now[1]}\n".encode())
        return h.hexdigest()

    def masks_at(self, size: int, threshold: float = 0.5) -> np.ndarray:
        """Masks resized to ``[N, size, size]`` bool.

        Each 0/1 mask is resized as float32 with PIL bilinear (which averages
        over the footprint when shrinking) and then thresholded at
        ``threshold``. With the default 0.5 this equals the rounding of a
        bilinear resize that PyramidFlow's official pipeline uses, and unlike
        nearest-neighbour it does not shift or alias region borders
        depending on which source pixel a sample happens to hit. A very thin
        defect (under about ``native / size / 2`` pixels wide) can vanish at
        low resolution; pass a lower ``threshold`` to keep any touched pixel.
        """
        out = np.zeros((len(self.masks), size, size), dtype=bool)
        for i, m in enumerate(self.masks):
            if not m.any():
                continue
            if m.shape == (size, size):
                out[i] = m
                continue
            f = Image.fromarray(m.astype(np.float32), mode="F")
            f = f.resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(f) >= threshold
        return out


def stat_file(path: str | os.PathLike, what: str = "the split") -> tuple[int, int]:
    """``(size, st_mtime_ns)`` of a dataset file, as :meth:`Split.fingerprint` hashes it.

    Readers call it just before reading each file and store the results in
    ``Split.file_stats``: a file rewritten while or after it is read then
    fails the fingerprint instead of being cached under the new state.

    Raises:
      DatasetError: the file does not exist or cannot be stat-ed.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise DatasetError(
            f"File {path} of {what} vanished or became unreadable ({type(e).__name__}: {e}): the "
            "dataset changed on disk. Restore the file or load the split again."
        ) from e
    return st.st_size, st.st_mtime_ns


# ----------------------------------------------------------------------------
# Scanning the folders (no pixels read)


def _natural_key(name: str):
    """'2' < '10', and a total order on any string."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _is_hidden(p: pathlib.Path) -> bool:
    return p.name.startswith(".")


def _image_files(
    folder: pathlib.Path,
    what: str,
    *,
    skip: tuple[str, ...] = (),
    layout: str = "MVTec AD",
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> dict[str, pathlib.Path]:
    """Image files in ``folder`` keyed by stem; anything unexpected raises.

    ``skip``: names of entries the caller handles itself (DAGM's ``Label/``
    folder and ``Labels.txt``); ``layout`` names the layout in messages;
    ``extensions``: the lower-case suffixes that count as images.
    """
    files: dict[str, pathlib.Path] = {}
    for p in sorted(folder.iterdir()):
        if _is_hidden(p) or p.name in skip:
            continue
        if p.is_dir():
            raise DatasetError(
                f"Unexpected folder {p} inside the {what} folder {folder}: the "
                f"{layout} layout has only image files there. Move it out of "
                "the dataset."
            )
        if p.suffix.lower() not in extensions:
            raise DatasetError(
                f"Unexpected file {p}: only images with extensions "
                f"{', '.join(extensions)} (any case) may be in {folder}. "
                "Remove or rename the file."
            )
        if p.stem in files:
            raise DatasetError(
                f"Two files with the same stem {p.stem!r} in {folder}: "
                f"{files[p.stem].name} and {p.name}. Keep only one."
            )
        files[p.stem] = p
    return files


def _category_dir(root: str | os.PathLike, category: str) -> pathlib.Path:
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} does not exist or is not a folder. Pass the "
            "folder that holds one sub-folder per category (for MVTec AD, the "
            "folder where the archive was extracted; for the built-in set, "
            "the path returned by jaxflow_ad.data.ensure_builtin())."
        )
    cat_dir = root / category
    if not cat_dir.is_dir():
        found = list_categories(root)
        raise DatasetError(
            f"Category {category!r} not found: {cat_dir} is not a folder. "
            f"Categories under {root}: {', '.join(found) if found else 'none'}. "
            "Fix the category name or the root."
        )
    return cat_dir


def list_categories(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that hold train/ or test/."""
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} does not exist or is not a folder. Pass the "
            "folder that holds one sub-folder per category."
        )
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not _is_hidden(p) and ((p / "train").is_dir() or (p / "test").is_dir())
    )


def _find_mask(
    gt_dir: pathlib.Path, stem: str, masks: dict[str, pathlib.Path], suffix: str = MASK_SUFFIX
) -> pathlib.Path | None:
    """The mask ``<stem><suffix>.*`` or ``<stem>.*`` among ``masks`` (keyed by stem), None if neither."""
    with_suffix = masks.get(stem + suffix)
    plain = masks.get(stem)
    if with_suffix is not None and plain is not None:
        raise DatasetError(
            f"Two masks for the image stem {stem!r} in {gt_dir}: "
            f"{with_suffix.name} and {plain.name}. Keep only "
            f"{stem}{suffix}.png."
        )
    return with_suffix if with_suffix is not None else plain


def scan_split(root: str | os.PathLike, category: str, split: str) -> list[Record]:
    """All samples of a split, sorted by (defect type, file name), validated
    for layout only (existence, pairing of images and masks)."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}.")
    cat_dir = _category_dir(root, category)
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise DatasetError(
            f"Missing folder {split_dir}: a category in the MVTec AD layout "
            f"needs {split}/good/ with images. Check the root and category."
        )
    records: list[Record] = []
    for sub in sorted(split_dir.iterdir(), key=lambda p: _natural_key(p.name)):
        if _is_hidden(sub):
            continue
        if not sub.is_dir():
            raise DatasetError(
                f"Unexpected file {sub}: {split_dir} must hold only folders "
                "(good/ and, for test, one folder per defect type). Move it."
            )
        defect = sub.name
        if split == "train" and defect != GOOD:
            raise DatasetError(
                f"Unexpected folder {sub}: the training split holds only "
                f"defect-free images in {split_dir / GOOD}. Move {defect}/ "
                "under test/ (with masks under ground_truth/) or remove it."
            )
        images = _image_files(sub, f"{split}/{defect}")
        masks: dict[str, pathlib.Path] = {}
        gt_dir = cat_dir / "ground_truth" / defect
        if defect != GOOD:
            if not gt_dir.is_dir():
                raise DatasetError(
                    f"Missing mask folder {gt_dir} for the defect images in "
                    f"{sub}. Every image test/{defect}/<stem>.png needs "
                    f"ground_truth/{defect}/<stem>{MASK_SUFFIX}.png."
                )
            masks = _image_files(gt_dir, f"ground_truth/{defect}")
        used: set[str] = set()
        for stem in sorted(images, key=_natural_key):
            mask_path = None
            if defect != GOOD:
                mask_path = _find_mask(gt_dir, stem, masks)
                if mask_path is None:
                    raise DatasetError(
                        f"No mask for the defect image {images[stem]}: expected "
                        f"{gt_dir / (stem + MASK_SUFFIX + '.png')}. Add the "
                        "mask or move the image out of the dataset."
                    )
                used.add(mask_path.stem)
            records.append(Record(split, defect, stem, images[stem], mask_path))
        orphans = sorted(set(masks) - used, key=_natural_key)
        if orphans:
            raise DatasetError(
                f"Mask {masks[orphans[0]]} has no image "
                f"{sub / (orphans[0].removesuffix(MASK_SUFFIX) + '.png')}"
                f"{f' ({len(orphans)} orphan masks in {gt_dir})' if len(orphans) > 1 else ''}. "
                "Add the image or remove the mask."
            )
    if not records:
        raise DatasetError(
            f"The {split} split of {category!r} is empty: no images under "
            f"{split_dir}. Put images in {split_dir / GOOD}"
            f"{' and defect folders' if split == 'test' else ''}."
        )
    return records


# ----------------------------------------------------------------------------
# Reading pixels


class _Loaded(NamedTuple):
    """What :func:`_load_one` read for one record."""

    image: np.ndarray  # uint8 [S, S, 3], or [H, W, 3] at the native size
    mask: np.ndarray  # bool [H, W]
    stats: list[tuple[int, int]]  # (size, mtime_ns) of the image, then of each of its masks
    mode: str  # the image file's mode as decoded (imageio.read_rgb), e.g. "L" or "RGB"
    native: tuple[int, int]  # the image's native (H, W)


def _load_one(rec: Record, image_size: int | None, resize: str = "pil_bilinear") -> _Loaded:
    """Read the image (and mask) of one record, resized to ``image_size`` unless None."""
    stats = [stat_file(rec.image_path)]
    im, mode = read_rgb(rec.image_path)
    native = (im.height, im.width)
    arr = np.asarray(im, dtype=np.uint8) if image_size is None else resize_image(im, image_size, resize)
    mask = np.zeros(native, dtype=bool)
    for mask_path in rec.mask_paths:  # several only for MVTec LOCO AD: a pixel is defective in any of them
        stats.append(stat_file(mask_path))
        one = read_mask(mask_path)
        if one.shape != native:
            raise DatasetError(
                f"Mask {mask_path} is {one.shape[1]}x{one.shape[0]} "
                f"(WxH) but its image {rec.image_path} is {native[1]}x{native[0]}. "
                "A mask must have its image's size; regenerate or replace it."
            )
        mask |= one
    return _Loaded(arr, mask, stats, mode, native)


def _kinds(values: list[str], paths: list[pathlib.Path]) -> str:
    """``"4 RGB (e.g. a, b, c); 1 L (e.g. d)"``: each distinct value, most frequent first, with its
    count and up to :data:`WARN_EXAMPLES_PER_KIND` of its files."""
    by_value: dict[str, list[pathlib.Path]] = {}
    for value, path in zip(values, paths):
        by_value.setdefault(value, []).append(path)
    parts = []
    for value, files in sorted(by_value.items(), key=lambda kv: -len(kv[1])):  # stable: ties in first-seen order
        shown = ", ".join(str(f) for f in files[:WARN_EXAMPLES_PER_KIND])
        parts.append(f"{len(files)} {value} (e.g. {shown}{', ...' if len(files) > WARN_EXAMPLES_PER_KIND else ''})")
    return "; ".join(parts)


def _warn_surprises(records: list[Record], loaded: list[_Loaded], where: str, image_size: int | None) -> None:
    """Log a warning, naming files, for what is harmless but maybe unintended in a split: images in
    different modes, images of different native sizes (resized to one size) and defect images with an
    empty mask. At most one warning of each kind per split."""
    paths = [r.image_path for r in records]
    modes = [x.mode for x in loaded]
    if len(set(modes)) > 1:
        log.warning(
            "Images of %s do not all have the same mode: %s. Every image is read as 8-bit RGB (grayscale on "
            "three channels, alpha ignored, 16-bit scaled to 8 bits), so this is harmless if intended; if not, "
            "convert the files to one mode.",
            where,
            _kinds(modes, paths),
        )
    sizes = [f"{w}x{h}" for h, w in (x.native for x in loaded)]
    if len(set(sizes)) > 1 and image_size is not None:
        log.warning(
            "Images of %s do not all have the same native size (WxH): %s. All are resized to %dx%d, which "
            "scales them differently (the aspect ratio is not kept); if not intended, crop or resize the "
            "files to one size.",
            where,
            _kinds(sizes, paths),
            image_size,
            image_size,
        )
    empty = [r for r, x in zip(records, loaded) if r.mask_path is not None and not x.mask.any()]
    if empty:
        shown = ", ".join(
            f"{r.image_path} (mask {r.mask_path.name if not r.more_masks else f'files in {r.mask_path.parent}'})"
            for r in empty[:WARN_EMPTY_MASKS]
        )
        more = f" and {len(empty) - WARN_EMPTY_MASKS} more" if len(empty) > WARN_EMPTY_MASKS else ""
        log.warning(
            "%d defect image(s) of %s have an all-zero mask: %s%s. They count as defective for image-level "
            "metrics but add no defective pixel to pixel-level ones; check that the masks are right.",
            len(empty),
            where,
            shown,
            more,
        )


def load_split(
    root: str | os.PathLike,
    category: str,
    split: str,
    image_size: int | None = 256,
    *,
    resize: str = "pil_bilinear",
    num_workers: int | None = None,
) -> Split:
    """Read one split of one category into memory.

    Args:
      root: folder holding one sub-folder per category.
      category: e.g. "bottle" or a built-in category.
      split: "train" or "test".
      image_size: side S of the square output images (aspect not preserved);
        None keeps the native size, which must then be the same for all images.
      resize: how images are resized (:mod:`jaxflow_ad.data.resize`):
        ``pil_bilinear`` (antialiased; PyramidFlow's official loader) or
        ``cv2_linear`` (OpenCV INTER_LINEAR; FAIR's official loader).
      num_workers: threads decoding images (default: min(8, CPUs)); PIL
        releases the GIL while decoding and resizing.

    Returns:
      A :class:`Split` with ``samples == {"image": uint8 [N, S, S, 3]}``,
      ``files`` listing every image and mask read and ``file_stats`` their
      sizes and times as read.

    Raises:
      DatasetError: on any missing, unreadable or inconsistent file, or an
        image whose pixels have no exact 8-bit reading (e.g. float TIFF).

    Images in different modes or native sizes and defect images with an empty
    mask are read, and logged as one warning of each kind per split on the
    ``jaxflow_ad`` logger, naming the files.
    """
    _check_load_args(image_size, resize)
    return _load_records(scan_split(root, category, split), category, split, image_size, resize, num_workers)


def _check_load_args(image_size: int | None, resize: str) -> None:
    """The checks of ``load_split``'s arguments, made before any folder is scanned."""
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
        raise DatasetError(f"image_size must be a positive int or None, got {image_size!r}.")
    check_resize(resize)


def _load_records(
    records: list[Record],
    category: str,
    split: str,
    image_size: int | None,
    resize: str,
    num_workers: int | None,
) -> Split:
    """The :class:`Split` of scanned ``records`` (non-empty), pixels read as
    :func:`load_split` documents; shared by the readers of other layouts."""
    workers = num_workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(records) > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            loaded = list(pool.map(lambda r: _load_one(r, image_size, resize), records))
    else:
        loaded = [_load_one(r, image_size, resize) for r in records]
    if image_size is None:
        first = loaded[0].image.shape
        for rec, a in zip(records, (x.image for x in loaded)):
            if a.shape != first:
                raise DatasetError(
                    f"Images of {category}/{split} differ in size: "
                    f"{rec.image_path} is {a.shape[1]}x{a.shape[0]}, "
                    f"{records[0].image_path} is {first[1]}x{first[0]}. Pass "
                    "image_size=S to resize them all to SxS."
                )
    _warn_surprises(records, loaded, f"{category}/{split}", image_size)
    # One uint8 copy of the pixels, as decoded: float32 would be 4x the memory.
    images = np.stack([x.image for x in loaded])
    files = []
    for r in records:
        files.append(str(r.image_path))
        files.extend(str(m) for m in r.mask_paths)
    return Split(
        samples={"image": images},
        masks=[x.mask for x in loaded],
        labels=np.array([r.label for r in records], dtype=np.int32),
        defect_types=[r.defect_type for r in records],
        paths=[str(r.image_path) for r in records],
        split=split,
        category=category,
        files=files,
        file_stats=[st for x in loaded for st in x.stats],
    )
