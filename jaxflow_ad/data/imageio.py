"""Decoding image and mask files into the arrays the readers store.

Every dataset reader (MVTec AD, DAGM 2007, the texture folder of
:mod:`~jaxflow_ad.data.anomaly_synth`) reads pixels through :func:`read_image`
and :func:`read_mask`, so that a file is read the same way whatever layout it
comes from. An image becomes 8-bit RGB; how each PIL mode gets there:

* ``RGB``: as decoded.
* ``L`` (8-bit grayscale) and ``1`` (bilevel, 0 -> 0 and 1 -> 255): the gray
  value on all three channels. 1-, 2- and 4-bit grayscale PNGs are decoded by
  Pillow as ``L`` scaled to 0..255.
* ``LA``, ``RGBA``, ``RGBX``: the colour channels; the alpha (or padding)
  channel is **ignored, not composited** onto any background, so a fully
  transparent pixel keeps the colour stored under it.
* ``P`` and ``PA`` (palette): each pixel's palette colour. Transparency
  (``tRNS`` or an alpha band) is handled as PIL converts the image to
  ``RGBA``, and that alpha is then ignored as above.
* ``CMYK`` and ``YCbCr``: PIL's conversion to RGB (CMYK naively, without a
  colour profile).
* 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I``, the
  32-bit integer mode that older Pillow versions give 16-bit PNGs): the value
  ``v`` becomes ``round(v * 255 / 65535)`` on all three channels. The scale is
  the fixed 16-bit range, not each image's own maximum, so that intensities
  stay comparable between images of a dataset (a stretch per image would map a
  dark defect-free image and a bright one to the same range). An ``I`` image
  with values outside 0..65535 raises.
* 16-bit colour PNGs and TIFFs (48-bit RGB, 64-bit RGBA, 32-bit gray+alpha):
  Pillow decodes them to ``RGB`` or ``RGBA`` (gray+alpha too) keeping the high
  byte of every sample (``v >> 8``), which is within one grey level of
  ``round(v * 255 / 65535)``; that is what is stored. It is exact enough for
  8-bit models, needs no second decoder, and does not depend on whether
  OpenCV is installed.
* ``F`` (32-bit float, e.g. a TIFF of measurements) and any other mode (``I``
  beyond 16 bits, ``LAB``, ``HSV``, premultiplied ``La``/``RGBa``) raise
  :class:`DatasetError`: there is no exact, unambiguous conversion, and
  guessing a scale would change the data silently.

A mask pixel is defective if any colour channel is nonzero (alpha ignored),
read at the file's full bit depth; see :func:`read_mask`.
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
from PIL import Image

__all__ = ["DatasetError", "read_image", "read_mask", "read_rgb"]


class DatasetError(ValueError):
    """A dataset folder or file is missing, unreadable or inconsistent.

    The message names the offending path and says how to fix it.
    """


# round(v * 255 / 65535) = round(v / 257) for every 16-bit v, as a lookup
# table (one gather per pixel). v / 257 is never exactly halfway between two
# integers, so (v + 128) // 257 rounds without ties.
_U16_TO_U8 = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)

# Modes that PIL converts to RGB exactly as documented above (P is handled apart).
_TO_RGB_BY_PIL = frozenset({"1", "L", "LA", "PA", "RGBA", "RGBX", "CMYK", "YCbCr"})
# Modes whose bands read as numbers are a mask (the alpha or padding band, if any, last).
_MASK_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA", "RGBX", "I", "F"})
_WITH_ALPHA = frozenset({"LA", "RGBA", "RGBX"})
_FIX = "Convert it to an 8-bit RGB or grayscale PNG (a 16-bit grayscale PNG is read too)."


def _is_int16(mode: str) -> bool:
    """PIL's 16-bit grayscale modes and ``I``, which older Pillow gives 16-bit PNGs."""
    return mode == "I" or mode.startswith("I;16")


def _raw_mode(im: Image.Image) -> str:
    """The raw mode the decoder of a not yet loaded image will read, e.g. ``"RGB;16B"`` for a 48-bit
    PNG or ``"RGB;16N"`` for a 48-bit TIFF; ``""`` if the plugin does not say."""
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, str):
            return args
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            return args[0]
    return ""


def _is_16bit_colour(im: Image.Image, raw: str) -> bool:
    """True for a file with 16-bit samples that Pillow decoded to an 8-bit mode (keeping the high bytes).

    Raw modes of 16-bit samples end in ``;16B``, ``;16L`` or ``;16N`` (byte order); BMP's
    ``BGR;16`` and ``BGR;15`` are 16 bits per *pixel* and decode exactly.
    """
    return re.search(r";16[BLN]$", raw) is not None and not _is_int16(im.mode)


def _open(path: pathlib.Path, what: str) -> tuple[Image.Image, str]:
    """The decoded PIL image at ``path`` and its raw mode (:func:`_raw_mode`); DatasetError if unreadable."""
    try:
        im = Image.open(path)
        raw = _raw_mode(im)  # must be read before load(), which clears the tiles
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(
            f"Cannot read the {what} {path}: {type(e).__name__}: {e}. The file "
            "is corrupt, truncated or not an image; replace it with a good "
            "copy (re-extract the archive) or remove it."
        ) from e
    return im, raw


def _int16_to_u8(im: Image.Image, path: pathlib.Path, what: str) -> np.ndarray:
    """uint8 [H, W] of a 16-bit (or ``I``) grayscale image: ``round(v * 255 / 65535)``."""
    a = np.asarray(im)
    if a.dtype.kind != "u" or a.dtype.itemsize > 2:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise DatasetError(
                f"The {what} {path} has 32-bit integer pixels (PIL mode {im.mode!r}) with values {lo}..{hi}, "
                f"outside the 16-bit range 0..65535 that is scaled to 8 bits. {_FIX}"
            )
    return _U16_TO_U8[a]


def _to_rgb(im: Image.Image, path: pathlib.Path, what: str) -> Image.Image:
    """``im`` as an 8-bit RGB PIL image, by the rules of the module docstring."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        # Through RGBA when the palette has transparency: the colours are the same as
        # a direct conversion, without PIL's warning about transparency in bytes.
        return im.convert("RGBA").convert("RGB") if "transparency" in im.info else im.convert("RGB")
    if mode in _TO_RGB_BY_PIL:
        return im.convert("RGB")
    if _is_int16(mode):
        return Image.fromarray(_int16_to_u8(im, path, what)).convert("RGB")
    if mode == "F":
        raise DatasetError(
            f"The {what} {path} has 32-bit floating-point pixels (PIL mode 'F'), which have no fixed scale to "
            "8 bits (they may be in [0, 1], in [0, 255] or in physical units). Convert it to an 8-bit PNG, e.g. "
            "np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for values in [0, 1], or to a 16-bit grayscale PNG."
        )
    raise DatasetError(f"The {what} {path} has PIL mode {mode!r}, which has no exact conversion to 8-bit RGB. {_FIX}")


def _mode_label(im: Image.Image, raw: str) -> str:
    """The file's mode as decoded, e.g. ``"L"``, ``"I;16"``, or ``"RGB (16-bit)"`` for a 48-bit PNG."""
    return f"{im.mode} (16-bit)" if _is_16bit_colour(im, raw) else im.mode


def read_rgb(path: str | os.PathLike, what: str = "image") -> tuple[Image.Image, str]:
    """The file at ``path`` as an 8-bit RGB PIL image, and its mode as decoded.

    The conversion to RGB follows the module docstring (grayscale on three
    channels, alpha ignored rather than composited, 16-bit scaled by the
    fixed range 65535 -> 255). The mode is PIL's (``"L"``, ``"RGBA"``,
    ``"I;16"``, ...), with ``" (16-bit)"`` appended for a 16-bit colour file
    that Pillow decodes to an 8-bit mode; readers compare it across a split.

    Args:
      path: an image file.
      what: what the file is, for messages (``"image"``, ``"texture image"``).

    Raises:
      DatasetError: naming the file: it cannot be decoded, or its mode
        (``F``, ``LAB``, ``I`` beyond 16 bits, ...) has no exact conversion.
    """
    path = pathlib.Path(path)
    im, raw = _open(path, what)
    return _to_rgb(im, path, what), _mode_label(im, raw)


def read_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """An 8-bit RGB PIL image of the file at ``path`` (see :func:`read_rgb`).

    Grayscale (8- and 16-bit), bilevel, palette, RGBA (alpha ignored, not
    composited), CMYK and 16-bit colour files are converted as the module
    docstring says; float (``F``) and other modes without an exact conversion
    raise :class:`DatasetError` naming the file.
    """
    return read_rgb(path, what)[0]


def _read_16bit_colour(path: pathlib.Path, what: str, mode: str, shape: tuple[int, int]) -> np.ndarray:
    """All channels of a 16-bit colour file at full depth, read with OpenCV (alpha, if any, last)."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None:
        raise DatasetError(
            f"The {what} {path} is a 16-bit colour image (decoded as {mode}); Pillow keeps only the high byte of "
            "each sample, so values below 256 would read as 0. Save the mask as an 8-bit or 16-bit grayscale PNG "
            "(or install opencv-python-headless, which reads it at full depth)."
        )
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None or a.shape[:2] != shape:
        raise DatasetError(
            f"Cannot read the {what} {path} at 16 bits with OpenCV (Pillow decodes it as {mode} "
            f"{shape[1]}x{shape[0]}). Save it as an 8-bit or 16-bit grayscale PNG."
        )
    return a


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A bool [H, W] mask: a pixel is defective if any colour channel is nonzero.

    An alpha channel is ignored; palette images are expanded to their colours;
    16-bit grayscale masks are compared at full depth (a 0/1 mask stored in 16
    bits stays 0/1, nothing is scaled or clipped). A 16-bit *colour* mask is
    read with OpenCV when it is installed, since Pillow keeps only the high
    byte of each sample; without OpenCV it raises.

    Raises:
      DatasetError: naming the file: it cannot be decoded, or its mode
        (``CMYK``, ``YCbCr``, ``LAB``, ...) has no channel-wise meaning as a mask.
    """
    path = pathlib.Path(path)
    im, raw = _open(path, "mask")
    mode = im.mode
    if _is_16bit_colour(im, raw):
        a = _read_16bit_colour(path, "mask", mode, (im.height, im.width))
        alpha = a.ndim == 3 and a.shape[-1] in (2, 4)
    elif mode in ("P", "PA"):
        a, alpha = np.asarray(im.convert("RGBA")), True
    elif mode in _MASK_MODES or _is_int16(mode):
        a, alpha = np.asarray(im), mode in _WITH_ALPHA
    else:
        raise DatasetError(
            f"The mask {path} has PIL mode {mode!r}, in which a nonzero channel does not mean a defective pixel. "
            "Save it as an 8-bit grayscale PNG with 0 for normal and 255 (or 1) for defective pixels."
        )
    if alpha:
        a = a[..., :-1]
    defective = a > 0
    return defective.any(axis=-1) if defective.ndim == 3 else defective
