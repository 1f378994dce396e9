"""Tiny folders in the MVTec AD layout, written into a test's tmp_path."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

# Native size of fixture images: deliberately not square, so that H/W mix-ups fail.
H, W = 20, 24


def _image(rng: np.random.Generator, gray: bool = False) -> Image.Image:
    if gray:
        return Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8), "L")
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "RGB")


def _mask(index: int, value: int = 255) -> Image.Image:
    m = np.zeros((H, W), np.uint8)
    m[2 + index : 8 + index, 3 : 10 + index] = value
    return Image.fromarray(m, "L")


def mask_array(index: int) -> np.ndarray:
    return np.asarray(_mask(index)) > 0


def write_mvtec(
    root: pathlib.Path,
    category: str = "widget",
    *,
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    seed: int = 0,
) -> pathlib.Path:
    """Write ``root/category`` in the MVTec AD layout and return ``root``.

    Train and test/good hold RGB images, except test/good/000 which is
    grayscale. Each defect folder holds ``defects[name]`` images with masks
    ``ground_truth/<name>/<stem>_mask.png``; defect image i has the mask
    ``mask_array(i)`` (the second defect type writes 0/1 instead of 0/255).
    """
    defects = {"crack": 2, "scratch": 1} if defects is None else defects
    rng = np.random.default_rng(seed)
    cat = pathlib.Path(root) / category
    (cat / "train" / "good").mkdir(parents=True)
    (cat / "test" / "good").mkdir(parents=True)
    for i in range(n_train):
        _image(rng).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        _image(rng, gray=(i == 0)).save(cat / "test" / "good" / f"{i:03d}.png")
    for k, (name, n) in enumerate(defects.items()):
        (cat / "test" / name).mkdir(parents=True)
        (cat / "ground_truth" / name).mkdir(parents=True)
        for i in range(n):
            _image(rng).save(cat / "test" / name / f"{i:03d}.png")
            _mask(i, 255 if k == 0 else 1).save(cat / "ground_truth" / name / f"{i:03d}_mask.png")
    (pathlib.Path(root) / "license.txt").write_text("fixture\n")
    return pathlib.Path(root)
