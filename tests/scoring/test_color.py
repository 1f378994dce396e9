"""sRGB -> CIELAB against scikit-image."""

import jax
import numpy as np
from skimage.color import rgb2lab

from jaxflow_ad.scoring.color import rgb_to_lab


def test_lab_matches_skimage():
    rng = np.random.default_rng(0)
    rgb = rng.random((3, 17, 19, 3)).astype(np.float32)
    rgb[0, 0, :3] = [[0, 0, 0], [1, 1, 1], [0.01, 0.02, 0.001]]  # black, white, the linear branches
    ours = np.asarray(jax.jit(rgb_to_lab)(rgb))
    ref = rgb2lab(rgb.astype(np.float64), channel_axis=-1)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    np.testing.assert_allclose(ours[0, 0, 1], [100.0, 0.0, 0.0], atol=1e-2)  # white is neutral
