"""PyramidFlow pieces beyond the golden parity: losses, ablations, template, image template."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pyramidflow as pf_config
from jaxflow_ad.flows import pyramid as pyr
from jaxflow_ad.models import pyramidflow as pf
from jaxflow_ad.spectral import mean_abs_fft2, mean_abs_fft2_reference


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 6, 10), (1, 7, 5)])
def test_half_spectrum_fourier_magnitude_equals_full(shape):
    x = jax.random.uniform(jax.random.PRNGKey(0), shape)
    np.testing.assert_allclose(mean_abs_fft2(x), mean_abs_fft2_reference(x), rtol=1e-5)


def test_pair_indices_and_losses_by_hand():
    rng = np.random.default_rng(0)
    levels = [jnp.asarray(rng.normal(size=(3, 8 // 2**i, 8 // 2**i, 2)), jnp.float32) for i in range(2)]
    i, j = pf.pair_indices(3)
    assert list(zip(i, j)) == [(0, 1), (0, 2), (1, 2)]
    d = pf.pairwise_difference_map(levels)
    ref = np.stack(
        [
            np.asarray(pyr.compose([(l[a] - l[b])[None] ** 2 for l in levels])[0].mean(-1))
            for a, b in [(0, 1), (0, 2), (1, 2)]
        ]
    )
    np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pf.fourier_loss(levels), np.abs(np.fft.fft2(ref)).mean(), rtol=1e-4)
    np.testing.assert_allclose(pf.spatial_loss(levels), ref.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="train.batch_size"):
        pf.pair_indices(1)


def test_gaussian_nll_matches_formula():
    z = [jnp.ones((2, 4, 4, 3)), jnp.zeros((2, 2, 2, 3))]
    logdet = jnp.array([1.0, 2.0])
    n = 4 * 4 * 3 + 2 * 2 * 3
    expect = np.mean([0.5 * 48 + 0.5 * n * np.log(2 * np.pi) - ld for ld in (1.0, 2.0)]) / n
    np.testing.assert_allclose(pf.gaussian_nll(z, logdet), expect, rtol=1e-6)


def _method(**model):
    cfg = pf_config.get_config("smoke")
    cfg.model.update(channels=4, levels=3, stacks=1, ksize=3, **model)
    return pf.PyramidFlow(cfg)


def _trained(method, steps=3):
    rng = np.random.default_rng(1)
    state = method.init(jax.random.PRNGKey(0), (16, 16, 3))
    step = jax.jit(method.train_step)
    for _ in range(steps):
        state, m = step(state, {"image": jnp.asarray(rng.random((4, 16, 16, 3), np.float32))}, None)
        assert np.isfinite(float(m["loss"]))
    return state


@pytest.mark.parametrize(
    "model",
    [
        dict(),
        dict(loss="spatial"),
        dict(loss="nll", volume_norm="none"),
        dict(template="zero"),
        dict(difference="composed"),
        dict(volume_norm="SVN"),
    ],
)
def test_ablations_train_and_score(model):
    method = _method(**model)
    state = _trained(method)
    rng = np.random.default_rng(2)
    state = method.fit_statistics(state, [rng.random((4, 16, 16, 3), np.float32)])
    if model.get("template") == "zero":
        assert all(float(jnp.abs(t).max()) == 0 for t in state.stats["template"])
    maps, scores = method.score(state, jnp.asarray(rng.random((2, 16, 16, 3), np.float32)))
    assert maps.shape == (2, 16, 16) and scores.shape == (2,)
    np.testing.assert_allclose(scores, maps.max(axis=(1, 2)))
    assert np.all(np.asarray(maps) >= 0)


def test_anomaly_map_is_zero_on_the_template_and_grows_with_a_defect():
    method = _method()
    state = _trained(method)
    x = np.random.default_rng(3).random((1, 16, 16, 3)).astype(np.float32)
    z = method._latents_eval(state.params, state.model_state, jnp.asarray(x))
    state = state.replace(stats={"template": z})
    m0, _ = method.score(state, jnp.asarray(x))
    np.testing.assert_allclose(m0, 0.0, atol=1e-5)
    y = x.copy()
    y[0, 4:8, 4:8] = 1.0 - y[0, 4:8, 4:8]
    m1, _ = method.score(state, jnp.asarray(y))
    inside, outside = float(m1[0, 4:8, 4:8].mean()), float(m1[0, 12:, 12:].mean())
    assert inside > 5 * outside


def test_image_template_inverts_the_whole_model():
    """Latents of an image, run back through the flow, pyramid and W, give the image again."""
    method = _method()
    state = _trained(method)
    x = np.random.default_rng(4).random((1, 16, 16, 3)).astype(np.float32) * 0.8 + 0.1
    z = method._latents_eval(state.params, state.model_state, jnp.asarray(x))
    img = method.net.image_from_latents(state.params, state.model_state, z)
    np.testing.assert_allclose(img, x, atol=2e-4)
    art = method.artifacts(state.replace(stats={"template": z}))
    np.testing.assert_allclose(art["image_template"], x[0], atol=2e-4)


def test_per_category_settings_are_data():
    assert pf.CATEGORY_SETTINGS["screw"]["levels"] == 2
    assert pf.CATEGORY_SETTINGS["carpet"] == {"levels": 8, "volume_norm": "SVN", "augment": True}
    assert pf.CATEGORY_SETTINGS["bottle"] == {"levels": 4, "volume_norm": "SVN", "augment": False}
    cfg = pf_config.get_config("paper")
    cfg.data.per_category = True
    out = pf.PyramidFlow.configure(cfg, "metal_nut")
    assert out.model.levels == 8 and out.model.volume_norm == "CVN"


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="model.loss"):
        _method(loss="l1")
    with pytest.raises(ValueError, match="model.volume_norm"):
        _method(volume_norm="BN").init(jax.random.PRNGKey(0), (16, 16, 3))
    with pytest.raises(ValueError, match="data.image_size or model.levels"):
        _method().init(jax.random.PRNGKey(0), (18, 18, 3))


def test_resnet18_encoder_variant(tmp_path):
    """Frozen ResNet18 stem + layer1 in front of the flow: 64 channels at 1/4 resolution, trains, scores."""
    from jaxflow_ad import backbones

    cfg = pf_config.get_config("smoke")
    cfg.model.update(encoder="resnet18", levels=3, stacks=1, ksize=3)
    cfg.model.backbone.random_init = True
    method = pf.PyramidFlow(cfg)
    assert method.net.channels == 64 and "RANDOM" in method.notes[0]
    state = method.init(jax.random.PRNGKey(0), (32, 32, 3))
    enc = state.model_state["encoder"]["backbone"]
    rng = np.random.default_rng(0)
    step = jax.jit(method.train_step)
    state2, m = step(state, {"image": jnp.asarray(rng.random((2, 32, 32, 3), np.float32))}, None)
    assert np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree_util.tree_leaves(enc), jax.tree_util.tree_leaves(state2.model_state["encoder"])):
        np.testing.assert_array_equal(a, b)  # the encoder is frozen
    state2 = method.fit_statistics(state2, [rng.random((2, 32, 32, 3), np.float32)])
    maps, _ = method.score(state2, jnp.asarray(rng.random((2, 32, 32, 3), np.float32)))
    assert maps.shape == (2, 8, 8)
    assert method.artifacts(state2) == {}
    # weights from a converted file are used when given
    path = tmp_path / "r18.msgpack"
    backbones.save_weights(path, "resnet18", enc)
    cfg.model.backbone.update(random_init=False, weights=str(path))
    m2 = pf.PyramidFlow(cfg)
    assert str(path) in m2.notes[0]
