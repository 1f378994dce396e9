"""Image resizing as the official loaders do it: PIL bilinear (PyramidFlow) and OpenCV INTER_LINEAR (FAIR)."""

import numpy as np
import pytest
import skimage.data
from PIL import Image

from jaxflow_ad.data import mvtec
from jaxflow_ad.data.resize import cv2_linear_resize, resize_image


def _photo():
    return np.ascontiguousarray(skimage.data.astronaut()[:510, :500])  # 510 x 500 RGB


@pytest.mark.parametrize("shape,size", [((510, 500), (256, 256)), ((64, 64), (100, 90)), ((37, 53), (16, 16))])
def test_cv2_linear_equals_opencv_within_one_grey_level(shape, size):
    cv2 = pytest.importorskip("cv2")
    img = _photo()[: shape[0], : shape[1]]
    if shape == (37, 53):
        img = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    ours = cv2_linear_resize(img, size)
    ref = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert ours.shape == ref.shape and diff.max() <= 1, diff.max()
    assert (diff == 0).mean() > 0.8  # measured 87-89 %: OpenCV rounds its weights to 11 bits


def test_cv2_linear_by_hand():
    """Halving: every output pixel is the mean of a 2x2 block, rounded half up (no antialiasing)."""
    a = np.array([[0, 2, 10, 20], [1, 3, 30, 41], [5, 5, 0, 0], [5, 6, 0, 1]], np.uint8)
    np.testing.assert_array_equal(cv2_linear_resize(a, (2, 2)), [[2, 25], [5, 0]])  # 1.5 -> 2, 25.25 -> 25
    # shrinking by 4 samples between two pixels only: most of a thin line is lost, as in OpenCV
    line = np.zeros((8, 8), np.uint8)
    line[:, 0] = 255
    assert cv2_linear_resize(line, (2, 2)).max() == 0


def test_the_two_filters_differ_where_fair_looks():
    """On a photograph shrunk 2x the high-pass part (what FAIR restores from) differs a lot between filters."""
    from jaxflow_ad.spectral.filters import highpass_filter

    img = Image.fromarray(_photo()[:512, :500]).resize((512, 512))
    a = resize_image(img, 256, "pil_bilinear").astype(np.float32) / 255
    b = resize_image(img, 256, "cv2_linear").astype(np.float32) / 255
    ha, hb = (np.asarray(highpass_filter(x[None], "butterworth", 30.0, 2.0)) for x in (a, b))
    assert np.abs(ha - hb).max() / np.abs(hb).max() > 0.1
    np.testing.assert_array_equal(a * 255, np.asarray(img.resize((256, 256), Image.Resampling.BILINEAR)))


def test_load_split_resize_option(tmp_path):
    img = _photo()[:64, :64]
    (tmp_path / "c" / "train" / "good").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "c" / "train" / "good" / "000.png")
    a = mvtec.load_split(tmp_path, "c", "train", 32, resize="cv2_linear")
    np.testing.assert_array_equal(a.images[0], cv2_linear_resize(img, (32, 32)))
    b = mvtec.load_split(tmp_path, "c", "train", 32)
    np.testing.assert_array_equal(b.images[0], np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR)))
    assert not np.array_equal(a.images, b.images)
    with pytest.raises(ValueError, match="data.resize"):
        mvtec.load_split(tmp_path, "c", "train", 32, resize="bicubic")
