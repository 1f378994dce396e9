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


def _init(method, size=16):
    return method.init(jax.random.PRNGKey(0), {"image": np.zeros((1, size, size, 3), np.uint8)})


def _trained(method, steps=3):
    rng = np.random.default_rng(1)
    stage = method.stages[0]
    state = stage.init_opt(_init(method), 1)
    step = jax.jit(stage.train_step(1))
    for _ in range(steps):
        state, m = step(state, {"image": jnp.asarray(rng.random((4, 16, 16, 3), np.float32))}, None)
        assert np.isfinite(float(m["loss"]))
    return state


@pytest.mark.parametrize(
    "model",
    [  # the default and two ablations in the default run, the others with -m slow (~4 s each cold)
        dict(),
        pytest.param(dict(loss="spatial"), marks=pytest.mark.slow),
        pytest.param(dict(loss="nll", volume_norm="none"), marks=pytest.mark.slow),
        dict(template="zero"),
        dict(difference="composed"),
        pytest.param(dict(volume_norm="SVN"), marks=pytest.mark.slow),
    ],
)
def test_ablations_train_and_score(model):
    method = _method(**model)
    state = _trained(method)
    rng = np.random.default_rng(2)
    state = method.statistics_from(state, [{"image": rng.random((4, 16, 16, 3), np.float32)}])
    if model.get("template") == "zero":
        assert all(float(jnp.abs(t).max()) == 0 for t in state.stats["template"])
    maps, scores = method.score(state, {"image": jnp.asarray(rng.random((2, 16, 16, 3), np.float32))}, None)
    assert maps.shape == (2, 16, 16) and scores.shape == (2,)
    np.testing.assert_allclose(scores, maps.max(axis=(1, 2)))
    assert np.all(np.asarray(maps) >= 0)


def test_anomaly_map_is_zero_on_the_template_and_grows_with_a_defect():
    method = _method()
    state = _trained(method)
    x = np.random.default_rng(3).random((1, 16, 16, 3)).astype(np.float32)
    z = method.latents(state, {"image": jnp.asarray(x)})
    state = state.replace(stats={"template": z})
    m0, _ = method.score(state, {"image": jnp.asarray(x)}, None)
    np.testing.assert_allclose(m0, 0.0, atol=1e-5)
    y = x.copy()
    y[0, 4:8, 4:8] = 1.0 - y[0, 4:8, 4:8]
    m1, _ = method.score(state, {"image": jnp.asarray(y)}, None)
    inside, outside = float(m1[0, 4:8, 4:8].mean()), float(m1[0, 12:, 12:].mean())
    assert inside > 5 * outside


def test_image_template_inverts_the_whole_model():
    """Latents of an image, run back through the flow, pyramid and W, give the image again."""
    method = _method()
    state = _trained(method)
    x = np.random.default_rng(4).random((1, 16, 16, 3)).astype(np.float32) * 0.8 + 0.1
    z = method.latents(state, {"image": jnp.asarray(x)})
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
        _init(_method(volume_norm="BN"))
    with pytest.raises(ValueError, match="data.image_size or model.levels"):
        _init(_method(), 18)


def test_uint8_images_give_the_float_results():
    """Samples keep images as uint8; the method converts them on the device as the reader did (XLA may
    fuse the conversion with the normalisation, so equal to float32 rounding, not bit for bit)."""
    method = _method()
    state = _trained(method)
    u8 = np.random.default_rng(5).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    f32 = np.empty(u8.shape, np.float32)
    np.multiply(u8, np.float32(1 / 255), out=f32)  # what load_split stored before
    state = method.statistics_from(state, [{"image": u8}])
    a, _ = jax.jit(method.score)(state, {"image": u8}, None)
    b, _ = jax.jit(method.score)(state, {"image": f32}, None)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(a).max()) > 0.1


@pytest.mark.slow  # 34 s; the converter parity and the ResNet taps are tested elsewhere
def test_resnet18_encoder_variant(tmp_path):
    """Frozen ResNet18 stem + layer1 in front of the flow: 64 channels at 1/4 resolution, a frozen
    extractor outside the state (and so outside every checkpoint); trains and scores on its features."""
    from jaxflow_ad import backbones
    from jaxflow_ad.engine.checkpoint import Checkpointer

    cfg = pf_config.get_config("smoke")
    cfg.model.update(encoder="resnet18", levels=3, stacks=1, ksize=3)
    cfg.model.backbone.random_init = True
    method = pf.PyramidFlow(cfg)
    ext = method.extractor
    assert method.net.channels == 64 and "RANDOM" in ext.note and ext.taps == ("layer1",)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    feats = {"layer1": np.asarray(ext(images)["layer1"])}
    assert feats["layer1"].shape == (2, 8, 8, 64)
    state = method.init(jax.random.PRNGKey(0), {"image": images[:1], "features": {"layer1": feats["layer1"][:1]}})
    assert "encoder" not in state.model_state
    n_state = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state))
    n_ext = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(ext.variables))
    assert n_ext > 100_000 > n_state / 10  # the encoder is far larger than anything left in the state
    stage = method.stages[0]
    state = stage.init_opt(state, 1)
    state2, m = jax.jit(stage.train_step(1))(state, {"image": images, "features": feats}, None)
    assert np.isfinite(float(m["loss"]))
    state2 = method.statistics_from(state2, [{"image": images, "features": feats}])
    maps, _ = method.score(state2, {"image": images, "features": feats}, None)
    assert maps.shape == (2, 8, 8)
    assert method.artifacts(state2) == {}
    # the checkpoint holds the flow and its template, not the encoder
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state2, force=True)
    ckpt.wait()
    restored = ckpt.restore(state2)
    ckpt.close()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(restored)[0]]
    assert not [p for p in paths if "encoder" in p or "backbone" in p or "layer1" in p], paths[:5]
    n_saved = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(restored))
    assert n_saved == sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state2))  # flow + Adam + template
    ext_shapes = {np.shape(x) for x in jax.tree_util.tree_leaves(ext.variables) if np.size(x) > 64}
    assert ext_shapes.isdisjoint(np.shape(x) for x in jax.tree_util.tree_leaves(restored))
    # weights from a converted file are used when given, and change the extractor's fingerprint
    path = tmp_path / "r18.msgpack"
    backbones.save_weights(path, "resnet18", ext.variables)
    cfg.model.backbone.update(random_init=False, weights=str(path))
    m2 = pf.PyramidFlow(cfg)
    assert str(path) in m2.extractor.note and m2.extractor.fingerprint == ext.fingerprint
    scaled = jax.tree_util.tree_map(lambda a: a * 1.5, ext.variables)
    backbones.save_weights(path, "resnet18", scaled)
    assert pf.PyramidFlow(cfg).extractor.fingerprint != ext.fingerprint


def test_paper_backbone_without_weights_names_the_convert_command():
    from jaxflow_ad.backbones import WeightsError

    cfg = pf_config.get_config("resnet18")
    with pytest.raises(WeightsError, match="python -m third_party.convert --arch resnet18"):
        pf.PyramidFlow(cfg)


def test_annealed_learning_rate_schedule_and_updates():
    """``train.optimizer.anneal_epochs``: constant (the official rate) until the last k epochs, then a
    half cosine down to ``lr * anneal_to``; every update's size follows it; 0 keeps the official
    constant transform."""
    o = pf_config.get_config().train.optimizer
    assert pf.lr_schedule(o, 6, 15) is None  # default: the official constant rate
    o.anneal_epochs, o.anneal_to = 2, 0.0
    s = pf.lr_schedule(o, 6, 15)
    rates = np.array([float(s(i)) for i in range(90)])
    np.testing.assert_allclose(rates[:61], o.lr, rtol=1e-6)
    assert np.all(np.diff(rates[60:]) < 0) and 0 < rates[-1] < 1e-2 * o.lr
    np.testing.assert_allclose(rates[75], o.lr / 2, rtol=1e-5)  # half way down the cosine
    o.anneal_to = 0.1
    assert float(pf.lr_schedule(o, 6, 15)(90)) == pytest.approx(0.1 * o.lr)
    o.anneal_epochs = 7
    with pytest.raises(ValueError, match="anneal_epochs"):
        pf.lr_schedule(o, 6, 15)
    # The optimizer applies it: a constant gradient's update shrinks exactly with the rate
    # (Adam's normalised step is the same every step for a constant gradient, up to its bias correction).
    o.anneal_epochs, o.anneal_to, o.weight_decay, o.clip_norm = 2, 0.0, 0.0, 1e9
    constant = o.copy_and_resolve_references()
    constant.anneal_epochs = 0
    tx, ref = pf.make_optimizer(o, 6, 15), pf.make_optimizer(constant, 6, 15)
    p, g = jnp.ones(3), jnp.full(3, 0.5)
    st, st_ref = tx.init(p), ref.init(p)
    for i in range(90):
        u, st = tx.update(g, st, p)
        u_ref, st_ref = ref.update(g, st_ref, p)
        np.testing.assert_allclose(u, u_ref * rates[i] / o.lr, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
    "variant,model,size",
    [
        ("smoke", dict(channels=4, levels=3, stacks=1, ksize=3), 16),
        ("smoke", dict(channels=4, levels=3, stacks=1, ksize=3, volume_norm="SVN", pyramid_down="avg"), 16),
        pytest.param("", {}, 128, marks=pytest.mark.slow),  # the quick start: 6 s eager
    ],
)
def test_jitted_init_is_bitwise_the_eager_one(variant, model, size):
    """PyramidFlow sets Method.jit_init: the engine's jitted init must not move a single bit."""
    assert pf.PyramidFlow.jit_init
    cfg = pf_config.get_config(variant)
    cfg.model.update(**model)
    method = pf.PyramidFlow(cfg)
    example = {"image": np.zeros((1, size, size, 3), np.uint8)}
    eager = method.init(jax.random.PRNGKey(3), example)
    jitted = jax.jit(method.init)(jax.random.PRNGKey(3), example)
    a, b = jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
