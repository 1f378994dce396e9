"""flip_rot90 / flip_rot90_samples: the dihedral texture augmentation with albumentations' probabilities."""

import collections
import itertools
import re

import numpy as np
import pytest

from jaxflow_ad.data import flip_rot90, flip_rot90_samples

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


# ----------------------------------------------------------------------------
# flip_rot90_samples: every spatial modality alike


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 11])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_samples_image_alone_equals_flip_rot90(seed, dtype):
    images = np.random.default_rng(100 + seed).integers(0, 256, (24, 6, 6, 3)).astype(dtype)
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    want = flip_rot90(images, rng_a)
    got = flip_rot90_samples({"image": images}, rng_b)
    assert set(got) == {"image"} and got["image"].dtype == dtype
    np.testing.assert_array_equal(got["image"], want)
    # Same draws consumed: the generators stay in step.
    assert rng_a.random() == rng_b.random()


def _coords(n, s, step=1):
    """Row and column index (in units of ``step`` pixels) of every pixel, [n, s/step, s/step]."""
    r, c = np.meshgrid(np.arange(s // step), np.arange(s // step), indexing="ij")
    return np.broadcast_to(r, (n, s // step, s // step)), np.broadcast_to(c, (n, s // step, s // step))


def test_samples_modalities_transformed_alike():
    n, s = 64, 8
    r, c = _coords(n, s)
    ids = np.broadcast_to(np.arange(n)[:, None, None], (n, s, s))
    # Each modality encodes the pixel's original coordinates its own way.
    image = np.stack([r, c, ids], -1).astype(np.uint8)
    xyz = np.stack([r * 0.5, c * 0.25, r * s + c], -1).astype(np.float32)
    foreground = (r < 3) & (c >= 5)  # asymmetric under every flip and turn
    r2, c2 = _coords(n, s, 2)
    features = {"a": np.stack([r2, c2], -1).astype(np.float32)}
    labels = np.arange(n, dtype=np.int32)
    batch = {"image": image, "xyz": xyz, "foreground": foreground, "features": features, "label": labels}
    out = flip_rot90_samples(batch, np.random.default_rng(3))

    assert out["image"].dtype == np.uint8 and out["xyz"].dtype == np.float32 and out["foreground"].dtype == bool
    assert out["features"]["a"].shape == (n, 4, 4, 2)
    # All eight dihedral maps occur, so the checks below cover each of them.
    assert len({out["image"][i, ..., :2].tobytes() for i in range(n)}) == 8
    # The sample order is kept.
    np.testing.assert_array_equal(out["image"][..., 2], ids)
    # The image must equal flip_rot90 on the same generator state ...
    np.testing.assert_array_equal(out["image"], flip_rot90(image, np.random.default_rng(3)))
    # ... and every other modality carries the same original coordinates at each pixel.
    ro, co = out["image"][..., 0].astype(np.float32), out["image"][..., 1].astype(np.float32)
    np.testing.assert_array_equal(out["xyz"], np.stack([ro * 0.5, co * 0.25, ro * s + co], -1))
    np.testing.assert_array_equal(out["foreground"], (ro < 3) & (co >= 5))
    # Half-resolution features: transformed in their own 4x4 grid they line up
    # with the transformed image sampled at every other pixel.
    np.testing.assert_array_equal(out["features"]["a"], np.stack([ro, co], -1)[:, ::2, ::2] // 2)
    # Non-spatial entries pass through, and the input is untouched.
    assert out["label"] is labels
    np.testing.assert_array_equal(batch["image"][..., 0], r)
    assert out["features"] is not features


def test_samples_keys_select_and_non_spatial_pass_through():
    n, s = 16, 6
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
        "xyz": rng.random((n, s, s, 3)).astype(np.float32),
        "label": np.arange(n),
        "scores": rng.random((n, 5)),
    }
    out = flip_rot90_samples(batch, np.random.default_rng(4), keys=["image"])
    np.testing.assert_array_equal(out["image"], flip_rot90(batch["image"], np.random.default_rng(4)))
    assert out["xyz"] is batch["xyz"] and out["label"] is batch["label"] and out["scores"] is batch["scores"]
    default = flip_rot90_samples(batch, np.random.default_rng(4))
    assert default["scores"] is batch["scores"] and default["label"] is batch["label"]
    assert not np.array_equal(default["xyz"], batch["xyz"])
    with pytest.raises(ValueError, match=re.escape("batch['label'] has shape (16,)")):
        flip_rot90_samples(batch, np.random.default_rng(4), keys=["image", "label"])
    with pytest.raises(ValueError, match=re.escape("keys ['depth'] are not in the batch")):
        flip_rot90_samples(batch, np.random.default_rng(4), keys=["depth"])
    with pytest.raises(ValueError, match="Nothing to augment"):
        flip_rot90_samples({"label": batch["label"]}, np.random.default_rng(4))
    with pytest.raises(ValueError, match=re.escape("batch['xyz'] has 15 samples")):
        flip_rot90_samples({**batch, "xyz": batch["xyz"][:15]}, np.random.default_rng(4))


def test_samples_rejects_non_square_rotation_naming_the_key():
    batch = {"image": np.zeros((8, 6, 6, 3), np.uint8), "features": {"b": np.zeros((8, 3, 2, 4), np.float32)}}
    with pytest.raises(ValueError, match=re.escape("square arrays: batch['features']['b'], got H, W = (3, 2)")):
        flip_rot90_samples(batch, np.random.default_rng(0), p=1.0)
    # Without rotations, flips of a non-square array are fine.
    out = flip_rot90_samples(batch, np.random.default_rng(0), p=0.0)
    np.testing.assert_array_equal(out["features"]["b"], batch["features"]["b"])
