"""Reader for the MVTec LOCO AD dataset (``data.layout=mvtec_loco``).

The layout (Bergmann et al., IJCV 2022; the public archive)::

    <root>/<category>/train/good/000.png
    <root>/<category>/validation/good/000.png          (not read, see below)
    <root>/<category>/test/good/000.png
    <root>/<category>/test/logical_anomalies/000.png
    <root>/<category>/test/structural_anomalies/000.png
    <root>/<category>/ground_truth/logical_anomalies/000/000.png
    <root>/<category>/ground_truth/logical_anomalies/000/001.png   (one file per annotated defect)
    <root>/<category>/defects_config.json                            (not read)

Categories: breakfast_box, juice_bottle, pushpins, screw_bag, splicing_connectors.

Unlike MVTec AD, an anomalous image ``test/<type>/<NNN>.png`` has a **folder** of masks,
``ground_truth/<type>/<NNN>/``, with one or more files (``000.png``, ``001.png``, ...). A pixel is
defective if it is defective in any of them (the masks are OR-ed, as anomalib does). The mask
values are the per-defect ``pixel_value`` of ``defects_config.json``, not 255, so each mask is
binarised with ``> 0`` at its full bit depth. Images are RGB, not square, and differ in size between
categories.

Splits: ``train`` is ``train/good`` (label 0, ``"good"``). ``test`` is ``test/good`` (label 0,
``"good"``) and every other ``test/<type>/`` folder (label 1, defect type ``<type>``, in the release
``logical_anomalies`` or ``structural_anomalies``). The ``validation/good`` images (normal, meant
for choosing hyper-parameters or thresholds) are **not used**: they are neither added to train nor
read as a split of their own, and are not checked. Samples are keyed by ``(split, defect type, stem)``
since numbering restarts in every folder.

Everything unexpected raises one :class:`~jaxflow_ad.data.mvtec.DatasetError` naming the file or
folder and the fix: a folder other than ``good/`` in ``train/``, a loose file in ``test/`` or in a
``ground_truth/<type>/`` folder, a non-image file, an anomalous image without its mask folder, an
empty mask folder, a mask folder without an image, a ``ground_truth/<type>/`` without
``test/<type>/``, a mask whose size differs from its image's. Only hidden files and loose files
directly under the root or a category folder are ignored.
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

__all__ = ["LOCO_CATEGORIES", "LOCO_DEFECT_TYPES", "list_categories", "load_split", "scan_split"]

LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
LOCO_DEFECT_TYPES = ("logical_anomalies", "structural_anomalies")
GROUND_TRUTH = "ground_truth"
_LAYOUT = "MVTec LOCO AD"


def _folders(folder: pathlib.Path, fix: str) -> list[pathlib.Path]:
    """The non-hidden entries of ``folder``, naturally sorted, each of which must be a folder."""
    out = []
    for p in sorted(folder.iterdir(), key=lambda p: _natural_key(p.name)):
        if _is_hidden(p):
            continue
        if not p.is_dir():
            raise DatasetError(f"Unexpected file {p}: in the {_LAYOUT} layout {folder} holds only folders. {fix}")
        out.append(p)
    return out


def _mask_folders(gt_dir: pathlib.Path, test_dir: pathlib.Path, category: str) -> dict[str, tuple[pathlib.Path, ...]]:
    """The mask files of each image stem under ``ground_truth/<type>/``, each folder checked non-empty."""
    out: dict[str, tuple[pathlib.Path, ...]] = {}
    fix = f"Each anomalous image test/{test_dir.name}/<NNN>.png has its masks in {gt_dir.name}/<NNN>/000.png, ..."
    for sub in _folders(gt_dir, fix):
        files = _image_files(sub, f"{category}/{GROUND_TRUTH}/{gt_dir.name}/{sub.name}", layout=_LAYOUT)
        if not files:
            raise DatasetError(
                f"Empty mask folder {sub}: it must hold at least one mask (000.png, ...) of the image "
                f"{test_dir / sub.name}.png. Restore the masks or move the image and the folder out."
            )
        out[sub.name] = tuple(files[s] for s in sorted(files, key=_natural_key))
    return out


def scan_split(root: str | os.PathLike, category: str, split: str) -> list[Record]:
    """All samples of one split of one LOCO category, sorted by (defect type, file name), checked
    for layout and image/mask pairing without reading any pixel. ``validation/`` is not read.

    Raises:
      DatasetError: naming the file or folder, on anything missing or unexpected.
    """
    if split not in SPLITS:
        raise DatasetError(
            f"split must be one of {SPLITS}, got {split!r} (MVTec LOCO AD's validation/good is not read)."
        )
    cat_dir = _category_dir(root, category)
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise DatasetError(
            f"Missing folder {split_dir}: a category in the {_LAYOUT} layout needs {split}/good/ with images. "
            "Check the root and category."
        )
    gt_root = cat_dir / GROUND_TRUTH
    records: list[Record] = []
    for sub in _folders(split_dir, "Move it out of the dataset."):
        defect = sub.name
        if split == "train" and defect != GOOD:
            raise DatasetError(
                f"Unexpected folder {sub}: the training split holds only defect-free images in "
                f"{split_dir / GOOD}. Move {defect}/ under test/ (with its masks under {GROUND_TRUTH}/) or remove it."
            )
        images = _image_files(sub, f"{category}/{split}/{defect}", layout=_LAYOUT)
        if defect == GOOD:
            records += [Record(split, GOOD, s, images[s], None) for s in sorted(images, key=_natural_key)]
            continue
        gt_dir = gt_root / defect
        if not gt_dir.is_dir():
            raise DatasetError(
                f"Missing mask folder {gt_dir} for the anomalous images in {sub}. Every image "
                f"test/{defect}/<NNN>.png needs the folder {GROUND_TRUTH}/{defect}/<NNN>/ of its masks."
            )
        masks = _mask_folders(gt_dir, sub, category)
        for stem in sorted(images, key=_natural_key):
            if stem not in masks:
                raise DatasetError(
                    f"No masks for the anomalous image {images[stem]}: expected the folder {gt_dir / stem} "
                    "holding 000.png (and one more file per further defect). Add it or move the image out."
                )
            first, *more = masks[stem]
            records.append(Record(split, defect, stem, images[stem], first, tuple(more)))
        orphans = sorted(set(masks) - set(images), key=_natural_key)
        if orphans:
            raise DatasetError(
                f"Mask folder {gt_dir / orphans[0]} has no image {sub / orphans[0]}.png"
                f"{f' ({len(orphans)} such folders in {gt_dir})' if len(orphans) > 1 else ''}. "
                "Add the image or remove the folder."
            )
    if split == "test" and gt_root.is_dir():
        for gt_dir in _folders(gt_root, f"Masks are in {GROUND_TRUTH}/<type>/<NNN>/; move it out."):
            if gt_dir.name == GOOD or not (split_dir / gt_dir.name).is_dir():
                raise DatasetError(
                    f"Mask folder {gt_dir} has no image folder {split_dir / gt_dir.name}"
                    f"{' (good images have no masks)' if gt_dir.name == GOOD else ''}. "
                    "Add the images or remove the folder."
                )
    if not records:
        raise DatasetError(
            f"The {split} split of {category!r} is empty: no images under {split_dir}. Put images in "
            f"{split_dir / GOOD}{' and the anomaly folders' if split == 'test' else ''}."
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
    """Read one split of one MVTec LOCO AD category into memory, as :func:`jaxflow_ad.data.load_split`
    does for MVTec AD.

    Args:
      root: the folder holding the category folders.
      category: e.g. ``"juice_bottle"``.
      split: ``"train"`` (``train/good``) or ``"test"`` (every ``test/`` folder);
        ``validation/good`` is not used.
      image_size, resize, num_workers: as for :func:`jaxflow_ad.data.load_split`.

    Returns:
      A :class:`~jaxflow_ad.data.mvtec.Split` with ``samples == {"image": uint8 [N, S, S, 3]}``,
      masks at the images' native size (the OR of each image's mask folder, every value > 0
      defective; all False for good images), defect types ``"good"``, ``"logical_anomalies"``,
      ``"structural_anomalies"``; ``files`` lists every image and mask read.

    Raises:
      DatasetError: on any missing, unreadable or inconsistent file.
    """
    _check_load_args(image_size, resize)
    return _load_records(scan_split(root, category, split), category, split, image_size, resize, num_workers)
