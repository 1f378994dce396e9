"""Datasets: layout readers (MVTec AD, MPDD, BTAD, VisA, MVTec LOCO AD, DAGM 2007, a generic folder,
and RGB + point cloud: MVTec 3D-AD, Eyecandies), the built-in synthetic sets (RGB, and RGB + point
cloud), point-cloud preprocessing, augmentation, tfds.

Quick start::

    from jaxflow_ad import data
    root = data.ensure_builtin()                       # written once, offline
    train = data.load_split(root, "coin", "train", 256)
    test = data.load_split(root, "coin", "test", 256)
    masks = test.masks_at(256)                          # [N, 256, 256] bool
    test.images                                         # uint8 [N, 256, 256, 3] = test.samples["image"]

A split is a dict of per-sample modalities (``Split.samples``), so readers of
other layouts (chosen by the config key ``data.layout``, see
:func:`get_reader`) can add point maps or depth, and the engine can add
backbone features, all indexed (``Split.take``) and augmented
(:func:`flip_rot90_samples`) together.

The built-in multimodal set is written in MVTec 3D-AD's layout and read like the real one::

    root3d = data.ensure_builtin3d()                   # puck, bun, plate; written once, offline
    test3d = data.get_reader("mvtec3d").load_split(root3d, "puck", "test", 256, depth=True)
    test3d.samples["xyz"]                               # float32 [N, 256, 256, 3], metres, 0 = missing
    test3d.samples["depth"], test3d.samples["foreground"]   # the AST/MADFlow depth branch

The tensorflow-datasets builder lives in ``jaxflow_ad.data.tfds_mvtec`` and is
imported lazily (``data.MvtecLayout``), so importing this package stays cheap.
"""

from .augment import flip_rot90, flip_rot90_samples
from .btad import BTAD_CATEGORIES
from .layouts import LAYOUTS, Reader, get_reader
from .mpdd import MPDD_CATEGORIES
from .mvtec import (
    IMAGE_EXTENSIONS,
    MVTEC_CATEGORIES,
    MVTEC_TEXTURE_CATEGORIES,
    DatasetError,
    Record,
    Split,
    list_categories,
    load_split,
    read_image,
    read_mask,
    scan_split,
    stat_file,
)
from .mvtec_loco import LOCO_CATEGORIES
from .synthetic import (
    BUILTIN_CATEGORIES,
    DEFECT_KINDS,
    OBJECT_CATEGORIES,
    TEXTURE_CATEGORIES,
    Sample,
    default_root,
    ensure_builtin,
    render_sample,
)
from .synthetic3d import BUILTIN3D_CATEGORIES, DEFECT_KINDS_3D, default_root3d, ensure_builtin3d, render_sample3d
from .visa import VISA_CATEGORIES

_LAZY = {
    "MvtecLayout": "tfds_mvtec",
    "MvtecLayoutConfig": "tfds_mvtec",
    "build_tfds": "tfds_mvtec",
    "LayoutBuilder": "tfds_source",
    "LayoutConfig": "tfds_source",
    "build_layout": "tfds_source",
    "load_split_tfds": "tfds_source",
    "tfds_reader": "tfds_source",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_texture(category: str) -> bool:
    """True for texture categories (MVTec AD's five and the built-in ones):
    the ones PyramidFlow's official pipeline augments with flips and rot90."""
    return category in MVTEC_TEXTURE_CATEGORIES or category in TEXTURE_CATEGORIES


__all__ = [
    "BTAD_CATEGORIES",
    "BUILTIN3D_CATEGORIES",
    "BUILTIN_CATEGORIES",
    "DEFECT_KINDS",
    "DEFECT_KINDS_3D",
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "LOCO_CATEGORIES",
    "MPDD_CATEGORIES",
    "MVTEC_CATEGORIES",
    "MVTEC_TEXTURE_CATEGORIES",
    "MvtecLayout",
    "MvtecLayoutConfig",
    "OBJECT_CATEGORIES",
    "Reader",
    "Record",
    "Sample",
    "Split",
    "TEXTURE_CATEGORIES",
    "VISA_CATEGORIES",
    "build_layout",
    "build_tfds",
    "load_split_tfds",
    "tfds_reader",
    "LayoutBuilder",
    "LayoutConfig",
    "default_root",
    "default_root3d",
    "ensure_builtin",
    "ensure_builtin3d",
    "flip_rot90",
    "flip_rot90_samples",
    "get_reader",
    "is_texture",
    "list_categories",
    "load_split",
    "read_image",
    "read_mask",
    "render_sample",
    "render_sample3d",
    "scan_split",
    "stat_file",
]
