"""``torch_adam`` against PyTorch's Adam algorithm: written out in NumPy (always) and ``torch.optim.Adam``
itself (with the [torch] extra, ``make test-torch``)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxflow_ad.models.optim import torch_adam

SETTINGS = [  # PyramidFlow's (clip 1, betas (0.5, 0.9), eps 1e-4) and NF-BMR's (PyTorch defaults)
    dict(lr=2e-4, b1=0.5, b2=0.9, eps=1e-4, weight_decay=1e-5, clip_norm=1.0),
    dict(lr=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-5, clip_norm=None),
]


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(6, 6))
    return a @ a.T + np.eye(6), rng.normal(size=6), rng.normal(size=6)  # quadratic, target, start


def _optax_run(s, steps=25):
    h, target, x0 = _problem()
    tx = torch_adam(s["lr"], **{k: s[k] for k in ("b1", "b2", "eps", "weight_decay", "clip_norm")})
    x = jnp.asarray(x0, jnp.float32)
    state = tx.init(x)
    out = []
    for _ in range(steps):
        g = jnp.asarray(h, jnp.float32) @ (x - jnp.asarray(target, jnp.float32))
        u, state = tx.update(g, state, x)
        x = optax.apply_updates(x, u)
        out.append(np.asarray(x))
    return np.stack(out)


def _numpy_torch_adam(s, steps=25):
    """torch.optim.Adam's documented algorithm (and clip_grad_norm_), in float64."""
    h, target, x = _problem()
    m, v = np.zeros_like(x), np.zeros_like(x)
    out = []
    for t in range(1, steps + 1):
        g = h @ (x - target)
        if s["clip_norm"] is not None:
            g = g * min(1.0, s["clip_norm"] / (np.linalg.norm(g) + 1e-6))
        g = g + s["weight_decay"] * x
        m = s["b1"] * m + (1 - s["b1"]) * g
        v = s["b2"] * v + (1 - s["b2"]) * g * g
        x = x - s["lr"] * (m / (1 - s["b1"] ** t)) / (np.sqrt(v / (1 - s["b2"] ** t)) + s["eps"])
        out.append(x.copy())
    return np.stack(out)


@pytest.mark.parametrize("s", SETTINGS, ids=["pyramidflow", "nfbmr"])
def test_equals_torch_adam_written_out(s):
    np.testing.assert_allclose(_optax_run(s), _numpy_torch_adam(s), rtol=0, atol=2e-6)
    # a decay large enough to move the trajectory: still equal (the decay enters the moments: coupled L2)
    big = {**s, "weight_decay": 20.0}
    np.testing.assert_allclose(_optax_run(big), _numpy_torch_adam(big), rtol=0, atol=2e-6)
    assert np.abs(_optax_run(big) - _optax_run(s)).max() > 1e-4


@pytest.mark.torch
@pytest.mark.parametrize("s", SETTINGS, ids=["pyramidflow", "nfbmr"])
def test_equals_torch_optim_adam(s):
    torch = pytest.importorskip("torch")
    h, target, x0 = _problem()
    x = torch.tensor(x0, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([x], lr=s["lr"], betas=(s["b1"], s["b2"]), eps=s["eps"], weight_decay=s["weight_decay"])
    ht, tt = torch.tensor(h, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    out = []
    for _ in range(25):
        opt.zero_grad()
        (0.5 * (x - tt) @ ht @ (x - tt)).backward()
        if s["clip_norm"] is not None:
            torch.nn.utils.clip_grad_norm_([x], s["clip_norm"])
        opt.step()
        out.append(x.detach().numpy().copy())
    np.testing.assert_allclose(_optax_run(s), np.stack(out), rtol=0, atol=2e-6)
