"""A tensorflow-datasets builder for any folder in the MVTec AD layout.

Works without TensorFlow: the builder writes ArrayRecord files and is read
back as NumPy through ``builder.as_data_source()`` (``as_dataset`` would need
TensorFlow). Images are yielded as PNG bytes, because encoding NumPy arrays
into an Image feature needs TensorFlow.

Example::

    from jaxflow_ad.data import tfds_mvtec
    builder = tfds_mvtec.build_tfds(root, "coin", data_dir="/tmp/tfds")
    test = builder.as_data_source()["test"]
    ex = test[0]   # {'image': uint8 [H,W,3], 'mask': uint8 [H,W,1] 0/255,
                   #  'label': 0/1, 'defect_type': b'good', 'path': b'...'}

The folder is the *manual* directory: ``<manual_dir>/<category>/train/good``,
``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.png``. Layout problems
raise the same :class:`~jaxflow_ad.data.mvtec.DatasetError` as
:func:`~jaxflow_ad.data.mvtec.load_split`.

Every other registered layout (and MVTec AD too, with the same pixels) is prepared by
:mod:`~jaxflow_ad.data.tfds_source`, which also reads the prepared data back as the layout's
:class:`~jaxflow_ad.data.mvtec.Split` (``load_split_tfds``, ``tfds_reader``).
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from . import mvtec, synthetic

__all__ = ["MvtecLayout", "MvtecLayoutConfig", "build_tfds"]


class MvtecLayoutConfig(tfds.core.BuilderConfig):
    """One category of an MVTec-layout folder; ``name`` is the category."""

    def __init__(self, *, name: str, description: str | None = None, **kwargs):
        super().__init__(
            name=name, description=description or f"Category {name!r} of an MVTec-AD-layout folder.", **kwargs
        )

    @property
    def category(self) -> str:
        return self.name


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class MvtecLayout(tfds.core.GeneratorBasedBuilder):
    """Any MVTec-AD-layout folder (passed as the manual dir), one config per category."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Image, mask, label, defect type and path per sample."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the folder that holds one sub-folder per category in the MVTec AD "
        "layout (<category>/train/good, <category>/test/<defect>, "
        "<category>/ground_truth/<defect>/<stem>_mask.png) as the manual dir, "
        "e.g. tfds.download.DownloadConfig(manual_dir=root). MVTec AD itself is "
        "available from https://www.mvtec.com/company/research/datasets/mvtec-ad; "
        "the built-in synthetic set is written by "
        "jaxflow_ad.data.ensure_builtin()."
    )
    BUILDER_CONFIGS = [MvtecLayoutConfig(name=c) for c in mvtec.MVTEC_CATEGORIES + synthetic.BUILTIN_CATEGORIES]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Images, pixel masks and labels read from a folder in the MVTec AD layout.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    # 0/255 at the image's native size; all 0 for good images.
                    "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=["good", "defective"]),
                    "defect_type": tfds.features.Text(),
                    "path": tfds.features.Text(),
                }
            ),
            supervised_keys=None,
            # Keep the reader's order: sorted by (defect type, file name).
            disable_shuffling=True,
            homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        )

    def _split_generators(self, dl_manager):
        root = pathlib.Path(os.fspath(dl_manager.manual_dir))
        category = self.builder_config.name
        # Scan now so layout errors surface before any file is written.
        records = {s: mvtec.scan_split(root, category, s) for s in mvtec.SPLITS}
        return {s: self._generate_examples(recs) for s, recs in records.items()}

    def _generate_examples(self, records):
        for rec in records:
            im = mvtec.read_image(rec.image_path)
            if rec.mask_path is None:
                mask = np.zeros((im.height, im.width), np.uint8)
            else:
                m = mvtec.read_mask(rec.mask_path)
                if m.shape != (im.height, im.width):
                    raise mvtec.DatasetError(
                        f"Mask {rec.mask_path} is {m.shape[1]}x{m.shape[0]} (WxH) but "
                        f"its image {rec.image_path} is {im.width}x{im.height}. A mask "
                        "must have its image's size; regenerate or replace it."
                    )
                mask = m.astype(np.uint8) * 255
            key = "/".join(rec.key)
            yield (
                key,
                {
                    "image": _png(im),
                    "mask": _png(Image.fromarray(mask, "L")),
                    "label": rec.label,
                    "defect_type": rec.defect_type,
                    "path": str(rec.image_path),
                },
            )


def build_tfds(root: str | os.PathLike, category: str, data_dir: str | os.PathLike) -> MvtecLayout:
    """Prepare (once) ``category`` of the MVTec-layout folder ``root`` as
    ArrayRecord files under ``data_dir`` and return the builder.

    Read it with ``builder.as_data_source()[split][i]``. The prepared files
    are keyed by category and builder version only: prepare different
    folders into different ``data_dir``s.
    """
    root = pathlib.Path(root).expanduser()
    config = next((c for c in MvtecLayout.BUILDER_CONFIGS if c.name == category), None) or MvtecLayoutConfig(
        name=category
    )
    builder = MvtecLayout(config=config, data_dir=os.fspath(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)),
    )
    return builder
