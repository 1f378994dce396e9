"""FAIR anomaly map (Eq. 8-10)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow_ad.scoring import fair_score
from jaxflow_ad.scoring.color import rgb_to_lab
from jaxflow_ad.scoring.similarity import mean_filter, msgms_map


def test_identical_images_score_zero():
    img = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3)), jnp.float32)
    maps = fair_score.fair_anomaly_map(img, img)
    assert maps.shape == (2, 32, 32)
    np.testing.assert_allclose(np.asarray(maps), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fair_score.image_scores(maps)), 0.0, atol=1e-6)


def test_map_is_smoothed_sum_and_colour_ignores_lightness():
    rng = np.random.default_rng(1)
    img = rng.random((1, 32, 32, 3)).astype(np.float32)
    rec = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1).astype(np.float32)
    maps = jax.jit(fair_score.fair_anomaly_map)(rec, img)
    lab_r, lab_i = np.asarray(rgb_to_lab(rec)), np.asarray(rgb_to_lab(img))
    col = ((lab_r[..., 1:] - lab_i[..., 1:]) ** 2).sum(-1)
    ref = mean_filter(msgms_map(rec, img) + 3e-4 * col, 21)
    np.testing.assert_allclose(np.asarray(maps), np.asarray(ref), atol=1e-6)
    # a pure lightness change of a gray image has no a/b difference
    gray = np.full((1, 8, 8, 3), 0.4, np.float32)
    np.testing.assert_allclose(np.asarray(fair_score.color_difference_map(gray + 0.2, gray)), 0.0, atol=1e-6)
    # the official BGR quirk changes the colour term of coloured images only
    c1 = np.asarray(fair_score.color_difference_map(rec, img, "rgb"))
    c2 = np.asarray(fair_score.color_difference_map(rec, img, "bgr"))
    assert not np.allclose(c1, c2)


def test_image_score_is_max_and_defect_localised():
    img = np.full((2, 48, 48, 3), 0.5, np.float32)
    rec = img.copy()
    rec[1, 20:28, 20:28] = [0.9, 0.1, 0.1]
    maps = np.asarray(fair_score.fair_anomaly_map(jnp.asarray(rec), jnp.asarray(img)))
    scores = np.asarray(fair_score.image_scores(jnp.asarray(maps)))
    np.testing.assert_allclose(scores, maps.reshape(2, -1).max(1))
    assert scores[1] > scores[0] + 0.01
    r, c = np.unravel_index(maps[1].argmax(), maps[1].shape)
    assert 20 <= r < 28 and 20 <= c < 28
    assert maps[1, 24, 24] > 5 * maps[1, 4, 4] and maps[1, 4, 4] < 1e-6
