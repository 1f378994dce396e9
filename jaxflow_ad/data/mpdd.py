"""The MPDD dataset (``data.layout=mpdd``): the MVTec AD layout, read by the MVTec AD reader.

MPDD (Metal Parts Defect Detection, Jezek et al., 2021) is stored exactly like MVTec AD (anomalib
reuses its MVTec parser for it)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png

with the six categories of :data:`MPDD_CATEGORIES` and defect folders named after the defect type
(anomalib's dummy data uses ``bad``; both are read the same way). Every rule of
:mod:`~jaxflow_ad.data.mvtec` applies: train is ``train/good`` only, masks are binarised with
``> 0``, good images get all-False masks, bad input raises a
:class:`~jaxflow_ad.data.mvtec.DatasetError` naming the file. The functions here are the MVTec AD
reader's own, so the two layouts cannot drift apart.
"""

from __future__ import annotations

from .mvtec import list_categories, load_split, scan_split

__all__ = ["MPDD_CATEGORIES", "list_categories", "load_split", "scan_split"]

MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
