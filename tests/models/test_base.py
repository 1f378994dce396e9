"""The one gradient step of models/base.py: trainable masks, parameter averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxflow_ad.models.base import Stage, State, eval_params, trainable_mask


def _loss(params, state, batch, rng):
    value = sum(jnp.sum((p - batch["target"]) ** 2) for p in jax.tree_util.tree_leaves(params))
    return value, ({}, state.model_state)


def _state():
    params = {"a": {"w": jnp.array([1.0, -0.0])}, "b": jnp.array([3.0, 4.0])}
    return State(step=jnp.zeros((), jnp.int32), params=params, model_state={}, opt_state=(), stats={})


def test_frozen_parameters_are_bit_identical_and_have_no_optimizer_state():
    stage = Stage("s", 1, _loss, lambda spe: optax.adam(0.1), trainable=("b",))
    state = stage.init_opt(_state(), 1)
    assert len(jax.tree_util.tree_leaves(state.opt_state)) == 1 + 2  # count + mu, nu of b only
    for _ in range(3):
        state, m = jax.jit(stage.train_step(1))(state, {"target": jnp.zeros(2)}, None)
    w = np.asarray(state.params["a"]["w"])
    assert w[0] == 1.0 and np.signbit(w[1])  # -0.0 stays -0.0
    assert float(jnp.abs(state.params["b"] - jnp.array([3.0, 4.0])).min()) > 0.1
    with pytest.raises(ValueError, match="match no parameter"):
        trainable_mask(_state().params, ("c",))


def test_parameter_average():
    stage = Stage("s", 1, _loss, lambda spe: optax.sgd(0.25), param_ema=0.5)
    state = stage.init_opt(_state(), 1)
    step = jax.jit(stage.train_step(1))
    ema = _state().params["b"]
    for _ in range(4):
        state, _ = step(state, {"target": jnp.zeros(2)}, None)
        ema = 0.5 * ema + 0.5 * state.params["b"]
    np.testing.assert_allclose(eval_params(state)["b"], ema, rtol=1e-6)
    assert float(jnp.abs(eval_params(state)["b"] - state.params["b"]).max()) > 0.1
    plain = _state()
    assert eval_params(plain) is plain.params  # no average kept: the parameters themselves
    with pytest.raises(ValueError, match="train.param_ema"):
        Stage("s", 1, _loss, lambda spe: optax.sgd(0.1), param_ema=1.5).init_opt(_state(), 1)
