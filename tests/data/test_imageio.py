"""Decoding image and mask files (jaxflow_ad.data.imageio) in every PIL mode, alone and through the readers."""

import logging
import re
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import DatasetError, dagm, get_reader, imageio, mvtec
from jaxflow_ad.data.anomaly_synth import load_texture

from .fixtures import H, W, write_mvtec
from .test_dagm import S as DAGM_S
from .test_dagm import write_class

# 16-bit test values: the ends, 257 * k (exactly k in 8 bits), values just either side of a rounding
# boundary (v / 257 = k + 0.5 lies between 257k + 128 and 257k + 129) and a gradient.
SPECIAL = [0, 1, 128, 129, 257 * 10, 257 * 200 + 128, 257 * 200 + 129, 32767, 32768, 65279, 65280, 65534, 65535]


def values16(h: int = H, w: int = W) -> np.ndarray:
    """uint16 [h, w]: ``SPECIAL`` then a gradient over the whole 16-bit range."""
    v = np.linspace(0, 65535, h * w).round().astype(np.uint16)
    v[: len(SPECIAL)] = SPECIAL
    return v.reshape(h, w)


def to8(v: np.ndarray) -> np.ndarray:
    """The documented scale, computed in float: round(v * 255 / 65535)."""
    return np.rint(np.asarray(v, np.float64) * 255 / 65535).astype(np.uint8)


def write_png(path, samples: np.ndarray, color_type: int, depth: int = 16) -> None:
    """A PNG written byte by byte: ``samples`` is [H, W] or [H, W, C] in the channel order of the
    PNG colour type (0 gray, 2 RGB, 4 gray+alpha, 6 RGBA), no filtering."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = samples.shape[:2]
    rows = np.ascontiguousarray(samples.astype(">u2" if depth == 16 else np.uint8)).reshape(h, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(data)


def rgb16() -> np.ndarray:
    """uint16 [H, W, 3] with three different channels (so that a channel swap shows)."""
    v = values16()
    return np.stack([v, 65535 - v, np.roll(v, 7)], axis=-1)


def _match(path) -> str:
    return re.escape(str(path))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "jaxflow_ad"]


# ----------------------------------------------------------------------------
# 16-bit grayscale


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    v = values16()
    path = tmp_path / "gray16.png"
    Image.fromarray(v).save(path)
    assert Image.open(path).mode == "I;16"  # what Pillow gives a 16-bit grayscale PNG
    got = np.asarray(mvtec.read_image(path))
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    want = to8(v)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], want)
    # The spot checks: 0 -> 0, 257 * 10 -> 10, 65535 -> 255, and far from all white.
    assert got[0, 0, 0] == 0 and got[0, 4, 0] == 10 and got[0, 12, 0] == 255
    assert (got < 255).mean() > 0.9


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "int32"], ids=["I;16 tiff", "I;16B tiff", "I tiff"])
def test_16bit_gray_tiff_modes(tmp_path, dtype):
    v = values16()
    path = tmp_path / "gray16.tif"
    Image.fromarray(v.astype(dtype)).save(path)
    assert Image.open(path).mode == {"<u2": "I;16", ">u2": "I;16B", "int32": "I"}[dtype]
    got, mode = imageio.read_rgb(path)
    assert mode == Image.open(path).mode
    np.testing.assert_array_equal(np.asarray(got), np.repeat(to8(v)[..., None], 3, axis=-1))


def test_32bit_int_beyond_16_bits_raises(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(path)
    with pytest.raises(DatasetError, match=_match(path) + r".*mode 'I'.*0\.\.70000.*Convert it"):
        mvtec.read_image(path)


def test_scale_table_is_the_rounded_scale():
    v = np.arange(65536)
    np.testing.assert_array_equal(imageio._U16_TO_U8[v], to8(v))


# ----------------------------------------------------------------------------
# 8-bit modes, exactly


def test_8bit_gray_and_alpha_modes(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    alpha[0, :3] = 0  # fully transparent pixels keep their stored colour: alpha is ignored, not composited
    cases = {
        "L": (Image.fromarray(gray), np.stack([gray] * 3, -1)),
        "LA": (Image.fromarray(np.stack([gray, alpha], -1), "LA"), np.stack([gray] * 3, -1)),
        "RGB": (Image.fromarray(rgb), rgb),
        "RGBA": (Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1)), rgb),
    }
    for name, (im, want) in cases.items():
        path = tmp_path / f"{name}.png"
        im.save(path)
        got, mode = imageio.read_rgb(path)
        assert mode == name and got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)


def test_bilevel(tmp_path):
    bits = np.zeros((H, W), bool)
    bits[3:9, 5:17] = True
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    want = np.where(bits, 255, 0).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(mvtec.read_image(path)), np.stack([want] * 3, -1))


@pytest.mark.parametrize("transparency", [None, 1, bytes([255, 0, 128])], ids=["opaque", "index", "bytes"])
def test_palette(tmp_path, transparency, recwarn):
    palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], np.uint8)
    index = np.arange(H * W).reshape(H, W) % 3
    im = Image.fromarray(index.astype(np.uint8), "P")
    im.putpalette(palette.ravel().tolist())
    path = tmp_path / "palette.png"
    im.save(path, **({} if transparency is None else {"transparency": transparency}))
    assert Image.open(path).mode == "P" and ("transparency" in Image.open(path).info) == (transparency is not None)
    got = np.asarray(mvtec.read_image(path))
    # Every pixel has its palette colour, transparent ones too (the alpha is ignored).
    np.testing.assert_array_equal(got, palette[index])
    assert not [w for w in recwarn if "Transparency" in str(w.message)]


def test_cmyk_converted_as_pil_does(tmp_path):
    im = Image.new("CMYK", (W, H), (0, 255, 0, 0))
    path = tmp_path / "cmyk.tif"
    im.save(path)
    got = np.asarray(mvtec.read_image(path))
    np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))
    assert got[0, 0].tolist() == [255, 0, 255]


# ----------------------------------------------------------------------------
# 16-bit colour


def _write_rgb16(path, writer: str, samples: np.ndarray) -> None:
    if writer == "cv2":
        cv2 = pytest.importorskip("cv2")
        # OpenCV stores BGR(A): reverse the colour channels so that the file holds ``samples``.
        order = [2, 1, 0, 3][: samples.shape[-1]]
        assert cv2.imwrite(str(path), samples[..., order])
    else:
        write_png(path, samples, {3: 2, 4: 6}[samples.shape[-1]])


@pytest.mark.parametrize("writer", ["png bytes", "cv2"])
def test_16bit_rgb_png_within_one_level_channels_in_order(tmp_path, writer):
    v = rgb16()
    path = tmp_path / "rgb16.png"
    _write_rgb16(path, writer, v)
    got, mode = imageio.read_rgb(path)
    a = np.asarray(got)
    assert mode == "RGB (16-bit)" and a.shape == (H, W, 3) and a.dtype == np.uint8
    diff = a.astype(int) - to8(v).astype(int)
    assert np.abs(diff).max() <= 1
    # R stays R: the channels differ a lot, so a swap would be far off.
    assert np.abs(a.astype(int) - to8(v[..., ::-1]).astype(int)).max() > 100
    assert a[0, 12].tolist() == [255, 0, a[0, 12, 2]] and a[0, 0].tolist()[:2] == [0, 255]


def test_16bit_rgba_and_gray_alpha_png(tmp_path):
    v = rgb16()
    alpha = np.zeros((H, W), np.uint16)  # fully transparent: still the stored colours
    write_png(tmp_path / "rgba16.png", np.concatenate([v, alpha[..., None]], -1), 6)
    got = np.asarray(mvtec.read_image(tmp_path / "rgba16.png"))
    assert np.abs(got.astype(int) - to8(v).astype(int)).max() <= 1
    write_png(tmp_path / "la16.png", np.stack([v[..., 0], alpha], -1), 4)
    got = np.asarray(mvtec.read_image(tmp_path / "la16.png"))
    assert np.abs(got.astype(int) - to8(v[..., :1]).astype(int)).max() <= 1
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_16bit_colour_detected_by_raw_mode():
    rgb, gray16 = Image.new("RGB", (1, 1)), Image.new("I;16", (1, 1))
    assert imageio._is_16bit_colour(rgb, "RGB;16B") and imageio._is_16bit_colour(rgb, "RGB;16N")
    assert not imageio._is_16bit_colour(rgb, "RGB")
    assert not imageio._is_16bit_colour(rgb, "BGR;16")  # BMP RGB565: 16 bits per pixel, decoded exactly
    assert not imageio._is_16bit_colour(gray16, "I;16B")  # 16-bit gray keeps all 16 bits in PIL


def test_16bit_rgb_tiff(tmp_path):
    cv2 = pytest.importorskip("cv2")
    v = rgb16()
    path = tmp_path / "rgb16.tif"
    assert cv2.imwrite(str(path), v[..., ::-1])
    got = np.asarray(mvtec.read_image(path))
    assert np.abs(got.astype(int) - to8(v).astype(int)).max() <= 1
    assert np.abs(got.astype(int) - to8(v[..., ::-1]).astype(int)).max() > 100


# ----------------------------------------------------------------------------
# Modes without an exact 8-bit reading


def test_float_tiff_raises_naming_the_file(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.full((H, W), 0.5, np.float32)).save(path)
    assert Image.open(path).mode == "F"
    with pytest.raises(DatasetError, match=_match(path) + r".*floating-point.*mode 'F'.*8-bit PNG"):
        mvtec.read_image(path)


def test_lab_raises(tmp_path):
    path = tmp_path / "lab.tif"
    Image.new("LAB", (W, H), (50, 0, 0)).save(path)  # PIL's LAB -> RGB only reorders bands
    with pytest.raises(DatasetError, match=_match(path) + r".*mode 'LAB'.*no exact conversion.*8-bit"):
        mvtec.read_image(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.png"
    path.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="Cannot read the texture image " + _match(path)):
        imageio.read_image(path, what="texture image")


# ----------------------------------------------------------------------------
# Masks


def _mask_bits() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[4:11, 6:15] = True
    m[15, 20] = True  # a single pixel
    return m


def test_16bit_gray_mask_binarised_at_full_depth(tmp_path):
    want = _mask_bits()
    for values in ([1], [256, 65535], [1, 255, 256, 40000]):  # 1 and 255 scale to 0 and 1 in 8 bits
        m = np.zeros((H, W), np.uint16)
        m[want] = np.resize(values, int(want.sum()))
        path = tmp_path / f"mask16_{values[0]}.png"
        Image.fromarray(m).save(path)
        assert Image.open(path).mode == "I;16"
        np.testing.assert_array_equal(mvtec.read_mask(path), want, err_msg=str(values))


def test_16bit_rgb_mask_small_values_with_opencv(tmp_path):
    pytest.importorskip("cv2")
    want = _mask_bits()
    m = np.zeros((H, W, 3), np.uint16)
    m[want, 0] = 1  # only red, and below 256: Pillow's high byte is 0
    path = tmp_path / "mask48.png"
    write_png(path, m, 2)
    np.testing.assert_array_equal(mvtec.read_mask(path), want)
    rgba = np.concatenate([m, np.full((H, W, 1), 65535, np.uint16)], -1)  # opaque alpha ignored
    write_png(path, rgba, 6)
    np.testing.assert_array_equal(mvtec.read_mask(path), want)


def test_16bit_rgb_mask_without_opencv_raises(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    path = tmp_path / "mask48.png"
    write_png(path, np.zeros((H, W, 3), np.uint16), 2)
    with pytest.raises(DatasetError, match=_match(path) + ".*16-bit colour.*grayscale PNG"):
        mvtec.read_mask(path)


def test_palette_mask_uses_colours_not_indices(tmp_path):
    want = _mask_bits()
    index = np.where(want, 1, 2).astype(np.uint8)  # normal pixels have index 2, which is black
    index[0, 0] = 0  # index 0: black and fully transparent
    im = Image.fromarray(index, "P")
    im.putpalette([0, 0, 0, 0, 0, 200, 0, 0, 0])  # 0 black, 1 blue, 2 black
    path = tmp_path / "palette.png"
    im.save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    np.testing.assert_array_equal(mvtec.read_mask(path), want)


def test_cmyk_mask_raises(tmp_path):
    path = tmp_path / "mask.tif"
    Image.new("CMYK", (W, H)).save(path)
    with pytest.raises(DatasetError, match="The mask " + _match(path) + r" has PIL mode 'CMYK'.*8-bit grayscale"):
        mvtec.read_mask(path)


# ----------------------------------------------------------------------------
# Through the readers


def test_mvtec_reader_16bit_train_images_and_masks(tmp_path, caplog):
    root = write_mvtec(tmp_path / "mvtec", n_train=2)
    cat = root / "widget"
    rng = np.random.default_rng(3)
    train = [rng.integers(0, 65536, (H, W), dtype=np.uint16) for _ in range(2)]
    train[0][0, :4] = [0, 257 * 10, 65535, 65280]
    for i, v in enumerate(train):
        Image.fromarray(v).save(cat / "train" / "good" / f"{i:03d}.png")
    mask = np.zeros((H, W), np.uint16)
    mask[2:5, 3:9] = 1  # a 0/1 mask in 16 bits
    Image.fromarray(mask).save(cat / "ground_truth" / "scratch" / "000_mask.png")

    reader = get_reader("mvtec")
    with caplog.at_level(logging.WARNING, logger="jaxflow_ad"):
        s = reader.load_split(root, "widget", "train", None, num_workers=2)
    assert s.images.dtype == np.uint8 and s.images.shape == (2, H, W, 3)
    for i, v in enumerate(train):
        np.testing.assert_array_equal(s.images[i], np.repeat(to8(v)[..., None], 3, -1))
    assert s.images[0, 0, :4, 0].tolist() == [0, 10, 255, 254]
    assert not _warnings(caplog)  # all 16-bit gray, one size: nothing to warn about

    small = reader.load_split(root, "widget", "train", 8, num_workers=1)
    want = np.asarray(Image.fromarray(to8(train[1])).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small.images[1], want)

    test = reader.load_split(root, "widget", "test", 8)
    np.testing.assert_array_equal(test.masks[test.defect_types.index("scratch")], mask > 0)


def test_dagm_reader_16bit_images(tmp_path):
    base = write_class(tmp_path / "dagm")
    rng = np.random.default_rng(4)
    written = {}
    for name in ("0001.PNG", "0003.PNG", "0004.PNG", "0006.PNG"):  # the normal Train images
        v = rng.integers(0, 65536, (DAGM_S, DAGM_S), dtype=np.uint16)
        Image.fromarray(v).save(base / "Train" / name)
        written[name] = v
    s = get_reader("dagm").load_split(tmp_path / "dagm", "Class1", "train", None)
    assert [p.rsplit("/", 1)[-1] for p in s.paths] == list(written)
    for i, v in enumerate(written.values()):
        np.testing.assert_array_equal(s.images[i], np.repeat(to8(v)[..., None], 3, -1))


def test_texture_reading_scales_16bit(tmp_path):
    v = values16()
    path = tmp_path / "texture.png"
    Image.fromarray(v).save(path)
    tex = load_texture(str(path), (H, W))  # same size: no resampling
    assert tex.dtype == np.float32 and tex.shape == (H, W, 3)
    np.testing.assert_array_equal(tex, np.repeat(to8(v)[..., None], 3, -1).astype(np.float32) / 255.0)
    bad = tmp_path / "float.tif"
    Image.fromarray(np.zeros((H, W), np.float32)).save(bad)
    with pytest.raises(DatasetError, match="texture image " + _match(bad)):
        load_texture(str(bad), (H, W))


# ----------------------------------------------------------------------------
# Warnings: harmless but maybe unintended


def test_warns_mixed_modes_once(tmp_path, caplog):
    root = write_mvtec(tmp_path / "mvtec")  # test/good/000 is grayscale, the other test images RGB
    with caplog.at_level(logging.WARNING, logger="jaxflow_ad"):
        mvtec.load_split(root, "widget", "train", 8)
        assert not _warnings(caplog)
        mvtec.load_split(root, "widget", "test", 8)
    (msg,) = _warnings(caplog)
    gray = root / "widget" / "test" / "good" / "000.png"
    assert re.search(r"widget/test do not all have the same mode: 4 RGB \(e\.g\. .*, \.\.\.\); 1 L \(e\.g\. ", msg)
    assert msg.count(str(root)) == 4  # three RGB examples and the grayscale one
    assert re.search(r"1 L \(e\.g\. " + _match(gray) + r"\)", msg)


def test_warns_16bit_colour_among_8bit(tmp_path, caplog):
    root = write_mvtec(tmp_path / "mvtec")
    odd = root / "widget" / "train" / "good" / "002.png"
    write_png(odd, rgb16(), 2)
    with caplog.at_level(logging.WARNING, logger="jaxflow_ad"):
        mvtec.load_split(root, "widget", "train", 8)
    (msg,) = _warnings(caplog)
    assert re.search(r"2 RGB \(e\.g\. .*\); 1 RGB \(16-bit\) \(e\.g\. " + _match(odd) + r"\)", msg)


def test_warns_mixed_sizes_once(tmp_path, caplog):
    root = write_mvtec(tmp_path / "mvtec", n_train=5)
    odd = root / "widget" / "train" / "good" / "003.png"
    Image.fromarray(np.zeros((H, W + 6, 3), np.uint8)).save(odd)
    with caplog.at_level(logging.WARNING, logger="jaxflow_ad"):
        s = mvtec.load_split(root, "widget", "train", 8)
    assert s.images.shape == (5, 8, 8, 3)
    (msg,) = _warnings(caplog)
    assert f"native size (WxH): 4 {W}x{H} (e.g. " in msg and "resized to 8x8" in msg
    assert re.search(rf"1 {W + 6}x{H} \(e\.g\. " + _match(odd) + r"\)", msg)
    # At the native size, different sizes stay an error.
    with pytest.raises(DatasetError, match="differ in size"):
        mvtec.load_split(root, "widget", "train", None)


def test_warns_empty_defect_masks_once(tmp_path, caplog):
    root = write_mvtec(tmp_path / "mvtec", defects={"crack": 7})
    gt = root / "widget" / "ground_truth" / "crack"
    for i in range(1, 8):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(gt / f"{i - 1:03d}_mask.png")
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(gt / "003_mask.png")  # one non-empty mask
    with caplog.at_level(logging.WARNING, logger="jaxflow_ad"):
        s = mvtec.load_split(root, "widget", "test", 8)
    empty = [m for m in _warnings(caplog) if "all-zero mask" in m]
    assert len(empty) == 1
    msg = empty[0]
    assert msg.startswith("6 defect image(s) of widget/test have an all-zero mask: ")
    crack = root / "widget" / "test" / "crack"
    for stem in ("000", "001", "002", "004", "005"):
        assert f"{crack / stem}.png (mask {stem}_mask.png)" in msg
    assert "003.png" not in msg and "006.png" not in msg and " and 1 more." in msg
    assert s.labels.sum() == 7  # still defective samples


def test_dagm_warns_empty_mask(tmp_path, caplog):
    base = write_class(tmp_path / "dagm")
    label = base / "Test" / "Label" / "0004_label.PNG"
    Image.fromarray(np.zeros((DAGM_S, DAGM_S), np.uint8)).save(label)
    with caplog.at_level(logging.WARNING, logger="jaxflow_ad"):
        dagm.load_split(tmp_path / "dagm", "Class1", "test", 8)
    (msg,) = _warnings(caplog)
    assert msg.startswith("1 defect image(s) of Class1/test have an all-zero mask: ")
    assert str(base / "Test" / "0004.PNG") in msg
