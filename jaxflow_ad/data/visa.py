"""Reader for the VisA dataset in its raw layout (``data.layout=visa``).

The layout (``VisA_20220922.tar``, Zou et al., ECCV 2022)::

    <root>/split_csv/1cls.csv
    <root>/<category>/Data/Images/Normal/0000.JPG
    <root>/<category>/Data/Images/Anomaly/000.JPG
    <root>/<category>/Data/Masks/Anomaly/000.png
    <root>/<category>/image_anno.csv              (not read)

The split is the one-class split file ``split_csv/1cls.csv``:

* header ``object,split,label,image,mask``; **CRLF line endings** (read with :mod:`csv` and
  ``newline=""``, so no ``"\\r"`` stays in the last column);
* ``object`` is the category, ``split`` is ``train`` or ``test``, ``label`` is ``normal`` or
  ``anomaly``; ``image`` and ``mask`` are paths relative to the root, e.g.
  ``candle/Data/Images/Normal/0836.JPG`` and ``candle/Data/Masks/Anomaly/000.png``; ``mask`` is
  empty for normal rows;
* images are ``.JPG`` (upper case) and the paths are used exactly as written; masks are ``.png``.

Categories are the ``object`` values in the file (the release has candle, capsules, cashew,
chewinggum, fryum, macaroni1, macaroni2, pcb1 ... pcb4, pipe_fryum). The train split is the
category's ``train`` rows (all normal in ``1cls.csv``), label 0, defect type ``"good"``; the test
split is its ``test`` rows: normal ones as label 0, ``"good"``, anomalous ones as label 1, defect
type ``"anomaly"`` (the split file does not name defect classes). The ``2cls_*.csv`` splits put
anomalies in train and are not read.

Masks store **defect-class ids** (0 background, 1..N), not 255: they are binarised with ``> 0``.
Image sizes differ between categories (about 1.2-1.6k px wide); nothing assumes a size.

In five categories the normal and the anomalous images are both numbered from ``000``, so
``Normal/000.JPG`` and ``Anomaly/000.JPG`` share the stem ``000``: samples are keyed by
``(split, defect type, stem)``, which stays unique because the two differ in defect type, and
``Split.paths`` are the full paths.

Every image of VisA is in ``1cls.csv`` (10,821 rows). Scanning a category checks, without reading
pixels, that the file and the folders agree and raises one
:class:`~jaxflow_ad.data.mvtec.DatasetError` naming the file, the CSV line and the fix for: a
missing or malformed header, a wrong ``split`` or ``label`` value, a normal row with a mask, an
anomaly row without one, an anomalous ``train`` row, an absolute path, a row naming a file that
does not exist, an image or mask named by two rows, and an image or mask file in a folder the
category's rows use that no row names (a stray file). Hidden files are ignored.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from collections.abc import Iterator

from .mvtec import (
    GOOD,
    SPLITS,
    DatasetError,
    Record,
    Split,
    _check_load_args,
    _is_hidden,
    _load_records,
    _natural_key,
    stat_file,
)

__all__ = ["DEFECT", "SPLIT_FILE", "VISA_CATEGORIES", "Scan", "list_categories", "load_split", "scan_split"]

SPLIT_FILE = pathlib.PurePosixPath("split_csv/1cls.csv")
COLUMNS = ("object", "split", "label", "image", "mask")
DEFECT = "anomaly"  # defect type of every anomalous image (the split file has no finer class)
LABELS = {"normal": GOOD, "anomaly": DEFECT}
VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)


@dataclasses.dataclass(frozen=True)
class _Row:
    line: int
    category: str
    split: str
    defect_type: str
    image: pathlib.Path
    mask: pathlib.Path | None


@dataclasses.dataclass(frozen=True)
class Scan:
    """One split of one VisA category, found in the split file and on disk, before any pixel is read.

    Attributes:
      records: the samples, sorted by (defect type, image path).
      split_file: the ``split_csv/1cls.csv`` read.
      split_stat: ``(size, st_mtime_ns)`` of ``split_file`` as it was read.
    """

    records: list[Record]
    split_file: pathlib.Path
    split_stat: tuple[int, int]


def _root(root: str | os.PathLike) -> pathlib.Path:
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} does not exist or is not a folder. Pass the folder where VisA was "
            f"extracted (the one holding {SPLIT_FILE} and one folder per category)."
        )
    return root


def _lines(path: pathlib.Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of the non-blank CSV records of ``path`` (CRLF or LF)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for fields in reader:
                if any(x.strip() for x in fields):
                    yield reader.line_num, fields
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(
            f"Cannot read {path}: {type(e).__name__}: {e}. It must be VisA's comma-separated split file; "
            "replace it with the one from the release."
        ) from e


def _path(root: pathlib.Path, rel: str, where: str, column: str) -> pathlib.Path:
    """``root / rel`` for a path column, which must be relative and stay inside the root."""
    posix = pathlib.PurePosixPath(rel)
    if posix.is_absolute() or ".." in posix.parts or not posix.parts:
        raise DatasetError(
            f"{where}: the {column} path {rel!r} must be relative to the root {root} and stay inside it "
            f"(e.g. candle/Data/Images/Normal/0000.JPG). Fix the row."
        )
    return root.joinpath(*posix.parts)


def _check_exists(path: pathlib.Path, where: str, column: str) -> None:
    if not path.is_file():
        raise DatasetError(
            f"{where} names the {column} {path}, which does not exist (paths are case-sensitive: VisA's "
            "images are .JPG, its masks .png). Restore the file or fix the row."
        )


def _read_split_file(root: pathlib.Path) -> tuple[list[_Row], pathlib.Path, tuple[int, int]]:
    """Every row of ``1cls.csv``, each checked on its own (whether its files exist is left to
    :func:`scan_split`, for its category only), and the file's path and ``(size, mtime_ns)``."""
    path = root.joinpath(*SPLIT_FILE.parts)
    if not path.is_file():
        raise DatasetError(
            f"Missing split file {path}: the raw VisA layout is read through {SPLIT_FILE} (header "
            f"{','.join(COLUMNS)}). Restore it from the release (split_csv/ of VisA_20220922.tar)."
        )
    stat = stat_file(path, "VisA")
    lines = _lines(path)
    line, header = next(lines, (1, []))
    names = [h.strip().lower() for h in header]
    if sorted(names) != sorted(COLUMNS):
        raise DatasetError(
            f"{path} line {line}: the header is {','.join(header)!r}; it must name the columns "
            f"{','.join(COLUMNS)}. Use the split file of the release."
        )
    col = {name: names.index(name) for name in COLUMNS}
    rows: list[_Row] = []
    for n, fields in lines:
        where = f"{path} line {n}"
        if len(fields) != len(COLUMNS):
            raise DatasetError(
                f"{where} has {len(fields)} field(s): {fields!r}; every row has the {len(COLUMNS)} columns "
                f"{','.join(COLUMNS)} (mask empty for normal rows). Fix the row."
            )
        get = {name: fields[i].strip() for name, i in col.items()}
        if get["split"] not in SPLITS:
            raise DatasetError(f"{where}: split is {get['split']!r}; it must be one of {SPLITS}. Fix the row.")
        if get["label"] not in LABELS:
            raise DatasetError(
                f"{where}: label is {get['label']!r}; it must be one of {sorted(LABELS)}. Fix the row "
                f"(the per-defect names are in <category>/image_anno.csv, which is not read)."
            )
        defect = LABELS[get["label"]]
        if not get["object"]:
            raise DatasetError(f"{where}: the object (category) column is empty. Fix the row.")
        if get["split"] == "train" and defect != GOOD:
            raise DatasetError(
                f"{where}: an anomalous image in the train split; the train split holds only normal images. "
                f"{path} must be the one-class split 1cls.csv of the release (the 2cls splits are not supported)."
            )
        image = _path(root, get["image"], where, "image")
        if defect == GOOD and get["mask"]:
            raise DatasetError(
                f"{where}: the normal image {image} has the mask {get['mask']!r}; normal rows have an empty "
                "mask column. Set the label to anomaly or clear the mask."
            )
        if defect != GOOD and not get["mask"]:
            raise DatasetError(
                f"{where}: the anomalous image {image} has no mask (empty mask column). Name its mask, e.g. "
                f"{get['object']}/Data/Masks/Anomaly/{image.stem}.png."
            )
        mask = _path(root, get["mask"], where, "mask") if get["mask"] else None
        rows.append(_Row(n, get["object"], get["split"], defect, image, mask))
    return rows, path, stat


def list_categories(root: str | os.PathLike) -> list[str]:
    """The sorted ``object`` values of ``split_csv/1cls.csv`` (whether their files exist is checked by
    :func:`scan_split`).

    Raises:
      DatasetError: the root or the split file is missing, or a row is malformed.
    """
    rows, _, _ = _read_split_file(_root(root))
    return sorted({r.category for r in rows})


def _check_files(rows: list[_Row], split_file: pathlib.Path) -> None:
    """Every file the rows name exists and is named by one row only, and every file in the folders
    the rows use is named by a row."""
    named: dict[pathlib.Path, _Row] = {}
    for r in rows:
        for kind, p in (("image", r.image), ("mask", r.mask)):
            if p is None:
                continue
            _check_exists(p, f"{split_file} line {r.line}", kind)
            if p in named:
                raise DatasetError(
                    f"{split_file} line {r.line} names the {kind} {p}, which line {named[p].line} names too. "
                    "Every image and mask belongs to one row; remove the duplicate."
                )
            named[p] = r
    for folder in sorted({p.parent for p in named}):
        for p in sorted(folder.iterdir(), key=lambda p: _natural_key(p.name)):
            if not _is_hidden(p) and p not in named:
                raise DatasetError(
                    f"Unexpected {'folder' if p.is_dir() else 'file'} {p}: no row of {split_file} names it, and "
                    f"every VisA image and mask has one. Add a row or move it out of {folder}."
                )


def scan_split(root: str | os.PathLike, category: str, split: str) -> Scan:
    """One split of one VisA category from ``split_csv/1cls.csv``, checked against the folders; no pixel is read.

    Raises:
      DatasetError: naming the file (and the CSV line), on anything missing or inconsistent.
    """
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}.")
    root = _root(root)
    rows, split_file, stat = _read_split_file(root)
    mine = [r for r in rows if r.category == category]
    if not mine:
        found = sorted({r.category for r in rows})
        raise DatasetError(
            f"Category {category!r} not found: no row of {split_file} has object={category!r}. Categories "
            f"there: {', '.join(found) if found else 'none'}. Fix the category name or the root."
        )
    _check_files(mine, split_file)
    records = [
        Record(split, r.defect_type, r.image.stem, r.image, r.mask)
        for r in sorted(mine, key=lambda r: (r.defect_type != GOOD, _natural_key(str(r.image))))
        if r.split == split
    ]
    if not records:
        raise DatasetError(
            f"The {split} split of {category!r} is empty: no row of {split_file} has object={category!r} and "
            f"split={split}. Check the split file."
        )
    keys: dict[tuple[str, str, str], Record] = {}
    for rec in records:
        if rec.key in keys:
            raise DatasetError(
                f"The {split} images {keys[rec.key].image_path} and {rec.image_path} of {category!r} have the same "
                f"stem and label in {split_file}, so they cannot be told apart by (split, label, stem). Rename one."
            )
        keys[rec.key] = rec
    return Scan(records, split_file, stat)


def load_split(
    root: str | os.PathLike,
    category: str,
    split: str,
    image_size: int | None = 256,
    *,
    resize: str = "pil_bilinear",
    num_workers: int | None = None,
) -> Split:
    """Read one split of one VisA category into memory, as :func:`jaxflow_ad.data.load_split` does for MVTec AD.

    Args:
      root: the folder holding ``split_csv/`` and the category folders.
      category: e.g. ``"candle"``.
      split: ``"train"`` or ``"test"``, as ``1cls.csv`` assigns the images.
      image_size, resize, num_workers: as for :func:`jaxflow_ad.data.load_split`.

    Returns:
      A :class:`~jaxflow_ad.data.mvtec.Split` with ``samples == {"image": uint8 [N, S, S, 3]}``, masks
      (class ids > 0) at the images' native size, all False for normal images, defect types ``"good"``
      or ``"anomaly"``; ``files`` lists ``1cls.csv`` and every image and mask read.

    Raises:
      DatasetError: on any missing, unreadable or inconsistent file.
    """
    _check_load_args(image_size, resize)
    scan = scan_split(root, category, split)
    s = _load_records(scan.records, category, split, image_size, resize, num_workers)
    return dataclasses.replace(s, files=[str(scan.split_file), *s.files], file_stats=[scan.split_stat, *s.file_stats])
