"""Reader for any folder of normal and abnormal images (``data.layout=folder``).

The layout, with the default option values (every folder name is an option)::

    <root>/<category>/normal/*.png        normal images: train (and held-out test) images
    <root>/<category>/abnormal/*.png      anomalous images: test, label 1
    <root>/<category>/masks/*.png         optional (mask_dir="masks"): one mask per abnormal image
    <root>/<category>/normal_test/*.png   optional (normal_test_dir="normal_test"): normal test images

**Categories.** If ``<root>/<normal_dir>`` is a folder, the root is the one category and its name
is the root folder's name (``pathlib.Path(root).resolve().name``). Otherwise every non-hidden
sub-folder of the root that holds a ``<normal_dir>`` folder is a category, named after the
sub-folder. :func:`list_categories` takes the options for that reason: pass the same options to
:func:`list_categories`, :func:`scan_split` and :func:`load_split` (the engine passes the keys of
``config.data.folder``).

**Options** (keyword arguments; an unknown name or a wrong type raises
:class:`~jaxflow_ad.data.mvtec.DatasetError` naming ``data.folder.<name>``):

* ``normal_dir="normal"``: folder of normal images, relative to the category folder (may be nested,
  e.g. ``"images/ok"``; never absolute or with ``..``).
* ``abnormal_dir="abnormal"``: folder of anomalous images; they form the test split with label 1
  and the defect type of the folder's own name (``"abnormal"``, or ``"ko"`` for
  ``abnormal_dir="ko"``). It must exist; its name must not be ``"good"``.
* ``mask_dir=""``: folder of the abnormal images' masks; empty means the dataset has no masks: every
  split then has ``has_masks=False`` and all-False placeholder masks at each image's native size,
  and pixel-level metrics are not computed. When given, every abnormal image ``<stem>.<ext>`` has
  exactly one mask, ``<stem><mask_suffix>.<ext>`` or ``<stem>.<ext>`` (any image extension,
  paired by stem), and every mask belongs to an abnormal image. Masks are binarised with ``> 0``.
* ``mask_suffix="_mask"``: see ``mask_dir``.
* ``normal_test_dir=""``: folder of normal test images (label 0, ``"good"``). When given, all of
  ``normal_dir`` is the train split.
* ``test_fraction=0.2``: when ``normal_test_dir`` is empty, this fraction of the ``normal_dir``
  images (rounded, at least one if the fraction is > 0, never all of them) is held out of train for
  the test split, so that the test split has normal images. ``0`` keeps every normal image in train
  (the test split is then abnormal images only).
* ``split_seed=0``: which images are held out: those whose ``sha256("<split_seed>/<file name>")``
  sorts first. The choice is fixed by the file names and the seed (no random generator whose stream
  could change between NumPy versions), and it is the same for every call.
* ``extensions=IMAGE_EXTENSIONS``: the file suffixes that are images (compared lower case, e.g.
  ``[".png", ".jpg"]``).

The folders are not searched recursively: a sub-folder, a file with another extension or two files
of one stem in one folder raise a :class:`~jaxflow_ad.data.mvtec.DatasetError` naming the path, as
do a missing folder, a missing or orphan mask and two options naming the same folder. Only hidden
files (names starting with ``.``) are ignored. Samples are keyed by ``(split, defect type, stem)``,
unique because each defect type comes from one folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
import os
import pathlib
from collections.abc import Sequence

from .mvtec import (
    GOOD,
    IMAGE_EXTENSIONS,
    MASK_SUFFIX,
    SPLITS,
    DatasetError,
    Record,
    Split,
    _check_load_args,
    _find_mask,
    _image_files,
    _is_hidden,
    _load_records,
    _natural_key,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "FolderOptions",
    "folder_options",
    "held_out",
    "list_categories",
    "load_split",
    "scan_split",
]

_LAYOUT = "folder"
_DIR_OPTIONS = ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir")


@dataclasses.dataclass(frozen=True)
class FolderOptions:
    """The options of the ``folder`` layout, checked (see the module docstring)."""

    normal_dir: str = "normal"
    abnormal_dir: str = "abnormal"
    mask_dir: str = ""
    mask_suffix: str = MASK_SUFFIX
    normal_test_dir: str = ""
    test_fraction: float = 0.2
    split_seed: int = 0
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    @property
    def has_masks(self) -> bool:
        return bool(self.mask_dir)

    @property
    def defect_type(self) -> str:
        return pathlib.PurePosixPath(self.abnormal_dir).name


DEFAULT_OPTIONS = {f.name: f.default for f in dataclasses.fields(FolderOptions)}


def _bad(name: str, value, need: str) -> DatasetError:
    return DatasetError(f"config key data.folder.{name}={value!r} is invalid: {need}.")


def _rel_dir(name: str, value, required: bool) -> str:
    if not isinstance(value, str):
        raise _bad(name, value, "it must be a folder name (a string)")
    if not value:
        if required:
            raise _bad(name, value, "it must name a folder inside the category folder, e.g. 'normal'")
        return ""
    p = pathlib.PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise _bad(name, value, "it must be a folder relative to the category folder (no leading '/', no '..')")
    return p.as_posix()


def folder_options(**options) -> FolderOptions:
    """The options of the ``folder`` layout (the keys of ``config.data.folder``), checked.

    Raises:
      DatasetError: naming ``data.folder.<name>``, for an unknown name or a bad value.
    """
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise DatasetError(
            f"Unknown option(s) {', '.join(f'data.folder.{k}' for k in unknown)} of the folder layout; "
            f"the options are {', '.join(DEFAULT_OPTIONS)}."
        )
    o = {**DEFAULT_OPTIONS, **options}
    dirs = {name: _rel_dir(name, o[name], name in ("normal_dir", "abnormal_dir")) for name in _DIR_OPTIONS}
    given = [(name, d) for name, d in dirs.items() if d]
    for i, (a, da) in enumerate(given):
        for b, db in given[i + 1 :]:
            if da == db:
                raise _bad(b, o[b], f"data.folder.{a} names the same folder; every folder option names its own folder")
    if pathlib.PurePosixPath(dirs["abnormal_dir"]).name == GOOD:
        raise _bad("abnormal_dir", o["abnormal_dir"], f"its name is the defect type, which must not be {GOOD!r}")
    if not isinstance(o["mask_suffix"], str):
        raise _bad("mask_suffix", o["mask_suffix"], "it must be a string, e.g. '_mask' or ''")
    frac = o["test_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0 <= frac < 1:
        raise _bad("test_fraction", frac, "it must be a number in [0, 1), e.g. 0.2")
    seed = o["split_seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise _bad("split_seed", seed, "it must be an int")
    ext = o["extensions"]
    if isinstance(ext, str) or not isinstance(ext, Sequence) or not ext or not all(isinstance(e, str) for e in ext):
        raise _bad("extensions", ext, "it must be a non-empty list of file suffixes, e.g. ['.png', '.jpg']")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in ext)
    return FolderOptions(
        normal_dir=dirs["normal_dir"],
        abnormal_dir=dirs["abnormal_dir"],
        mask_dir=dirs["mask_dir"],
        mask_suffix=o["mask_suffix"],
        normal_test_dir=dirs["normal_test_dir"],
        test_fraction=float(frac),
        split_seed=int(seed),
        extensions=exts,
    )


def _root(root: str | os.PathLike) -> pathlib.Path:
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} does not exist or is not a folder. Pass the category folder (holding the "
            "normal and abnormal image folders) or a folder of such category folders."
        )
    return root


def list_categories(root: str | os.PathLike, **options) -> list[str]:
    """The categories under ``root``: ``[root's name]`` if ``root`` holds ``normal_dir``, else the
    sorted sub-folders of ``root`` that hold it.

    Raises:
      DatasetError: the root is missing, or an option is bad.
    """
    opts = folder_options(**options)
    root = _root(root)
    if (root / opts.normal_dir).is_dir():
        return [root.resolve().name]
    return sorted(
        (p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p) and (p / opts.normal_dir).is_dir()),
        key=_natural_key,
    )


def _category_dir(root: pathlib.Path, category: str, opts: FolderOptions) -> pathlib.Path:
    if (root / opts.normal_dir).is_dir():
        if category != root.resolve().name:
            raise DatasetError(
                f"Category {category!r} not found: the root {root} holds {opts.normal_dir}/ itself, so it is the "
                f"one category, named {root.resolve().name!r} after the folder. Use that category name."
            )
        return root
    cat_dir = root / category
    if not (cat_dir / opts.normal_dir).is_dir():
        found = list_categories(root, **dataclasses.asdict(opts))
        raise DatasetError(
            f"Category {category!r} not found: {cat_dir / opts.normal_dir} is not a folder (data.folder.normal_dir="
            f"{opts.normal_dir!r}). Categories under {root}: {', '.join(found) if found else 'none'}. Fix the "
            "category, the root or data.folder.normal_dir."
        )
    return cat_dir


def _images(cat_dir: pathlib.Path, rel: str, option: str, opts: FolderOptions) -> dict[str, pathlib.Path]:
    folder = cat_dir / rel
    if not folder.is_dir():
        raise DatasetError(
            f"Missing folder {folder} (data.folder.{option}={rel!r}). Create it with the images, or set "
            f"data.folder.{option} to the folder that holds them."
        )
    files = _image_files(folder, f"{cat_dir.name}/{rel}", layout=_LAYOUT, extensions=opts.extensions)
    if not files:
        raise DatasetError(
            f"The folder {folder} (data.folder.{option}) holds no image with an extension in "
            f"{', '.join(opts.extensions)}. Put the images there or fix data.folder.{option}."
        )
    return files


def held_out(names: Sequence[str], test_fraction: float, split_seed: int) -> set[str]:
    """The file names (of ``names``, the normal images) held out of train for the test split."""
    n = len(names)
    if test_fraction <= 0:
        return set()
    k = max(1, round(n * test_fraction))
    if k >= n:
        raise DatasetError(
            f"data.folder.test_fraction={test_fraction} would hold out {k} of the {n} normal image(s), leaving "
            "none to train on. Add normal images, lower test_fraction or set data.folder.normal_test_dir."
        )
    rank = sorted(names, key=lambda s: (hashlib.sha256(f"{split_seed}/{s}".encode()).hexdigest(), s))
    return set(rank[:k])


def scan_split(root: str | os.PathLike, category: str, split: str, **options) -> list[Record]:
    """All samples of one split of a category, checked for layout and image/mask pairing without
    reading any pixel: train (normal images not held out) or test (normal test images, ``"good"``,
    then abnormal ones), each sorted by file name.

    Raises:
      DatasetError: naming the file, folder or option, on anything missing or unexpected.
    """
    opts = folder_options(**options)
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}.")
    cat_dir = _category_dir(_root(root), category, opts)
    normal = _images(cat_dir, opts.normal_dir, "normal_dir", opts)
    names = [p.name for p in normal.values()]
    held = set() if opts.normal_test_dir else held_out(names, opts.test_fraction, opts.split_seed)
    abnormal = _images(cat_dir, opts.abnormal_dir, "abnormal_dir", opts)  # checked for both splits
    masks = _pair_masks(cat_dir, abnormal, opts) if opts.mask_dir else {}
    order = lambda files: sorted(files, key=_natural_key)
    if split == "train":
        return [Record(split, GOOD, s, normal[s], None) for s in order(normal) if normal[s].name not in held]
    if opts.normal_test_dir:
        normal_test = _images(cat_dir, opts.normal_test_dir, "normal_test_dir", opts)
    else:
        normal_test = {s: p for s, p in normal.items() if p.name in held}
    records = [Record(split, GOOD, s, normal_test[s], None) for s in order(normal_test)]
    defect = opts.defect_type
    records += [Record(split, defect, s, abnormal[s], masks.get(s)) for s in order(abnormal)]
    return records


def _pair_masks(
    cat_dir: pathlib.Path, abnormal: dict[str, pathlib.Path], opts: FolderOptions
) -> dict[str, pathlib.Path]:
    """The one mask of each abnormal image (by stem), every mask used once."""
    mask_dir = cat_dir / opts.mask_dir
    if not mask_dir.is_dir():
        raise DatasetError(
            f"Missing mask folder {mask_dir} (data.folder.mask_dir={opts.mask_dir!r}). Create it with one mask "
            "per abnormal image, or set data.folder.mask_dir to '' if the dataset has no masks."
        )
    masks = _image_files(mask_dir, f"{cat_dir.name}/{opts.mask_dir}", layout=_LAYOUT, extensions=opts.extensions)
    out: dict[str, pathlib.Path] = {}
    for stem in sorted(abnormal, key=_natural_key):
        mask = _find_mask(mask_dir, stem, masks, opts.mask_suffix)
        if mask is None:
            raise DatasetError(
                f"No mask for the abnormal image {abnormal[stem]}: expected {mask_dir / stem}{opts.mask_suffix}.png "
                f"or {mask_dir / stem}.png (data.folder.mask_dir={opts.mask_dir!r}, mask_suffix="
                f"{opts.mask_suffix!r}). Add the mask, or set data.folder.mask_dir to '' if there are no masks."
            )
        out[stem] = mask
    used = {m.stem for m in out.values()}
    orphans = sorted(set(masks) - used, key=_natural_key)
    if orphans:
        raise DatasetError(
            f"Mask {masks[orphans[0]]} belongs to no image of {cat_dir / opts.abnormal_dir}"
            f"{f' ({len(orphans)} such masks in {mask_dir})' if len(orphans) > 1 else ''}: a mask is named "
            f"<stem>{opts.mask_suffix}.<ext> or <stem>.<ext> after its abnormal image. Rename or remove it."
        )
    return out


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
    """Read one split of a category into memory, as :func:`jaxflow_ad.data.load_split` does for MVTec AD.

    Args:
      root: a category folder, or a folder of category folders (see the module docstring).
      category: the category's name (the root's own name when the root is the category).
      split: ``"train"`` or ``"test"``.
      image_size, resize, num_workers: as for :func:`jaxflow_ad.data.load_split`.
      **options: the ``folder`` layout's options (``config.data.folder``), see the module docstring.

    Returns:
      A :class:`~jaxflow_ad.data.mvtec.Split` with ``samples == {"image": uint8 [N, S, S, 3]}``,
      defect types ``"good"`` or the name of ``abnormal_dir``, and ``has_masks`` False unless
      ``mask_dir`` is given (the masks are then all-False placeholders).

    Raises:
      DatasetError: on any missing, unreadable or inconsistent file, or a bad option.
    """
    opts = folder_options(**options)
    _check_load_args(image_size, resize)
    records = scan_split(root, category, split, **dataclasses.asdict(opts))
    s = _load_records(records, category, split, image_size, resize, num_workers)
    return dataclasses.replace(s, has_masks=opts.has_masks)
