"""flip_rot90: the dihedral texture augmentation with albumentations' probabilities."""

import collections
import itertools

import numpy as np
import pytest

from jaxflow_ad.data import flip_rot90

# A 2x2 image with four distinct values identifies each of the 8 dihedral maps.
REF = np.array([[0, 1], [2, 3]])


def _apply(x, h, v, k):
    if h:
        x = x[:, ::-1]
    if v:
        x = x[::-1, :]
    return np.rot90(x, k)


def _expected_distribution(p):
    """Enumerate HorizontalFlip(p) -> VerticalFlip(p) -> RandomRotate90(p)."""
    dist = collections.Counter()
    for h, v, r in itertools.product([0, 1], repeat=3):
        ph = (p if h else 1 - p) * (p if v else 1 - p) * (p if r else 1 - p)
        for k in range(4) if r else [0]:
            dist[tuple(_apply(REF, h, v, k).ravel())] += ph / (4 if r else 1)
    return dist


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_distribution_matches_albumentations(p):
    n = 8000
    out = flip_rot90(np.broadcast_to(REF, (n, 2, 2)), np.random.default_rng(0), p=p)
    seen = collections.Counter(tuple(o.ravel()) for o in out)
    want = _expected_distribution(p)
    assert set(seen) <= set(want) and len(want) == 8
    for key, prob in want.items():
        assert abs(seen[key] / n - prob) < 0.02, (key, seen[key] / n, prob)


def test_deterministic_and_masks_follow():
    rng_img = np.random.default_rng(1)
    images = rng_img.random((16, 8, 8, 3)).astype(np.float32)
    masks = images[..., 0] > 0.5
    a, ma = flip_rot90(images, np.random.default_rng(5), masks=masks)
    b = flip_rot90(images, np.random.default_rng(5))
    c = flip_rot90(images, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == images.shape
    np.testing.assert_array_equal(ma, a[..., 0] > 0.5)
    # The input is not modified.
    np.testing.assert_array_equal(masks, images[..., 0] > 0.5)


def test_p_zero_and_one():
    x = np.random.default_rng(0).random((6, 4, 4))
    np.testing.assert_array_equal(flip_rot90(x, np.random.default_rng(0), p=0.0), x)
    y = flip_rot90(x, np.random.default_rng(0), p=1.0)
    # Both flips = rot180, then k quarter turns.
    for xi, yi in zip(x, y):
        assert any(np.array_equal(yi, np.rot90(xi, 2 + k)) for k in range(4))


def test_rejects_non_square_rotation():
    with pytest.raises(ValueError, match="square"):
        flip_rot90(np.zeros((8, 4, 6, 3)), np.random.default_rng(0), p=1.0)
