"""Reader for the DAGM 2007 dataset (``data.layout=dagm``).

The layout (the public per-class archives)::

    <root>/Class1/Train/0001.PNG
    <root>/Class1/Train/Label/Labels.txt
    <root>/Class1/Train/Label/0002_label.PNG
    <root>/Class1/Test/...                       the same as Train/
    ...
    <root>/Class10/...

``Labels.txt`` is tab-separated. Its first line is a header or a count and is
skipped (a UTF-8 byte order mark is allowed); every other line is one image:
``index, defective flag (0/1), image file name, 0, label file name`` where the
last column is ``0`` or absent for normal images. Images are 8-bit grayscale
and are read as RGB with three equal channels; masks (coarse ellipses, 0/255)
are binarised with ``> 0``. Pixels are decoded as for MVTec AD
(:mod:`~jaxflow_ad.data.imageio`), so a re-saved 16-bit grayscale image is
scaled to 8 bits (65535 -> 255), not clipped.

What this reader does beyond reading files:

* ``Train/`` holds defective images too (flag 1). The train split of this
  library holds only normal images, so the defective Train rows are left out;
  :func:`scan_split` returns them (``Scan.excluded``) and logs their count.
* The test split holds every ``Test/`` image: label 1 and defect type
  ``"defect"`` for flag 1 (with its mask), label 0 and ``"good"`` (as in
  MVTec AD, so per-defect-kind metrics work) for flag 0.
* A class archive often extracts to ``ClassN/ClassN/Train``: the class folder
  is searched one level deeper.
* Masks named ``Label/<stem>.PNG`` (the Kaggle re-upload) are accepted as well
  as ``Label/<stem>_label.PNG``. Extensions, and the names ``Train``, ``Test``,
  ``Label`` and ``Labels.txt``, are matched case-insensitively.

``Labels.txt``, the image files and the mask files must agree: a row naming a
missing image, an image without a row, a defective row without a mask, a mask
of no defective row, a flag other than 0/1 or a mask whose size differs from
its image each raise one :class:`~jaxflow_ad.data.mvtec.DatasetError` naming
the file and the fix. Nothing is skipped silently; only hidden files (names
starting with ``.``) and blank lines of ``Labels.txt`` are ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re

from .mvtec import (
    GOOD,
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
    stat_file,
)

__all__ = ["DEFECT", "SPLIT_FOLDERS", "Scan", "list_categories", "load_split", "scan_split"]

log = logging.getLogger(__name__)

# The library's split names and DAGM's folders for them.
SPLIT_FOLDERS = {"train": "Train", "test": "Test"}
LABEL_FOLDER = "Label"
LABELS_FILE = "Labels.txt"
LABEL_SUFFIX = "_label"
DEFECT = "defect"  # defect type of every defective image (DAGM has one kind per class)
_CLASS_NAME = re.compile(r"Class\d+")
_LAYOUT = "DAGM 2007"


@dataclasses.dataclass(frozen=True)
class Scan:
    """One split of one DAGM class, found on disk and checked, before any pixel is read.

    Attributes:
      records: the samples of the split, sorted by file name.
      excluded: the defective ``Train/`` images (flag 1) left out of the train
        split, sorted by file name; always empty for the test split.
      folder: the ``Train/`` or ``Test/`` folder read.
      labels_file: its ``Label/Labels.txt``.
      labels_stat: ``(size, st_mtime_ns)`` of ``labels_file`` as it was read.
    """

    records: list[Record]
    excluded: list[pathlib.Path]
    folder: pathlib.Path
    labels_file: pathlib.Path
    labels_stat: tuple[int, int]


def _child(parent: pathlib.Path, name: str, *, folder: bool) -> pathlib.Path | None:
    """``parent/name`` (a folder or a file), else the one entry whose name equals ``name`` ignoring case."""
    exact = parent / name
    if exact.is_dir() if folder else exact.is_file():
        return exact
    if not parent.is_dir():
        return None
    found = sorted(
        p
        for p in parent.iterdir()
        if p.name.lower() == name.lower() and not _is_hidden(p) and (p.is_dir() if folder else p.is_file())
    )
    if len(found) > 1:
        raise DatasetError(
            f"{len(found)} entries in {parent} are named {name!r} ignoring case: "
            f"{', '.join(p.name for p in found)}. Keep only one."
        )
    return found[0] if found else None


def _has_splits(folder: pathlib.Path) -> bool:
    return folder.is_dir() and any(_child(folder, f, folder=True) for f in SPLIT_FOLDERS.values())


def list_categories(root: str | os.PathLike) -> list[str]:
    """The ``Class<N>`` folders under ``root``, sorted by N (Class2 before Class10).

    Every such folder is listed, even one that holds no ``Train/`` or
    ``Test/`` (loading it then raises, naming what is missing), so that a
    broken extraction is not skipped silently.
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} does not exist or is not a folder. Pass the "
            "folder that holds the DAGM 2007 class folders Class1 ... Class10."
        )
    names = [p.name for p in root.iterdir() if p.is_dir() and _CLASS_NAME.fullmatch(p.name)]
    return sorted(names, key=_natural_key)


def _class_dir(root: str | os.PathLike, category: str) -> pathlib.Path:
    """The folder holding ``Train/`` and ``Test/`` of ``category``: ``root/category``
    or, for an archive extracted into a folder of its own name, ``root/category/category``."""
    root = pathlib.Path(root).expanduser()
    found = list_categories(root)  # raises for a missing root
    outer = root / category
    if not outer.is_dir():
        raise DatasetError(
            f"Category {category!r} not found: {outer} is not a folder. "
            f"DAGM classes under {root}: {', '.join(found) if found else 'none'}. "
            "Fix the category name or the root (the folder that holds Class1 ... Class10)."
        )
    inner = outer / category
    if _has_splits(outer):
        if _has_splits(inner):
            raise DatasetError(
                f"Both {outer} and {inner} hold Train/ or Test/ folders: the class is there twice. "
                f"Keep one copy (move the contents of {inner} up or delete it)."
            )
        return outer
    if _has_splits(inner):
        return inner
    raise DatasetError(
        f"No Train/ or Test/ folder in {outer} (nor in {inner}, where a class archive sometimes "
        f"extracts to). A DAGM class folder holds Train/ and Test/, each with Label/{LABELS_FILE}; "
        "re-extract the class archive there."
    )


def _read_labels(path: pathlib.Path, what: str) -> tuple[list[tuple[int, list[str]]], tuple[int, int]]:
    """The rows of ``Labels.txt`` after its header line, as ``(line number, stripped fields)``,
    blank lines left out, and the file's ``(size, mtime_ns)`` taken before reading."""
    stat = stat_file(path, what)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(
            f"Cannot read {path}: {type(e).__name__}: {e}. It must be a tab-separated text file; "
            "replace it with a good copy (re-extract the class archive)."
        ) from e
    lines = text.splitlines()
    rows = [(n, [f.strip() for f in line.split("\t")]) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    return rows, stat


def scan_split(root: str | os.PathLike, category: str, split: str) -> Scan:
    """One split of one DAGM class, checked for layout and for agreement of
    ``Labels.txt``, images and masks; no pixel is read.

    ``split`` is ``"train"`` (``Train/``, normal images only: the defective
    ones are returned in ``Scan.excluded`` and their count is logged at INFO)
    or ``"test"`` (every ``Test/`` image).

    Raises:
      DatasetError: naming the file, on anything missing or inconsistent.
    """
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}.")
    cls_dir = _class_dir(root, category)
    folder_name = SPLIT_FOLDERS[split]
    folder = _child(cls_dir, folder_name, folder=True)
    if folder is None:
        raise DatasetError(
            f"Missing folder {cls_dir / folder_name}: a DAGM class holds Train/ and Test/, each with "
            f"images and Label/{LABELS_FILE}. Re-extract the class archive."
        )
    label_dir = _child(folder, LABEL_FOLDER, folder=True)
    labels_file = None if label_dir is None else _child(label_dir, LABELS_FILE, folder=False)
    if label_dir is None or labels_file is None:
        raise DatasetError(
            f"Missing {folder / LABEL_FOLDER / LABELS_FILE}: it says which images of {folder} are "
            "defective (and names their masks). Restore it from the class archive."
        )
    what = f"{category}/{folder.name}"
    images = _image_files(folder, what, skip=(label_dir.name,), layout=_LAYOUT)
    masks = _image_files(label_dir, f"{what}/{label_dir.name}", skip=(labels_file.name,), layout=_LAYOUT)
    images_by_name = {p.name.lower(): p for p in images.values()}
    masks_by_name = {p.name.lower(): p for p in masks.values()}
    rows, labels_stat = _read_labels(labels_file, what)

    where = lambda n: f"{labels_file} line {n}"
    seen: dict[str, int] = {}  # image stem -> line
    mask_of: dict[str, str] = {}  # mask stem -> image stem
    records: list[Record] = []
    excluded: list[pathlib.Path] = []
    for n, fields in rows:
        if len(fields) < 3:
            raise DatasetError(
                f"{where(n)} has {len(fields)} column(s): {fields!r}. Rows are tab-separated: index, "
                "defective flag 0/1, image file name, 0, label file name (or 0). Fix the row."
            )
        flag, name = fields[1], fields[2]
        if flag not in ("0", "1"):
            raise DatasetError(
                f"{where(n)}: the defective flag of {name!r} is {flag!r}; it must be 0 (normal) or 1 "
                "(defective). Fix the row."
            )
        image = images_by_name.get(name.lower())
        if image is None:
            raise DatasetError(
                f"{where(n)} names the image {name!r}, but {folder / name} does not exist. "
                "Restore the image or remove the row."
            )
        if image.stem in seen:
            raise DatasetError(f"{where(n)} names {image.name} again (first on line {seen[image.stem]}). Keep one row.")
        seen[image.stem] = n
        label_name = fields[4] if len(fields) > 4 and fields[4] not in ("", "0") else None
        named = None if label_name is None else masks_by_name.get(label_name.lower())
        by_stem = _find_mask(label_dir, image.stem, masks, LABEL_SUFFIX)
        mask = named or by_stem
        if flag == "0":
            if label_name is not None:
                raise DatasetError(
                    f"{where(n)} flags {image} as normal (0) but names the label file {label_name!r}. "
                    "Set the flag to 1 if the image is defective, else write 0 in the label column."
                )
            if mask is not None:
                raise DatasetError(
                    f"Mask {mask} exists but {where(n)} flags its image {image} as normal (0). "
                    "Set the flag to 1 (and name the mask in the last column) if the image is "
                    "defective, else remove the mask."
                )
            records.append(Record(split, GOOD, image.stem, image, None))
            continue
        if mask is None:
            expected = label_dir / (label_name or f"{image.stem}{LABEL_SUFFIX}.PNG")
            raise DatasetError(
                f"No mask for the defective image {image} ({where(n)} flags it 1): expected {expected} "
                f"(or {label_dir / image.stem}.PNG). Add the mask, or set the flag to 0 if the image is normal."
            )
        if mask.stem in mask_of:
            raise DatasetError(
                f"Mask {mask} belongs to two defective images, {mask_of[mask.stem]} and {image.stem} "
                f"({where(n)}). Give each its own mask."
            )
        mask_of[mask.stem] = image.stem
        if split == "train":
            excluded.append(image)
        else:
            records.append(Record(split, DEFECT, image.stem, image, mask))

    unlisted = sorted(set(images) - set(seen), key=_natural_key)
    if unlisted:
        raise DatasetError(
            f"Image {images[unlisted[0]]} has no row in {labels_file}"
            f"{f' ({len(unlisted)} images without a row)' if len(unlisted) > 1 else ''}; the first line of "
            f"{LABELS_FILE} is a header and is skipped. Add a row or remove the image."
        )
    orphans = sorted(set(masks) - set(mask_of), key=_natural_key)
    if orphans:
        raise DatasetError(
            f"Mask {masks[orphans[0]]} is the mask of no defective row of {labels_file}"
            f"{f' ({len(orphans)} such masks)' if len(orphans) > 1 else ''}. "
            "Remove the mask or fix the row (flag 1 and the label file name)."
        )
    records.sort(key=lambda r: _natural_key(r.image_path.name))
    excluded.sort(key=lambda p: _natural_key(p.name))
    if split == "train":
        log.info(
            "DAGM %s/%s: %d of %d images in %s are defective (flag 1 in %s) and are left out of the "
            "train split, which keeps the %d normal ones.",
            category,
            split,
            len(excluded),
            len(excluded) + len(records),
            folder,
            labels_file.name,
            len(records),
        )
    if not records:
        raise DatasetError(
            f"The {split} split of {category!r} is empty: {labels_file} lists no "
            f"{'normal ' if split == 'train' else ''}images of {folder}. Check the folder and {LABELS_FILE}."
        )
    return Scan(records, excluded, folder, labels_file, labels_stat)


def load_split(
    root: str | os.PathLike,
    category: str,
    split: str,
    image_size: int | None = 256,
    *,
    resize: str = "pil_bilinear",
    num_workers: int | None = None,
) -> Split:
    """Read one split of one DAGM class into memory, as :func:`jaxflow_ad.data.load_split` does for MVTec AD.

    Args:
      root: the folder holding Class1 ... Class10.
      category: e.g. ``"Class1"``.
      split: ``"train"`` (the normal images of ``Train/``) or ``"test"``
        (every image of ``Test/``).
      image_size, resize, num_workers: as for :func:`jaxflow_ad.data.load_split`.

    Returns:
      A :class:`~jaxflow_ad.data.mvtec.Split` with ``samples == {"image":
      uint8 [N, S, S, 3]}`` (grayscale as three equal channels), masks at
      the images' native size (all False for normal images), defect types ``"good"`` or
      ``"defect"``; ``files`` lists ``Labels.txt`` and every image and mask read.

    Raises:
      DatasetError: on any missing, unreadable or inconsistent file.

    As for MVTec AD, images in different modes or native sizes and defective
    images with an empty mask are logged as warnings on the ``jaxflow_ad``
    logger, naming the files.
    """
    _check_load_args(image_size, resize)
    scan = scan_split(root, category, split)
    s = _load_records(scan.records, category, split, image_size, resize, num_workers)
    return dataclasses.replace(s, files=[str(scan.labels_file), *s.files], file_stats=[scan.labels_stat, *s.file_stats])
