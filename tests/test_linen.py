"""sparseout_jax.linen: nested replace_dropout contexts (the innermost wins), a traced q,
the trace-time nature of the context, and Sparseout's keyword-only q."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import sparseout_jax.linen as so_linen

X = jnp.linspace(-2.0, 2.0, 64).reshape(4, 16)
RNGS = {"dropout": jax.random.key(7)}


class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(16)(nn.Dropout(0.5, deterministic=False)(x))


NET = Net()
PARAMS = NET.init(jax.random.key(0), X)


def _apply():
  return NET.apply(PARAMS, X, rngs=RNGS)


def test_nested_contexts_the_innermost_wins():
  with so_linen.replace_dropout(1.5):
    outer_only = _apply()
  with so_linen.replace_dropout(2.5):
    inner_only = _apply()
  with so_linen.replace_dropout(1.5):
    with so_linen.replace_dropout(2.5):
      nested = _apply()
    after_inner = _apply()
  np.testing.assert_array_equal(nested, inner_only)  # the same ops on the same key
  np.testing.assert_array_equal(after_inner, outer_only)
  assert not np.array_equal(nested, outer_only)


def test_traced_q_inside_the_traced_function():
  @jax.jit
  def f(q):
    with so_linen.replace_dropout(q):
      return _apply()

  with so_linen.replace_dropout(1.5):
    static = _apply()
  # Traced q: exp(e log a) for the power instead of square roots, a few ulp apart.
  np.testing.assert_allclose(f(jnp.float32(1.5)), static, rtol=1e-5, atol=1e-6)


def test_a_step_traced_outside_the_context_keeps_dropout_inside_it():
  # Documented: the context acts at trace time; jit reuses the trace it has.
  step = jax.jit(_apply)
  dropout = step()
  with so_linen.replace_dropout(1.5):
    np.testing.assert_array_equal(step(), dropout)
    sparse = jax.jit(lambda: _apply())()
  assert not np.array_equal(sparse, dropout)


def test_positional_q_says_q_is_keyword_only():
  with pytest.raises(TypeError, match=r"q is keyword-only, Sparseout\(rate, q=1.5\)"):
    so_linen.Sparseout(0.5, 1.5)
  layer = so_linen.Sparseout(0.5, (0,), q=1.5)  # Dropout's positional broadcast_dims still
  assert layer.broadcast_dims == (0,) and layer.q == 1.5
