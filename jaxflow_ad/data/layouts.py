"""Dataset readers, chosen by the config key ``data.layout``.

A layout is a way of storing a dataset on disk (MVTec AD's folders, DAGM
2007's class folders with Labels.txt, MVTec 3D-AD's rgb/xyz pairs, a plain
folder of images, ...). Each one is read by a :class:`Reader`, which also says
which sample keys it produces, so that the engine can ask for the modalities a
method needs and augment every spatial one alike without knowing the layout.

The registry is a plain dict: a new layout is added with
``LAYOUTS["name"] = Reader(...)`` next to its reader module.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from . import btad, dagm, eyecandies, folder, mpdd, mvtec, mvtec3d, mvtec_loco, visa
from .mvtec import DatasetError, Split

__all__ = ["LAYOUTS", "Reader", "get_reader"]


@dataclasses.dataclass(frozen=True)
class Reader:
    """How to read one dataset layout.

    Attributes:
      name: the ``data.layout`` value that selects it.
      modalities: the ``Split.samples`` keys the splits it loads have; always includes
        ``"image"``. A key that an option turns on is listed too and is present only when the
        option is set (``mvtec3d`` and ``eyecandies``: ``"depth"`` and ``"foreground"`` with
        ``config.data.<layout>.depth=True``).
      spatial: those of ``modalities`` that are H x W maps aligned with the
        image, which augmentation must transform exactly like the image.
      splits: the split names ``load_split`` accepts.
      list_categories: ``(root, **options) -> list[str]``, the categories under a root.
      load_split: ``(root, category, split, image_size, *, resize, num_workers, **options) -> Split``.
      scan: optionally ``(root, category, split, **options) -> anything``: the layout, labels and
        masks of a split checked without decoding pixels (raises ``DatasetError``); the engine scans
        every category's splits before the first training step and reports all problems at once.
      options: the names of the keyword options that ``list_categories``, ``load_split`` and
        ``scan`` accept (all three the same ones), read from ``config.data.<name>`` (e.g.
        ``config.data.folder``); empty for a layout without options, whose functions take none.
    """

    name: str
    modalities: tuple[str, ...]
    spatial: tuple[str, ...]
    splits: tuple[str, ...]
    list_categories: Callable[[str | os.PathLike], list[str]]
    load_split: Callable[..., Split]
    scan: Callable[..., object] | None = None
    options: tuple[str, ...] = ()

    def __post_init__(self):
        # A registration mistake should fail at import, not in the middle of a run.
        if "image" not in self.modalities:
            raise ValueError(f"Reader {self.name!r}: modalities {self.modalities} must include 'image'.")
        extra = sorted(set(self.spatial) - set(self.modalities))
        if extra:
            raise ValueError(f"Reader {self.name!r}: spatial keys {extra} are not in modalities {self.modalities}.")
        if not self.splits:
            raise ValueError(f"Reader {self.name!r}: splits must not be empty.")


LAYOUTS: dict[str, Reader] = {
    "mvtec": Reader(
        name="mvtec",
        modalities=("image",),
        spatial=("image",),
        splits=mvtec.SPLITS,
        list_categories=mvtec.list_categories,
        load_split=mvtec.load_split,
        scan=mvtec.scan_split,
    ),
    "dagm": Reader(
        name="dagm",
        modalities=("image",),
        spatial=("image",),
        splits=mvtec.SPLITS,
        list_categories=dagm.list_categories,
        load_split=dagm.load_split,
        scan=dagm.scan_split,
    ),
    # MPDD is stored exactly like MVTec AD: the MVTec AD reader's own functions.
    "mpdd": Reader(
        name="mpdd",
        modalities=("image",),
        spatial=("image",),
        splits=mvtec.SPLITS,
        list_categories=mpdd.list_categories,
        load_split=mpdd.load_split,
        scan=mpdd.scan_split,
    ),
    "btad": Reader(
        name="btad",
        modalities=("image",),
        spatial=("image",),
        splits=mvtec.SPLITS,
        list_categories=btad.list_categories,
        load_split=btad.load_split,
        scan=btad.scan_split,
    ),
    "visa": Reader(
        name="visa",
        modalities=("image",),
        spatial=("image",),
        splits=mvtec.SPLITS,
        list_categories=visa.list_categories,
        load_split=visa.load_split,
        scan=visa.scan_split,
    ),
    "mvtec_loco": Reader(
        name="mvtec_loco",
        modalities=("image",),
        spatial=("image",),
        splits=mvtec.SPLITS,
        list_categories=mvtec_loco.list_categories,
        load_split=mvtec_loco.load_split,
        scan=mvtec_loco.scan_split,
    ),
    "folder": Reader(
        name="folder",
        modalities=("image",),
        spatial=("image",),
        splits=mvtec.SPLITS,
        list_categories=folder.list_categories,
        load_split=folder.load_split,
        scan=folder.scan_split,
        options=tuple(folder.DEFAULT_OPTIONS),
    ),
    # RGB + organised point cloud; "depth" and "foreground" only with the option depth=True.
    "mvtec3d": Reader(
        name="mvtec3d",
        modalities=("image", "xyz", "depth", "foreground"),
        spatial=("image", "xyz", "depth", "foreground"),
        splits=mvtec3d.SPLITS,
        list_categories=mvtec3d.list_categories,
        load_split=mvtec3d.load_split,
        scan=mvtec3d.scan_split,
        options=tuple(mvtec3d.DEFAULT_OPTIONS),
    ),
    "eyecandies": Reader(
        name="eyecandies",
        modalities=("image", "xyz", "depth", "foreground"),
        spatial=("image", "xyz", "depth", "foreground"),
        splits=eyecandies.SPLITS,
        list_categories=eyecandies.list_categories,
        load_split=eyecandies.load_split,
        scan=eyecandies.scan_split,
        options=tuple(eyecandies.DEFAULT_OPTIONS),
    ),
}


def get_reader(name: str) -> Reader:
    """The reader registered as ``name`` (the value of ``data.layout``).

    Raises:
      DatasetError: ``name`` is not in :data:`LAYOUTS`.
    """
    reader = LAYOUTS.get(name) if isinstance(name, str) else None
    if reader is None:
        raise DatasetError(f"config key data.layout={name!r} is not a known layout; use one of {sorted(LAYOUTS)}.")
    return reader
