"""Every registered layout as a tensorflow-datasets builder, and a reader of what it prepared.

Preparing (once per layout, category and options) reads every split of ``Reader.splits`` through
the layout's own reader at the native resolution and writes ArrayRecord files under ``data_dir``;
reading builds the same :class:`~jaxflow_ad.data.mvtec.Split` the file reader gives, through
``builder.as_data_source()``. Neither side imports TensorFlow.

Example::

    from jaxflow_ad.data import tfds_source
    tfds_source.build_layout(root, "btad", "01", "/tmp/tfds")            # prepare once
    test = tfds_source.load_split_tfds("/tmp/tfds", "btad", "01", "test", 256)
    # == jaxflow_ad.data.get_reader("btad").load_split(root, "01", "test", 256), array for array

    reader = tfds_source.tfds_reader("mvtec3d", "/tmp/tfds")           # a layouts.Reader
    train = reader.load_split(root3d, "tire", "train", 224, cloud_size=224)   # prepares tire if needed

**What is stored**, per example (one builder config per layout, category and *build* options, see
below): ``image`` (PNG, the 8-bit RGB the reader decodes, native size), ``mask`` (PNG 0/255, native
size; the OR of every mask file; all 0 for good images), ``label`` (``good``/``defective``),
``defect_type``, ``path`` (the image file, as the reader names it) and, for ``mvtec3d`` and
``eyecandies``, ``xyz`` (float32 [H, W, 3] at the native size, missing points exact zeros; for
Eyecandies the cloud computed from depth and pose). The dataset-level ``has_masks`` (False only for
the ``folder`` layout without ``mask_dir``), the layout, the category, the build options and the
source root are in the prepared dataset's ``metadata.json`` (``builder.info.metadata``).

**How it is read at native size.** ``load_split(image_size=None)`` needs one native size per split
(BTAD, VisA and MVTec LOCO mix sizes), so the builder instead takes each layout's ``scan`` records
(the same ones its ``load_split`` reads) and reads them one by one with the reader's own per-sample
function: :func:`~jaxflow_ad.data.mvtec._load_one` for the 2D layouts, ``mvtec3d._load_record`` and
``eyecandies._load_record`` for the 3D ones, with their checks (mask sizes, good masks all zero,
cloud sizes). A layout registered later that this module does not know is read with its
``load_split(root, category, split, None, **options)`` (one native size per split required).

**Options.** The options that decide *which* samples and pixels are stored are build options and
part of the config (``folder``: all of them; ``eyecandies``: ``image_index``). The cloud options of
the 3D layouts (``cloud_size``, ``clean``, ``depth``, ``seed``, ``cache_dir``) are applied when
reading, as :func:`~jaxflow_ad.data.mvtec3d.prepare_cloud` applies them in the file reader, so one
preparation serves every setting.

**Reading.** Images are resized from the stored native pixels with
:func:`~jaxflow_ad.data.resize.resize_image` (the filter ``resize``), exactly as the file readers
resize the decoded file; masks are binarised with ``> 0`` at the native size. ``Split.files`` are
the split's ArrayRecord files and ``file_stats`` their stats as read, so ``Split.fingerprint()``
follows a re-preparation. The prepared data is a snapshot: a change of the raw files after
preparing is not seen (delete ``builder.data_dir`` to prepare again). Layout errors raise the
reader's :class:`~jaxflow_ad.data.mvtec.DatasetError` before anything is written.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from . import eyecandies, folder, layouts, mvtec, mvtec3d
from .mvtec import GOOD, DatasetError, Record, Split, _check_load_args, stat_file
from .resize import resize_image

__all__ = [
    "LayoutBuilder",
    "LayoutConfig",
    "build_layout",
    "layout_builder",
    "list_prepared",
    "load_split_tfds",
    "tfds_reader",
]

log = logging.getLogger("jaxflow_ad")

# The layouts whose scan records this module reads sample by sample (any other registered layout is
# read through its load_split at the native size).
_RECORD_LAYOUTS = ("mvtec", "mpdd", "btad", "visa", "mvtec_loco", "dagm", "folder", "mvtec3d", "eyecandies")
_CLOUD_LAYOUTS = ("mvtec3d", "eyecandies")
_VERSION = "1.0.0"


# ----------------------------------------------------------------------------
# Options: what is stored (build) and what is applied when reading (read)


def _split_options(layout: str, options: dict) -> tuple[dict, dict]:
    """``(build, read)``: the options of ``layout`` checked by its reader's own validator, the build
    ones with every default filled in (so that ``{}`` and the defaults name the same config).

    Raises:
      DatasetError: an unknown layout, an unknown option or a bad value (naming ``data.<layout>.<key>``).
    """
    reader = layouts.get_reader(layout)
    options = dict(options)
    if layout == "folder":
        opts = dataclasses.asdict(folder.folder_options(**options))
        opts["extensions"] = list(opts["extensions"])
        return opts, {}
    if layout == "mvtec3d":
        mvtec3d.cloud_options("mvtec3d", **options)
        return {}, options
    if layout == "eyecandies":
        index, _ = eyecandies._options(**options)
        options.pop("image_index", None)
        return {"image_index": index}, options
    unknown = sorted(set(options) - set(reader.options))
    if unknown:
        have = f"the options are {', '.join(reader.options)}" if reader.options else "it has no options"
        raise DatasetError(
            f"Unknown option(s) {', '.join(f'data.{layout}.{k}' for k in unknown)} of the {layout} layout; {have}."
        )
    return options, {}


def _config_name(layout: str, category: str, build: dict) -> str:
    """``<layout>-<category>-<digest>``: the category made safe for a folder name, the digest of
    (layout, category, build options) keeping names apart that the cleaning would merge."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", category).strip(".") or "_"
    key = json.dumps({"layout": layout, "category": category, "options": build}, sort_keys=True, default=str)
    return f"{layout}-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


class LayoutConfig(tfds.core.BuilderConfig):
    """One category of one layout, with the layout's build options (see the module docstring).

    Attributes:
      layout: the ``data.layout`` name (a key of :data:`~jaxflow_ad.data.layouts.LAYOUTS`).
      category: the category, as the layout's reader names it.
      options: the build options, checked, every default filled in.
    """

    def __init__(self, *, layout: str, category: str, options: dict | None = None, description: str | None = None):
        build, read = _split_options(layout, options or {})
        if read:
            raise DatasetError(
                f"The option(s) {sorted(read)} of the {layout} layout are applied when reading, not stored: pass "
                "them to load_split_tfds, not to the builder config."
            )
        super().__init__(
            name=_config_name(layout, category, build),
            version=_VERSION,
            description=description or f"Category {category!r} of a folder in the {layout!r} layout.",
        )
        self.layout = layout
        self.category = category
        self.options = build


_CONFIGS: dict[str, LayoutConfig] = {}


def _config(layout: str, category: str, build: dict) -> LayoutConfig:
    """The one :class:`LayoutConfig` of (layout, category, build options) in this process."""
    name = _config_name(layout, category, build)
    if name not in _CONFIGS:
        _CONFIGS[name] = LayoutConfig(layout=layout, category=category, options=build)
    return _CONFIGS[name]


# ----------------------------------------------------------------------------
# Reading one sample at the native size


class _Native(NamedTuple):
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    label: int
    defect_type: str
    path: str
    xyz: np.ndarray | None  # float32 [H, W, 3], missing points exact zeros; 3D layouts only
    mode: str = ""  # the image file's mode as decoded ("" when unknown)


class _Seen(NamedTuple):
    """What :func:`~jaxflow_ad.data.mvtec._warn_surprises` reads of a sample, without its pixels."""

    mode: str
    native: tuple[int, int]
    mask: np.ndarray  # bool [1]: whether the mask has a defective pixel


def _records(layout: str, root, category: str, split: str, build: dict) -> list[Record]:
    """The layout's scan of a split (raises its DatasetError); only for :data:`_RECORD_LAYOUTS`."""
    found = layouts.get_reader(layout).scan(root, category, split, **build)
    return list(getattr(found, "records", found))  # DAGM and VisA return a Scan holding the records


def _load_native(rec: Record) -> _Native:
    """One scanned sample read as its layout's reader reads it, at the native size."""
    path = str(rec.image_path)
    if isinstance(rec, eyecandies.EyecandiesRecord):
        x, _ = eyecandies._load_record(rec, None, "pil_bilinear", mvtec3d.CloudOptions())
        return _Native(x.image, x.mask, int(x.defect_type != GOOD), x.defect_type, path, x.cloud["xyz"], x.mode)
    if isinstance(rec, mvtec3d.Record3D):
        x = mvtec3d._load_record(rec, None, "pil_bilinear", mvtec3d.CloudOptions())
        return _Native(x.image, x.mask, rec.label, rec.defect_type, path, x.cloud["xyz"], x.mode)
    x = mvtec._load_one(rec, None)
    return _Native(x.image, x.mask, rec.label, rec.defect_type, path, None, x.mode)


def _split_natives(s: Split) -> list[_Native]:
    xyz = s.samples.get("xyz")
    return [
        _Native(
            s.images[i], s.masks[i], int(s.labels[i]), s.defect_types[i], s.paths[i], None if xyz is None else xyz[i]
        )
        for i in range(len(s))
    ]


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _example(x: _Native, cloud: bool) -> dict[str, Any]:
    ex = {
        "image": _png(np.ascontiguousarray(x.image, np.uint8), "RGB"),
        "mask": _png(np.where(x.mask, np.uint8(255), np.uint8(0)), "L"),
        "label": x.label,
        "defect_type": x.defect_type,
        "path": x.path,
    }
    if cloud:
        ex["xyz"] = np.ascontiguousarray(x.xyz, np.float32)
    return ex


def _map_chunked(fn: Callable, items: Sequence, workers: int) -> Iterable:
    """``fn`` over ``items`` in order, on ``workers`` threads, at most ``4 * workers`` results held at once."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    step = 4 * workers
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), step):
            yield from pool.map(fn, items[start : start + step])


# ----------------------------------------------------------------------------
# The builder


class LayoutBuilder(tfds.core.GeneratorBasedBuilder):
    """Any folder in a registered layout (passed as the manual dir); one :class:`LayoutConfig` per
    layout, category and build options. Prepare it with :func:`build_layout`."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "Image, mask, label, defect type, path (and xyz for 3D layouts) per sample."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the dataset root the layout's reader reads (e.g. the folder holding the MVTec AD categories, "
        "BTAD's products, VisA's split_csv/ and categories) as the manual dir: "
        "tfds.download.DownloadConfig(manual_dir=root), or use jaxflow_ad.data.tfds_source.build_layout."
    )
    # Configs are made on demand (_config), none is predefined.
    BUILDER_CONFIGS: list[LayoutConfig] = []
    num_workers: int | None = None  # threads reading samples while preparing (None: min(8, CPUs))

    @classmethod
    def get_builder_config(cls, name: str, version=None) -> LayoutConfig | None:
        # The configs made so far count as the builder's own, so that tfds does not log "Using custom data
        # configuration" at every construction.
        return _CONFIGS.get(name) or super().get_builder_config(name, version)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            # 0/255 at the image's native size; all 0 for good images.
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=["good", "defective"]),
            "defect_type": tfds.features.Text(),
            "path": tfds.features.Text(),
        }
        if config.layout in _CLOUD_LAYOUTS:
            # Two unknown dimensions need a byte encoding; zlib is lossless.
            features["xyz"] = tfds.features.Tensor(shape=(None, None, 3), dtype=np.float32, encoding="zlib")
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Images, pixel masks and labels read from a folder in the {config.layout!r} layout.",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=None,
            # Keep the reader's order.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        root = pathlib.Path(os.fspath(dl_manager.manual_dir))
        splits = layouts.get_reader(config.layout).splits
        # Scan (or, for a layout this module does not know, read) every split now, so that layout errors
        # surface before any file is written.
        if config.layout in _RECORD_LAYOUTS:
            found = {s: _records(config.layout, root, config.category, s, config.options) for s in splits}
            has_masks = folder.folder_options(**config.options).has_masks if config.layout == "folder" else True
            items, load = found, _load_native
        else:
            loaded = {
                s: layouts.get_reader(config.layout).load_split(root, config.category, s, None, **config.options)
                for s in splits
            }
            has_masks = all(s.has_masks for s in loaded.values())
            items, load = {s: _split_natives(x) for s, x in loaded.items()}, (lambda x: x)
        self.info.metadata.update(
            layout=config.layout,
            category=config.category,
            options=config.options,
            has_masks=bool(has_masks),
            root=str(root),
        )
        return {s: self._generate_examples(s, items[s], load) for s in splits}

    def _generate_examples(self, split, items, load):
        config = self.builder_config
        cloud = config.layout in _CLOUD_LAYOUTS
        workers = self.num_workers or min(8, os.cpu_count() or 1)

        def one(item):
            x = load(item)
            return _example(x, cloud), x.defect_type, _Seen(x.mode, x.image.shape[:2], np.array([x.mask.any()]))

        seen = []
        for i, (ex, defect, s) in enumerate(_map_chunked(one, items, workers)):
            seen.append((defect, s))
            yield f"{i:08d}", ex
        if config.layout in _RECORD_LAYOUTS:
            # The file reader's warnings (images in several modes, defect images with an empty mask), once,
            # here; a good sample's (all-zero) mask file is no surprise (as in mvtec3d.assemble).
            shown = [
                dataclasses.replace(r, mask_path=None, more_masks=()) if d == GOOD else r
                for r, (d, _) in zip(items, seen)
            ]
            mvtec._warn_surprises(shown, [s for _, s in seen], f"{config.category}/{split}", None)


def layout_builder(
    data_dir: str | os.PathLike, layout: str, category: str, **options
) -> tuple[LayoutBuilder, dict[str, Any]]:
    """The builder of ``layout``/``category`` with ``options`` under ``data_dir`` (prepared or not), and the
    read options (the 3D layouts' cloud options) left over from ``options``.

    Raises:
      DatasetError: an unknown layout, or a bad option.
    """
    build, read = _split_options(layout, options)
    config = _config(layout, category, build)
    return LayoutBuilder(config=config, data_dir=os.fspath(pathlib.Path(data_dir).expanduser())), read


def build_layout(
    root: str | os.PathLike,
    layout: str,
    category: str,
    data_dir: str | os.PathLike,
    *,
    num_workers: int | None = None,
    **options,
) -> LayoutBuilder:
    """Prepare (once) ``category`` of the ``layout`` folder ``root`` as ArrayRecord files under ``data_dir``
    and return the builder (``builder.as_data_source()[split][i]``).

    ``options`` are the layout's options (``config.data.<layout>``); only the build options shape what
    is prepared (the cloud options of the 3D layouts are accepted, checked and ignored here: pass them to
    :func:`load_split_tfds`). A config already prepared is reused without reading ``root``.

    Raises:
      DatasetError: as the layout's reader, for anything wrong in ``root``, before anything is written.
    """
    builder, _ = layout_builder(data_dir, layout, category, **options)
    if builder.is_prepared():
        return builder
    config = builder.builder_config
    root = pathlib.Path(root).expanduser()
    # The layout checked before tfds creates any folder (the builder checks again while preparing).
    if layout in _RECORD_LAYOUTS:
        for split in layouts.get_reader(layout).splits:
            _records(layout, root, category, split, config.options)
    builder.num_workers = num_workers
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)),
    )
    return builder


def list_prepared(data_dir: str | os.PathLike, layout: str, **options) -> list[str]:
    """The categories of ``layout`` prepared under ``data_dir`` with these build options, sorted."""
    build, _ = _split_options(layout, options)
    base = pathlib.Path(data_dir).expanduser() / LayoutBuilder.name
    found = set()
    for meta in base.glob(f"{_glob_escape(layout)}-*/{_VERSION}/metadata.json"):
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if m.get("layout") == layout and m.get("options") == build and (meta.parent / "dataset_info.json").is_file():
            found.add(m.get("category"))
    return sorted(c for c in found if isinstance(c, str))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# ----------------------------------------------------------------------------
# Reading


def _not_prepared(data_dir, layout: str, category: str, options: dict) -> DatasetError:
    have = list_prepared(data_dir, layout, **options)
    return DatasetError(
        f"Category {category!r} of the {layout} layout (options {options or 'none'}) is not prepared under {data_dir}. "
        f"Prepared there: {', '.join(have) if have else 'none'}. Prepare it once with "
        f"jaxflow_ad.data.tfds_source.build_layout(root, {layout!r}, {category!r}, {os.fspath(data_dir)!r}, ...), "
        "or pass the dataset root to the tfds reader's load_split, which prepares it."
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_WARNED_ROOTS: set[tuple[str, str]] = set()


def _warn_other_root(builder: LayoutBuilder, root) -> None:
    """Warn (once per prepared data and root) when the prepared data came from another root than ``root``."""
    source = (builder.info.metadata or {}).get("root")
    root = pathlib.Path(root).expanduser()
    if not source or pathlib.Path(source).resolve() == root.resolve():
        return
    key = (os.fspath(builder.data_dir), os.fspath(root))
    if key not in _WARNED_ROOTS:
        _WARNED_ROOTS.add(key)
        log.warning(
            "%s/%s is read from the data prepared under %s from %s, not from %s. Delete that folder to prepare it "
            "again from %s.",
            builder.builder_config.layout,
            builder.builder_config.category,
            builder.data_dir,
            source,
            root,
            root,
        )


def load_split_tfds(
    data_dir: str | os.PathLike,
    layout: str,
    category: str,
    split: str,
    image_size: int | None = 256,
    *,
    resize: str = "pil_bilinear",
    num_workers: int | None = None,
    **options,
) -> Split:
    """The :class:`~jaxflow_ad.data.mvtec.Split` that ``get_reader(layout).load_split(root, category, split,
    image_size, resize=resize, **options)`` gives, read from the data :func:`build_layout` prepared under
    ``data_dir`` (no raw file is read).

    The same images (resized from the stored native pixels with the same filter), masks (native size),
    labels, defect types, paths, ``has_masks`` and, for the 3D layouts, the cloud options applied as the
    file reader applies them (``xyz``, ``depth``, ``foreground``; ``cache_dir`` caches ``clean``/``depth``).
    ``files`` are the split's ArrayRecord files, ``file_stats`` their stats as read.

    Raises:
      DatasetError: the category is not prepared with these build options, the split is not one of the
        layout's, a bad option, or (``image_size=None``) native sizes that differ.
    """
    reader = layouts.get_reader(layout)
    if split not in reader.splits:
        raise DatasetError(f"split must be one of {reader.splits}, got {split!r}.")
    _check_load_args(image_size, resize)
    builder, read = layout_builder(data_dir, layout, category, **options)
    if not builder.is_prepared():
        raise _not_prepared(data_dir, layout, category, builder.builder_config.options)
    meta = builder.info.metadata or {}
    files = [os.fspath(p) for p in builder.info.splits[split].filepaths]
    stats = [stat_file(f, f"{category}/{split}") for f in files]
    source = builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    records = source.__getitems__(list(range(len(source))))
    features = builder.info.features
    cloud_opts = None
    if layout in _CLOUD_LAYOUTS:
        cloud_opts = mvtec3d.cloud_options(layout, **read)

    def one(item):
        i, raw = item
        ex = features.deserialize_example_np(raw)
        image = np.asarray(ex["image"], np.uint8)
        arr = image if image_size is None else resize_image(Image.fromarray(image, "RGB"), image_size, resize)
        sample = {"image": arr}
        path = _text(ex["path"])
        if cloud_opts is not None:
            size = mvtec3d.cloud_side(image_size, cloud_opts, image.shape[:2])
            # The cache key: the split's files as read, and which example of them.
            sources = [*zip(files, stats), (f"{files[0]}#{i}", stats[0])]
            sample.update(mvtec3d.cached_prepare_cloud(ex["xyz"], path, size, cloud_opts, sources))
        return sample, np.asarray(ex["mask"])[..., 0] > 0, int(ex["label"]), _text(ex["defect_type"]), path

    workers = num_workers or min(8, os.cpu_count() or 1)
    out = list(_map_chunked(one, list(enumerate(records)), workers))
    if not out:
        raise DatasetError(f"The prepared {split} split of {category!r} under {builder.data_dir} is empty.")
    for key in out[0][0]:
        first = out[0][0][key].shape
        for sample, *_, path in out:
            if sample[key].shape != first:
                what = "Images" if key == "image" else f"The {key!r} arrays"
                raise DatasetError(
                    f"{what} of {category}/{split} differ in size: {path} gives {sample[key].shape[1]}x"
                    f"{sample[key].shape[0]}, {out[0][-1]} gives {first[1]}x{first[0]}. Pass image_size=S "
                    f"{'(and data.<layout>.cloud_size) ' if cloud_opts is not None else ''}to resize them all to SxS."
                )
    settings = ""
    if layout == "mvtec3d":
        settings = cloud_opts.settings()
    elif layout == "eyecandies":
        settings = cloud_opts.settings(image_index=builder.builder_config.options["image_index"])
    return Split(
        samples={k: np.stack([o[0][k] for o in out]) for k in out[0][0]},
        masks=[o[1] for o in out],
        labels=np.array([o[2] for o in out], dtype=np.int32),
        defect_types=[o[3] for o in out],
        paths=[o[4] for o in out],
        split=split,
        category=category,
        files=files,
        file_stats=stats,
        has_masks=bool(meta.get("has_masks", True)),
        settings=settings,
    )


# ----------------------------------------------------------------------------
# A layouts.Reader over the prepared data


def tfds_reader(layout: str, data_dir: str | os.PathLike) -> layouts.Reader:
    """A :class:`~jaxflow_ad.data.layouts.Reader` of ``layout`` that reads the data prepared under
    ``data_dir`` and prepares what is missing, for ``config.data.source == "tfds"``.

    Its functions take the file reader's arguments; ``root`` is the raw dataset root, read only to prepare
    a category not yet prepared (``None`` or ``""``: prepared data only):

    * ``list_categories(root, **options)``: the categories prepared under ``data_dir`` with these options,
      and those the file reader finds under ``root`` when ``root`` is a folder (they are prepared on first
      load);
    * ``load_split(root, category, split, image_size, *, resize, num_workers, **options)``: prepares the
      category from ``root`` if needed (:func:`build_layout`), then :func:`load_split_tfds`;
    * ``scan(root, category, split, **options)``: for a prepared category, the number of examples of the
      split; otherwise the file reader's scan of ``root`` (layout errors before anything is prepared).

    ``name``, ``modalities``, ``spatial``, ``splits`` and ``options`` are the file reader's.

    Raises:
      DatasetError: ``layout`` is not registered.
    """
    base = layouts.get_reader(layout)
    data_dir = pathlib.Path(data_dir).expanduser()

    def given(root) -> bool:
        return root is not None and os.fspath(root) != ""

    def list_categories(root, **options) -> list[str]:
        prepared = list_prepared(data_dir, layout, **options)
        if given(root) and (pathlib.Path(root).expanduser().is_dir() or not prepared):
            return sorted(set(prepared) | set(base.list_categories(root, **options)))
        return prepared

    def load_split(root, category, split, image_size=256, *, resize="pil_bilinear", num_workers=None, **options):
        builder, _ = layout_builder(data_dir, layout, category, **options)
        if not builder.is_prepared():
            if not given(root):
                raise _not_prepared(data_dir, layout, category, builder.builder_config.options)
            build_layout(root, layout, category, data_dir, num_workers=num_workers, **options)
        elif given(root):
            _warn_other_root(builder, root)
        return load_split_tfds(
            data_dir, layout, category, split, image_size, resize=resize, num_workers=num_workers, **options
        )

    def scan(root, category, split, **options):
        builder, _ = layout_builder(data_dir, layout, category, **options)
        if builder.is_prepared():
            if split not in base.splits:
                raise DatasetError(f"split must be one of {base.splits}, got {split!r}.")
            return builder.info.splits[split].num_examples
        if not given(root):
            raise _not_prepared(data_dir, layout, category, builder.builder_config.options)
        if base.scan is None:
            return None
        return base.scan(root, category, split, **options)

    return layouts.Reader(
        name=base.name,
        modalities=base.modalities,
        spatial=base.spatial,
        splits=base.splits,
        list_categories=list_categories,
        load_split=load_split,
        scan=scan,
        options=base.options,
    )
