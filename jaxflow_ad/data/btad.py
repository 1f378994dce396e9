"""Reader for the BTAD (BeanTech) dataset (``data.layout=btad``).

The layout (``btad.zip`` extracts to ``BTech_Dataset_transformed/``; anomalib renames it ``BTech/``;
either is the root)::

    <root>/01/train/ok/0000.bmp
    <root>/01/test/ok/0000.bmp
    <root>/01/test/ko/0000.bmp
    <root>/01/ground_truth/ko/0000.png
    <root>/02/...                         the same, for the products 02 and 03

Normal images are in ``ok/`` folders, defective ones in ``test/ko/``; only these have masks, in
``ground_truth/ko/`` under **the image's stem with no suffix**. Images and masks are ``.bmp`` or
``.png``, mixed even between an image and its own mask (product 01: ``.bmp`` images with ``.png``
masks; 02: ``.png`` and ``.png``; 03: ``.bmp`` and ``.bmp``), so a mask is found by comparing stems
(``pathlib.Path.stem``), whatever either extension is. (anomalib instead strips the extension with
``str.rstrip``, a character-set strip that works only because the stems are numeric.) Extensions
are matched case-insensitively.

Masks are stored as 0/255 and binarised with ``> 0`` at full bit depth (a 3-channel mask counts a
pixel defective if any channel is nonzero); images are RGB. Pixels are decoded as for MVTec AD
(:mod:`~jaxflow_ad.data.imageio`).

Splits, as for MVTec AD: ``train`` is ``train/ok`` (label 0, defect type ``"good"``, so that
per-defect-type metrics name normal images as for every other layout); ``test`` is ``test/ok``
(label 0, ``"good"``) and ``test/ko`` (label 1, defect type ``"ko"``). Samples are keyed by
``(split, defect type, stem)``.

Anything else raises one :class:`~jaxflow_ad.data.mvtec.DatasetError` naming the file and the fix:
a folder other than ``ok/`` in ``train/`` or than ``ok/`` and ``ko/`` in ``test/``, a non-image
file, two files of one stem in a folder (``0001.bmp`` and ``0001.png``), a ``ko`` image without a
mask, a mask without an image, a folder other than ``ko/`` in ``ground_truth/``. Only hidden files
(names starting with ``.``) and loose files directly under the root or a product folder are ignored.
"""

from __future__ import annotations

import os
import pathlib

from .mvtec import (
    GOOD,
    SPLITS,
    DatasetError,
    Record,
    Split,
    _category_dir,
    _check_load_args,
    _image_files,
    _is_hidden,
    _load_records,
    _natural_key,
    list_categories,
)

__all__ = ["BTAD_CATEGORIES", "DEFECT", "NORMAL_DIR", "list_categories", "load_split", "scan_split"]

BTAD_CATEGORIES = ("01", "02", "03")
NORMAL_DIR = "ok"  # BTAD's folder of normal images, in train/ and test/
DEFECT = "ko"  # BTAD's folder of defective images, and their defect type
GROUND_TRUTH = "ground_truth"
_LAYOUT = "BTAD"


def _sub_folders(folder: pathlib.Path, allowed: tuple[str, ...], fix: str) -> list[str]:
    """The names of the non-hidden entries of ``folder``, each of which must be a folder named in ``allowed``."""
    names = []
    for p in sorted(folder.iterdir(), key=lambda p: _natural_key(p.name)):
        if _is_hidden(p):
            continue
        if not p.is_dir() or p.name not in allowed:
            kind = "folder" if p.is_dir() else "file"
            raise DatasetError(
                f"Unexpected {kind} {p}: in the {_LAYOUT} layout {folder} holds only the folder(s) "
                f"{', '.join(f'{a}/' for a in allowed)}. {fix}"
            )
        names.append(p.name)
    return names


def scan_split(root: str | os.PathLike, category: str, split: str) -> list[Record]:
    """All samples of one split of one BTAD product, sorted by (``ok`` before ``ko``, file name),
    checked for layout and image/mask pairing without reading any pixel.

    Raises:
      DatasetError: naming the file or folder, on anything missing or unexpected.
    """
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}.")
    cat_dir = _category_dir(root, category)
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise DatasetError(
            f"Missing folder {split_dir}: a product in the {_LAYOUT} layout holds train/{NORMAL_DIR}/, "
            f"test/{NORMAL_DIR}/, test/{DEFECT}/ and {GROUND_TRUTH}/{DEFECT}/. Check the root and category."
        )
    allowed = (NORMAL_DIR,) if split == "train" else (NORMAL_DIR, DEFECT)
    found = _sub_folders(
        split_dir,
        allowed,
        "Move it out of the dataset" + (f" (defective images belong in test/{DEFECT}/)." if split == "train" else "."),
    )
    records: list[Record] = []
    for name in allowed:
        if name not in found:
            continue
        images = _image_files(split_dir / name, f"{category}/{split}/{name}", layout=_LAYOUT)
        if name == NORMAL_DIR:
            records += [Record(split, GOOD, s, images[s], None) for s in sorted(images, key=_natural_key)]
            continue
        gt_root = cat_dir / GROUND_TRUTH
        gt_dir = gt_root / DEFECT
        if not gt_dir.is_dir():
            raise DatasetError(
                f"Missing mask folder {gt_dir} for the defective images in {split_dir / DEFECT}: every image "
                f"test/{DEFECT}/<stem>.bmp (or .png) needs the mask {GROUND_TRUTH}/{DEFECT}/<stem>.png (or .bmp)."
            )
        _sub_folders(gt_root, (DEFECT,), "Only defective images have masks; move it out of the dataset.")
        masks = _image_files(gt_dir, f"{category}/{GROUND_TRUTH}/{DEFECT}", layout=_LAYOUT)
        for stem in sorted(images, key=_natural_key):
            if stem not in masks:
                raise DatasetError(
                    f"No mask for the defective image {images[stem]}: expected {gt_dir / stem}.png or "
                    f"{gt_dir / stem}.bmp (the image's stem, no suffix). Add the mask or move the image out."
                )
            records.append(Record(split, DEFECT, stem, images[stem], masks[stem]))
        orphans = sorted(set(masks) - set(images), key=_natural_key)
        if orphans:
            raise DatasetError(
                f"Mask {masks[orphans[0]]} has no image {split_dir / DEFECT / orphans[0]}.bmp (or .png)"
                f"{f' ({len(orphans)} orphan masks in {gt_dir})' if len(orphans) > 1 else ''}. "
                "Add the image or remove the mask."
            )
    if not records:
        defective = f" and the defective ones in {split_dir / DEFECT}" if split == "test" else ""
        raise DatasetError(
            f"The {split} split of {category!r} is empty: no images under {split_dir}. Put the normal images "
            f"in {split_dir / NORMAL_DIR}{defective}."
        )
    return records


def load_split(
    root: str | os.PathLike,
    category: str,
    split: str,
    image_size: int | None = 256,
    *,
    resize: str = "pil_bilinear",
    num_workers: int | None = None,
) -> Split:
    """Read one split of one BTAD product into memory, as :func:`jaxflow_ad.data.load_split` does for MVTec AD.

    Args:
      root: the folder holding the products ``01``, ``02`` and ``03``.
      category: a product, e.g. ``"01"``.
      split: ``"train"`` (``train/ok``) or ``"test"`` (``test/ok`` and ``test/ko``).
      image_size, resize, num_workers: as for :func:`jaxflow_ad.data.load_split`.

    Returns:
      A :class:`~jaxflow_ad.data.mvtec.Split` with ``samples == {"image": uint8 [N, S, S, 3]}``,
      masks at the images' native size (all False for ``ok`` images), defect types ``"good"`` or
      ``"ko"``.

    Raises:
      DatasetError: on any missing, unreadable or inconsistent file.
    """
    _check_load_args(image_size, resize)
    return _load_records(scan_split(root, category, split), category, split, image_size, resize, num_workers)
