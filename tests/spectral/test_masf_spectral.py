"""MASF spectral operations: SDM split, AMFD masks, TTSA phase views, distillation loss.

References are float64 NumPy; the half-precision guarantee (the paper lost
categories to FP16 overflow in its FFTs) is checked on dense checkerboards and
random maps, values and gradients, and on the dtypes of the FFTs in the jaxprs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.spectral import masf

KEY = jax.random.PRNGKey(0)

# Jitted entry points (also proves they jit): one XLA compile per shape instead of one per primitive.
split = jax.jit(masf.spectral_split, static_argnames=("ratio", "shape"))
patch_mask = jax.jit(masf.patch_mask, static_argnames=("batch", "h", "w", "patch", "ratio"))
frequency_mask = jax.jit(masf.frequency_mask, static_argnames=("batch", "h", "w", "ratio"))
apply_frequency_mask = jax.jit(masf.apply_frequency_mask)
perturb_phase = jax.jit(masf.perturb_phase)
ttsa_views = jax.jit(masf.ttsa_views, static_argnames=("n",))
hermitian_phase_noise = jax.jit(masf.hermitian_phase_noise, static_argnames=("h", "w", "c"))
cosine_distance = jax.jit(masf.cosine_distance)
amplitude_mse = jax.jit(masf.amplitude_mse)
distillation_loss = jax.jit(masf.distillation_loss)


def _rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _checkerboard(b, h, w, c, amplitude):
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    board = np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    return np.broadcast_to(board[None, :, :, None] * amplitude, (b, h, w, c)).astype(np.float32)


# --------------------------------------------------------------------------- low-frequency mask


def test_square_mask_hand_case_8x8():
    # |f| <= 0.5 * 8 / 2 = 2 on both axes: frequencies 0, 1, 2, -2, -1 -> indices 0, 1, 2, 6, 7
    m = np.asarray(masf.low_frequency_mask(8, 8, ratio=0.5, shape="square"))
    keep = np.array([1, 1, 1, 0, 0, 0, 1, 1], bool)
    np.testing.assert_array_equal(m, keep[:, None] & keep[None, :])


def test_square_mask_hand_case_odd_and_rectangular():
    # h = 5: 0.3 * 5 / 2 = 0.75 -> only f = 0; w = 10: 0.3 * 10 / 2 = 1.5 -> |f| <= 1
    m = np.asarray(masf.low_frequency_mask(5, 10, ratio=0.3))
    expected = np.zeros((5, 10), bool)
    expected[0, [0, 1, 9]] = True
    np.testing.assert_array_equal(m, expected)


def test_circle_mask_hand_case():
    # 8x8, r = 0.5: (fy/4)^2 + (fx/4)^2 <= 0.25  <=>  fy^2 + fx^2 <= 4
    m = np.asarray(masf.low_frequency_mask(8, 8, ratio=0.5, shape="circle"))
    f = np.fft.fftfreq(8) * 8
    expected = (f[:, None] ** 2 + f[None, :] ** 2) <= 4
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 13  # (0,0), 4 x (+-1,0)/(0,+-1), 4 x (+-1,+-1), 4 x (+-2,0)/(0,+-2)
    assert m[0, 2] and not m[2, 2] and not m[1, 2]


def test_mask_ratio_limits_and_errors():
    assert np.asarray(masf.low_frequency_mask(7, 6, ratio=1.0)).all()
    m0 = np.asarray(masf.low_frequency_mask(7, 6, ratio=0.0))
    assert m0.sum() == 1 and m0[0, 0]
    with pytest.raises(ValueError):
        masf.low_frequency_mask(8, 8, shape="diamond")
    with pytest.raises(ValueError):
        masf.low_frequency_mask(8, 8, ratio=1.5)


@pytest.mark.parametrize("shape", ["square", "circle"])
@pytest.mark.parametrize("size", [(8, 8), (7, 9), (16, 10), (5, 5)])
def test_mask_symmetric(shape, size):
    h, w = size
    m = np.asarray(masf.low_frequency_mask(h, w, 0.3, shape))
    mirrored = m[(-np.arange(h)) % h][:, (-np.arange(w)) % w]
    np.testing.assert_array_equal(m, mirrored)


@pytest.mark.parametrize("shape", ["square", "circle"])
@pytest.mark.parametrize("size", [(8, 8), (7, 9), (16, 10)])
def test_low_part_of_real_input_is_real(shape, size):
    h, w = size
    x = _rand((h, w), seed=1).astype(np.float64)
    m = np.asarray(masf.low_frequency_mask(h, w, 0.6, shape))
    low = np.fft.ifft2(np.fft.fft2(x, norm="ortho") * m, norm="ortho")
    assert np.abs(low.imag).max() < 1e-12 * np.abs(low.real).max()
    # and an asymmetric mask would not be: the check can fail
    bad = m.copy()
    bad[1, 0] = True
    bad[-1, 0] = False
    low_bad = np.fft.ifft2(np.fft.fft2(x, norm="ortho") * bad, norm="ortho")
    assert np.abs(low_bad.imag).max() > 1e-3


# --------------------------------------------------------------------------- spectral split


@pytest.mark.parametrize("shape", ["square", "circle"])
@pytest.mark.parametrize("size", [(8, 8), (7, 9), (16, 11)])
def test_split_reconstructs_and_matches_numpy(shape, size):
    h, w = size
    x = _rand((2, h, w, 3), seed=2)
    low, high = split(jnp.asarray(x), ratio=0.3, shape=shape)
    assert low.dtype == jnp.float32 and low.shape == x.shape
    np.testing.assert_allclose(np.asarray(low) + np.asarray(high), x, atol=1e-5)
    m = np.asarray(masf.low_frequency_mask(h, w, 0.3, shape))[None, :, :, None]
    ref = np.fft.ifft2(np.fft.fft2(x.astype(np.float64), axes=(1, 2), norm="ortho") * m, axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(np.asarray(low), ref.real, atol=1e-5)


def test_split_of_constant_and_nyquist():
    # a constant is all low frequency, a checkerboard (Nyquist) all high
    const = jnp.full((1, 8, 8, 2), 3.0)
    low, high = split(const)
    np.testing.assert_allclose(np.asarray(low), 3.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(high), 0.0, atol=1e-6)
    board = jnp.asarray(_checkerboard(1, 8, 8, 2, 5.0))
    low, high = split(board)
    np.testing.assert_allclose(np.asarray(low), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(high), np.asarray(board), atol=1e-5)


# --------------------------------------------------------------------------- patch mask


# (h, w, dropped): 8x8 -> 4x4 = 16 patches, round(0.35 * 16) = round(5.6) = 6;
# 7x9 -> 4x5 = 20 patches (the last row/column of patches 1 pixel wide), round(7.0) = 7
@pytest.mark.parametrize("h,w,n_drop", [(8, 8, 6), (7, 9, 7)])
def test_patch_mask_count_blocks_and_samples(h, w, n_drop):
    b = 4
    m = np.asarray(patch_mask(KEY, b, h, w, patch=2, ratio=0.35))
    assert m.shape == (b, h, w, 1) and m.dtype == bool
    ph, pw = -(-h // 2), -(-w // 2)
    assert n_drop == int(np.floor(0.35 * ph * pw + 0.5))
    # pad to whole patches by edge replication, then every 2x2 block must be constant
    padded = np.pad(m[..., 0], ((0, 0), (0, 2 * ph - h), (0, 2 * pw - w)), mode="edge")
    blocks = padded.reshape(b, ph, 2, pw, 2)
    assert (blocks == blocks[:, :, :1, :, :1]).all()
    per_patch = blocks[:, :, 0, :, 0]
    np.testing.assert_array_equal((~per_patch).reshape(b, -1).sum(1), n_drop)
    assert m.mean() < 1.0 - 0.2  # the zeroed patches are a real share of the pixels
    # a different set per sample
    assert len({row.tobytes() for row in per_patch.reshape(b, -1)}) == b


def test_patch_mask_deterministic_and_batch_independent():
    a = patch_mask(KEY, 4, 8, 8, patch=2, ratio=0.35)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(patch_mask(KEY, 4, 8, 8, patch=2, ratio=0.35)))
    c = patch_mask(jax.random.PRNGKey(1), 4, 8, 8, patch=2, ratio=0.35)
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_array_equal(np.asarray(patch_mask(KEY, 2, 8, 8, patch=2, ratio=0.35)), np.asarray(a)[:2])


# --------------------------------------------------------------------------- frequency mask


# (h, w, dropped): 8 x 5 = 40 coefficients -> 10; 7 x 5 = 35 -> round(8.75) = 9
@pytest.mark.parametrize("h,w,n_drop", [(8, 8, 10), (7, 9, 9)])
def test_frequency_mask_count(h, w, n_drop):
    m = np.asarray(frequency_mask(KEY, 2, h, w, ratio=0.25))
    wf = w // 2 + 1
    assert m.shape == (2, h, wf, 1) and m.dtype == bool
    np.testing.assert_array_equal((~m).reshape(2, -1).sum(1), n_drop)
    assert not np.array_equal(m[0], m[1])


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_apply_frequency_mask(size):
    h, w = size
    x = _rand((2, h, w, 3), seed=3)
    ones = jnp.ones((2, h, w // 2 + 1, 1), bool)
    np.testing.assert_allclose(np.asarray(apply_frequency_mask(jnp.asarray(x), ones)), x, atol=1e-5)
    m = frequency_mask(KEY, 2, h, w, ratio=0.25)
    out = np.asarray(apply_frequency_mask(jnp.asarray(x), m))
    spec = np.fft.rfft2(x.astype(np.float64), axes=(1, 2), norm="ortho") * np.asarray(m)
    ref = np.fft.irfft2(spec, s=(h, w), axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert not np.allclose(out, x, atol=1e-2)


# --------------------------------------------------------------------------- TTSA


def _amp(x):
    return np.abs(np.fft.fft2(np.asarray(x, np.float64), axes=(1, 2)))


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (8, 9), (7, 8)])
def test_perturb_phase_keeps_amplitude(size):
    h, w = size
    x = _rand((2, h, w, 3), seed=4)
    out = np.asarray(perturb_phase(jnp.asarray(x), KEY, sigma=0.5))
    a0, a1 = _amp(x), _amp(out)
    assert np.abs(a1 - a0).max() <= 1e-6 * a0.max()
    assert np.abs(out - x).max() > 1e-2  # the view does differ


def test_naive_phase_noise_would_change_amplitude():
    # the same perturbation without the Hermitian constraint: irfft2 alters the amplitude
    x = _rand((1, 8, 8, 1), seed=5)[0, :, :, 0]
    spec = np.fft.rfft2(x)
    eps = np.random.default_rng(0).normal(0, 0.5, spec.shape)
    out = np.fft.irfft2(spec * np.exp(1j * eps), s=(8, 8))
    assert np.abs(np.abs(np.fft.fft2(out)) - np.abs(np.fft.fft2(x))).max() > 1e-3


@pytest.mark.parametrize("size", [(8, 9), (7, 8)])  # (even, odd) and (odd, even): every branch
def test_hermitian_noise_structure(size):
    h, w = size
    eps = np.asarray(hermitian_phase_noise(KEY, h, w, 2, sigma=1.0))
    cols = [0] + ([w // 2] if w % 2 == 0 else [])
    for c in cols:
        col = eps[:, c]
        np.testing.assert_array_equal(col, -col[(-np.arange(h)) % h])
        assert (col[0] == 0).all()
        if h % 2 == 0:
            assert (col[h // 2] == 0).all()
    assert (eps[1:, cols[0]] != 0).sum() > 0


def test_perturb_phase_identity_at_zero_sigma():
    x = _rand((2, 7, 8, 3), seed=6)  # the shape of one amplitude case: no new compile
    np.testing.assert_allclose(np.asarray(perturb_phase(jnp.asarray(x), KEY, sigma=0.0)), x, atol=1e-5)


def test_perturb_phase_batch_size_independent():
    x = jnp.asarray(_rand((4, 7, 8, 3), seed=7))
    full = np.asarray(perturb_phase(x, KEY, sigma=0.1))
    np.testing.assert_allclose(np.asarray(perturb_phase(x[:1], KEY, sigma=0.1)), full[:1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(perturb_phase(x[:2], KEY, sigma=0.1)), full[:2], atol=1e-6)
    # different samples get different noise: the same map at index 0 and 1 gives different views
    same = jnp.concatenate([x[:1], x[:1]])
    views = np.asarray(perturb_phase(same, KEY, sigma=0.1))
    assert np.abs(views[0] - views[1]).max() > 1e-3


def test_ttsa_views():
    x = jnp.asarray(_rand((2, 8, 8, 3), seed=8))
    views = np.asarray(ttsa_views(x, KEY, n=5, sigma=0.1))
    assert views.shape == (5, 2, 8, 8, 3)
    for j in range(5):
        np.testing.assert_allclose(
            views[j], np.asarray(perturb_phase(x, jax.random.fold_in(KEY, j), sigma=0.1)), atol=1e-6
        )
        assert np.abs(_amp(views[j]) - _amp(x)).max() <= 1e-6 * _amp(x).max()
    assert np.abs(views[0] - views[1]).max() > 1e-3


# --------------------------------------------------------------------------- losses


def _cos_ref(s, t, eps=1e-6):
    s, t = s.astype(np.float64), t.astype(np.float64)
    ns = np.maximum(np.linalg.norm(s, axis=-1), eps)
    nt = np.maximum(np.linalg.norm(t, axis=-1), eps)
    return 1.0 - np.sum(s * t, -1) / (ns * nt)


def _amp_mse_ref(s, t):
    fs = np.abs(np.fft.fft2(s.astype(np.float64), axes=(1, 2), norm="ortho"))
    ft = np.abs(np.fft.fft2(t.astype(np.float64), axes=(1, 2), norm="ortho"))
    return np.mean((fs - ft) ** 2)


def test_cosine_distance_vs_numpy():
    s, t = _rand((2, 5, 6, 7), seed=9), _rand((2, 5, 6, 7), seed=10)
    d = cosine_distance(jnp.asarray(s), jnp.asarray(t))
    assert d.shape == (2, 5, 6) and d.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(d), _cos_ref(s, t), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cosine_distance(jnp.asarray(s), jnp.asarray(2 * s))), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cosine_distance(jnp.asarray(s), jnp.asarray(-s))), 2.0, atol=1e-6)


def test_cosine_distance_float16_large():
    s = np.clip(_rand((1, 4, 4, 64), seed=11, scale=3e4), -65504, 65504)
    t = np.clip(_rand((1, 4, 4, 64), seed=12, scale=3e4), -65504, 65504)
    s16, t16 = s.astype(np.float16), t.astype(np.float16)
    assert np.isfinite(s16).all() and np.sum(s16.astype(np.float32) ** 2, -1).max() > 65504  # overflows in float16
    d = np.asarray(cosine_distance(jnp.asarray(s16), jnp.asarray(t16)))
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, _cos_ref(s16, t16), atol=1e-5)
    # a zero vector gives distance 1 and a finite gradient
    z = jnp.zeros((1, 1, 1, 4))
    g = jax.grad(lambda a: cosine_distance(a, jnp.ones((1, 1, 1, 4))).sum())(z)
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (6, 5)])
def test_amplitude_mse_vs_numpy(size):
    h, w = size
    s, t = _rand((2, h, w, 3), seed=13), _rand((2, h, w, 3), seed=14)
    v = amplitude_mse(jnp.asarray(s), jnp.asarray(t))
    assert v.shape == () and v.dtype == jnp.float32
    np.testing.assert_allclose(float(v), _amp_mse_ref(s, t), rtol=1e-5)
    # shift invariance of the amplitude: a rolled copy costs nothing
    np.testing.assert_allclose(float(amplitude_mse(jnp.asarray(s), jnp.roll(s, (2, 3), (1, 2)))), 0.0, atol=1e-9)


def test_distillation_loss_parts():
    s, t = _rand((2, 6, 6, 4), seed=15), _rand((2, 6, 6, 4), seed=16)
    loss, parts = distillation_loss(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(float(parts["cos"]), _cos_ref(s, t).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(parts["spectral"]), _amp_mse_ref(s, t), rtol=1e-5)
    np.testing.assert_allclose(float(loss), _cos_ref(s, t).mean() + 0.5 * _amp_mse_ref(s, t), rtol=1e-5)
    loss2, _ = distillation_loss(jnp.asarray(s), jnp.asarray(t), spectral_weight=0.0)
    np.testing.assert_allclose(float(loss2), _cos_ref(s, t).mean(), rtol=1e-5)


# --------------------------------------------------------------------------- half precision


def _fft_dtypes(closed_jaxpr):
    """Dtypes of the operands and results of every ``fft`` in a jaxpr, nested ones included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "fft":
                found.extend(str(v.aval.dtype) for v in list(eqn.invars) + list(eqn.outvars))
            for p in eqn.params.values():
                for sub in p if isinstance(p, (list, tuple)) else [p]:
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(closed_jaxpr.jaxpr)
    return found


def _half_cases():
    # float16 cannot hold 1e5 or 1e6 (max 65504): its largest case is its maximum
    cases = []
    for amp in (1e3, 1e4, 6.5e4):
        cases.append((jnp.float16, amp))
    for amp in (1e3, 1e5, 1e6):
        cases.append((jnp.bfloat16, amp))
    return cases


def _ops(key):
    fmask = frequency_mask(key, 2, 8, 8, ratio=0.25)
    return {
        "split_low": lambda x: split(x)[0],
        "split_high": lambda x: split(x, shape="circle")[1],
        "freq_mask": lambda x: apply_frequency_mask(x, fmask),
        "phase": lambda x: perturb_phase(x, key, sigma=0.3),
    }


@jax.jit
def _half_outputs(x, teacher, weight):
    """Every op's output and input gradient, and the loss, its parts and gradient (one compile per dtype)."""
    res = {}
    for name, op in _ops(KEY).items():
        res[name] = op(x)
        res[name + "_grad"] = jax.grad(lambda a, op=op: jnp.mean(op(a).astype(jnp.float32) * weight))(x)
    (loss, parts), g = jax.value_and_grad(masf.distillation_loss, has_aux=True)(x, teacher)
    res.update(loss=loss, loss_cos=parts["cos"], loss_spectral=parts["spectral"], loss_grad=g)
    return res


@pytest.mark.parametrize("dtype,amp", _half_cases())
def test_half_precision_finite_values_and_grads(dtype, amp):
    fmax = float(jnp.finfo(dtype).max)
    board = _checkerboard(2, 8, 8, 4, amp)
    rand = np.clip(_rand((2, 8, 8, 4), seed=17, scale=amp), -fmax, fmax)
    weight = jnp.asarray(_rand((2, 8, 8, 4), seed=18))
    teacher = jnp.asarray(np.clip(_rand((2, 8, 8, 4), seed=19, scale=amp), -fmax, fmax), dtype)
    for x_np in (board, rand):
        x = jnp.asarray(x_np, dtype)
        assert np.isfinite(np.asarray(x, np.float32)).all()
        # the student is the checkerboard / random map, the teacher random
        res = _half_outputs(x, teacher, weight)
        for name in _ops(KEY):
            assert res[name].dtype == dtype and res[name + "_grad"].dtype == dtype, name
        assert res["loss"].dtype == jnp.float32
        for name, v in res.items():
            assert np.isfinite(np.asarray(v, np.float32)).all(), (name, amp)
    # not vacuous: on the random float16 map at 65504 the float32 results exceed float16's range
    if dtype == jnp.float16 and amp > 6e4:
        spec = np.fft.fft2(rand.astype(np.float64), axes=(1, 2))
        circle = np.asarray(masf.low_frequency_mask(8, 8, 0.3, "circle"))[None, :, :, None]
        high = np.fft.ifft2(spec * ~circle, axes=(1, 2)).real
        assert np.abs(high).max() > fmax


def test_half_precision_loss_matches_float64():
    # bfloat16 at 1e6: the float32 loss equals the float64 one on the same (rounded) values
    s = jnp.asarray(_rand((1, 8, 8, 4), seed=20, scale=1e6), jnp.bfloat16)
    t = jnp.asarray(_checkerboard(1, 8, 8, 4, 1e6), jnp.bfloat16)
    loss, parts = distillation_loss(s, t)
    s64, t64 = np.asarray(s, np.float64), np.asarray(t, np.float64)
    np.testing.assert_allclose(float(parts["spectral"]), _amp_mse_ref(s64, t64), rtol=1e-5)
    np.testing.assert_allclose(float(parts["cos"]), _cos_ref(s64, t64).mean(), atol=1e-5)


def test_naive_float16_fft_path_overflows():
    # the failure the guarantee prevents: a float16 amplitude spectrum of a checkerboard overflows
    x = _checkerboard(1, 16, 16, 1, 6e4)[0, :, :, 0]
    with np.errstate(over="ignore"):
        amp16 = np.abs(np.fft.fft2(x)).astype(np.float16)  # unnormalised, as torch.fft default
    assert not np.isfinite(amp16).all()
    out = amplitude_mse(jnp.asarray(x[None, :, :, None], jnp.float16), jnp.zeros((1, 16, 16, 1), jnp.float16))
    assert np.isfinite(float(out))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_spectra_are_complex64(dtype):
    x = jnp.ones((2, 8, 8, 4), dtype)
    fns = dict(_ops(KEY))
    fns["loss"] = lambda a: distillation_loss(a, a)[0]
    for name, fn in fns.items():
        for jaxpr in (
            jax.make_jaxpr(fn)(x),
            jax.make_jaxpr(jax.grad(lambda a, fn=fn: jnp.sum(fn(a).astype(jnp.float32))))(x),
        ):
            dtypes = _fft_dtypes(jaxpr)
            assert dtypes, name  # the walker does find the FFTs
            assert set(dtypes) <= {"float32", "complex64"}, (name, dtypes)
            assert "complex64" in dtypes, name


def test_saturating_cast_instead_of_inf():
    # an ideal low-pass of a float16 map near its maximum overshoots 65504: clipped, not inf
    x = np.zeros((1, 16, 16, 1), np.float32)
    x[0, :8] = 65504.0
    x[0, 8:] = -65504.0
    low, high = split(jnp.asarray(x, jnp.float16), ratio=0.3)
    low32 = np.asarray(split(jnp.asarray(x), ratio=0.3)[0])
    assert np.abs(low32).max() > 65504.0  # the float32 result does overshoot
    assert np.isfinite(np.asarray(low, np.float32)).all() and np.isfinite(np.asarray(high, np.float32)).all()
    assert np.asarray(low, np.float32).max() == 65504.0
