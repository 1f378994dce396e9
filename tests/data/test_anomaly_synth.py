"""Synthetic anomalies: Perlin masks, large CutPaste, texture sources, batching."""

import os

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import anomaly_synth as A


def _images(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.25 * np.sin(2 * np.pi * (3 * xx + rng.random((n, 1, 1))))
    return np.clip(
        np.stack([base, base * 0.8, 0.3 + 0 * base], -1) + 0.05 * rng.random((n, size, size, 3)), 0, 1
    ).astype(np.float32)


def test_perlin_noise_matches_lattice_and_range():
    rng = np.random.default_rng(0)
    n = A.perlin_noise((32, 32), (4, 4), rng)
    assert n.shape == (32, 32)
    np.testing.assert_allclose(n[::8, ::8], 0.0, atol=1e-12)  # zero at the lattice nodes
    assert np.abs(n).max() <= np.sqrt(2) * 1.0 + 1e-9
    assert n.std() > 0.05
    odd = A.perlin_noise((30, 22), (2, 8), rng)  # sizes not divisible by the lattice work too
    assert odd.shape == (30, 22) and np.isfinite(odd).all()


def test_perlin_mask_deterministic_and_binary():
    m1 = A.perlin_mask((64, 64), np.random.default_rng(7))
    m2 = A.perlin_mask((64, 64), np.random.default_rng(7))
    np.testing.assert_array_equal(m1, m2)
    assert m1.dtype == np.float32 and set(np.unique(m1)) <= {0.0, 1.0}
    masks = [A.perlin_mask((64, 64), np.random.default_rng(s)) for s in range(20)]
    assert any(m.sum() > 0 for m in masks)
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])
    fractions = [m.mean() for m in masks]
    assert max(fractions) < 0.6  # the 0.5 threshold keeps blobs, never the whole image


@pytest.mark.parametrize("size", [32, 64, 100])
def test_clean_cutpaste_sides_and_content(size):
    img = _images(1, size)[0]
    for seed in range(20):
        out, mask = A.large_cutpaste(img, np.random.default_rng(seed), {"cutpaste_mode": "clean"})
        rows, cols = np.nonzero(mask)
        ph, pw = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == ph * pw  # one filled rectangle
        assert 0.8 * size - 1e-9 <= ph <= 0.9 * size and 0.8 * size - 1e-9 <= pw <= 0.9 * size
        assert 0.64 * size**2 - 1e-6 <= mask.sum() <= 0.81 * size**2  # 80-90 % of the side
        np.testing.assert_array_equal(out[mask == 0], img[mask == 0])  # nothing changes outside
        # the pasted content is a crop of the same image, moved
        assert not np.array_equal(out, img)


def test_official_cutpaste_quirk():
    size = 64
    img = _images(1, size)[0]
    heights, blacks = [], []
    for seed in range(40):
        out, mask = A.large_cutpaste(img, np.random.default_rng(seed))
        rows, cols = np.nonzero(mask)
        ph, pw = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == ph * pw
        assert ph <= round(0.9 * size) and pw <= round(0.9 * size) and ph % 1 == 0
        assert rows.min() >= 1 and cols.min() >= 1  # 1-px margin of the paste position
        np.testing.assert_array_equal(out[mask == 0], img[mask == 0])
        heights.append(ph)
        blacks.append(np.mean(out[mask == 1] == 0.0))
    # clipping at the border makes many patches far smaller than 80 % of the side
    assert min(heights) < 0.5 * size
    # rotation about the top-left corner by integer radians leaves much of the patch black
    assert np.mean(blacks) > 0.3


def test_rotated_patch_like_warp_affine():
    patch = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    np.testing.assert_allclose(A._warp_about_top_left(patch, 0.0), patch)
    # angle pi: dst(x, y) samples src(-x, -y): only the corner pixel (0, 0) stays inside
    out = A._warp_about_top_left(patch, np.pi)[..., 0]
    assert out[0, 0] == pytest.approx(0.0) and np.allclose(out[1:, 1:], 0.0)
    # angle pi/2: dst(x, y) samples src(x=y, y=-x): the first column is the first row turned
    out = A._warp_about_top_left(patch, np.pi / 2)[..., 0]
    np.testing.assert_allclose(out[:, 0], patch[0, :3, 0], atol=1e-5)
    np.testing.assert_allclose(out[:, 1:], 0.0, atol=1e-5)


def test_synthesize_batch_deterministic_and_consistent():
    imgs = _images(8, 32)
    cfg = {"p_anomaly": 1.0}
    a1, m1 = A.synthesize(imgs, np.random.default_rng(3), cfg)
    a2, m2 = A.synthesize(imgs, np.random.default_rng(3), cfg)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(m1, m2)
    assert a1.shape == imgs.shape and a1.dtype == np.float32 and m1.shape == (8, 32, 32)
    assert a1.min() >= 0 and a1.max() <= 1
    assert set(np.unique(m1)) <= {0.0, 1.0}
    np.testing.assert_allclose(a1[m1 == 0], imgs[m1 == 0], atol=1e-6)  # untouched outside the masks
    assert m1.sum() > 0
    clean, mclean = A.synthesize(imgs, np.random.default_rng(3), {"p_anomaly": 0.0})
    np.testing.assert_array_equal(clean, imgs)
    assert mclean.sum() == 0
    # the default schedule leaves roughly half of the images clean
    _, m = A.synthesize(_images(32, 32), np.random.default_rng(0))
    assert 6 <= int((m.reshape(32, -1).sum(1) == 0).sum()) <= 28


def test_texture_folder_dtd_layout(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("banded", "dotted"):
        d = tmp_path / "images" / cls
        d.mkdir(parents=True)
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(d / f"{cls}_0001.jpg")
    files = A.list_texture_files(str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["banded_0001.jpg", "dotted_0001.jpg"]
    tex = A.load_texture(files[0], (32, 16))
    assert tex.shape == (32, 16, 3) and tex.dtype == np.float32
    imgs = _images(4, 32)
    out, masks = A.synthesize(
        imgs, np.random.default_rng(1), {"p_anomaly": 1.0, "p_cutpaste": 0.0, "texture_root": str(tmp_path)}
    )
    assert out.shape == imgs.shape and masks.sum() > 0
    with pytest.raises(FileNotFoundError, match="images/<class>"):
        A.list_texture_files(str(tmp_path / "images" / "banded"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        A.list_texture_files(str(tmp_path / "nope"))


def test_texture_ops_stay_in_range():
    img = _images(1, 32)[0]
    rng = np.random.default_rng(0)
    for op in A.TEXTURE_OPS + A.NO_DTD_EXTRA_OPS:
        out = np.clip(op(img, rng), 0, 1)
        assert out.shape == img.shape and np.isfinite(out).all()
    assert A.augment_texture(img, rng, 3, extra_ops=True).dtype == np.float32


def test_random_rotate_and_config_errors():
    imgs = _images(6, 32)
    out = A.random_rotate(imgs, np.random.default_rng(0), {"rotate_prob": 1.0})
    assert out.shape == imgs.shape and not np.allclose(out, imgs)
    np.testing.assert_array_equal(A.random_rotate(imgs, np.random.default_rng(0), {"rotate_prob": 0.0}), imgs)
    with pytest.raises(ValueError, match="unknown anomaly-synthesis keys"):
        A.SynthConfig.from_config({"p_cutpast": 0.5})
    with pytest.raises(ValueError, match="cutpaste_mode"):
        A.SynthConfig(cutpaste_mode="big")
