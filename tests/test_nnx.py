"""sparseout_jax.nnx.replace_dropout on stacked layers and with filters: a Variable q on
layers made by nnx.vmap and run by nnx.scan (one shared value, or one per layer), ``only=``
as a path substring or a predicate, and a filter that selects nothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparseout_jax.nnx as so_nnx

D, LAYERS = 8, 3
X = jnp.cos(jnp.arange(2 * 5 * D, dtype=jnp.float32)).reshape(2, 5, D)


class Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.attn = nnx.MultiHeadAttention(
      2, D, dropout_rate=0.2, decode=False, deterministic=False, rngs=rngs
    )
    self.mlp = nnx.Linear(D, D, rngs=rngs)
    self.mlp_drop = nnx.Dropout(0.3, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(x)
    return x + self.mlp_drop(nnx.relu(self.mlp(x)))


class Stack(nnx.Module):
  """The scan-over-layers pattern: blocks made by nnx.vmap, run by nnx.scan."""

  def __init__(self, rngs: nnx.Rngs):
    @nnx.split_rngs(splits=LAYERS)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return Block(rngs)

    self.blocks = make(rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(x, block):
      return block(x)

    return body(x, self.blocks)


def _stack():
  return Stack(nnx.Rngs(params=0, dropout=1))


@nnx.jit
def _step(model):
  def loss(m):
    y = m(X)
    return jnp.sum(y * y), y

  (_, y), grads = nnx.value_and_grad(loss, has_aux=True)(model)
  return y, nnx.state(grads, nnx.Param)


def _close(a, b):
  # Same program, same values; the tolerance only allows for how XLA orders its arithmetic.
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6), a, b)


def test_variable_q_shared_or_per_layer_on_a_scanned_stack():
  shared_q = nnx.Variable(jnp.float32(1.5))
  shared, per_layer, static = _stack(), _stack(), _stack()
  assert so_nnx.replace_dropout(shared, shared_q) == 2  # the stacked Dropout and attention
  assert shared_q.shape == (LAYERS,)  # broadcast in place: the scan splits it by layer
  layer_q = nnx.Variable(jnp.full((LAYERS,), 1.5, jnp.float32))
  so_nnx.replace_dropout(per_layer, layer_q)
  so_nnx.replace_dropout(static, 1.5)
  y_shared, g_shared = _step(shared)
  _close((y_shared, g_shared), _step(per_layer))
  # A traced q computes the power as exp(e log a), a static one by square roots: a few ulp.
  y_static = _step(static)[0]
  np.testing.assert_allclose(y_shared, y_static, rtol=1e-5, atol=1e-5)
  # The schedule: setting the shared value sets every layer (both fresh: the same keys).
  scheduled, q = _stack(), nnx.Variable(jnp.float32(1.5))
  so_nnx.replace_dropout(scheduled, q)
  q[...] = 2.5
  per_layer_25 = _stack()
  so_nnx.replace_dropout(per_layer_25, nnx.Variable(jnp.array([2.5, 2.5, 2.5], jnp.float32)))
  y_25 = _step(per_layer_25)[0]
  _close(_step(scheduled)[0], y_25)
  # One value per layer: only the last layer's q differs, so the outputs differ.
  mixed = _stack()
  so_nnx.replace_dropout(mixed, nnx.Variable(jnp.array([2.5, 2.5, 1.0], jnp.float32)))
  assert not np.allclose(_step(mixed)[0], y_25)


def test_variable_q_of_the_wrong_shape_is_named():
  with pytest.raises(ValueError, match=r"stacked with shape \(3,\)"):
    so_nnx.replace_dropout(_stack(), nnx.Variable(jnp.ones((2,), jnp.float32)))


def test_only_takes_a_path_substring_or_a_predicate():
  model = _stack()
  assert so_nnx.replace_dropout(model, 1.5, only="mlp") == 1
  assert isinstance(model.blocks.mlp_drop, so_nnx.Sparseout)
  assert not isinstance(model.blocks.attn.attention_fn, so_nnx.SparseoutAttention)
  model = _stack()
  assert so_nnx.replace_dropout(model, 1.5, only=lambda path, m: "attn" in path) == 1
  assert isinstance(model.blocks.attn.attention_fn, so_nnx.SparseoutAttention)
  assert type(model.blocks.mlp_drop) is nnx.Dropout


def test_a_filter_that_selects_nothing_raises_and_an_empty_model_warns():
  with pytest.raises(ValueError, match="selects none of the model's dropout sites"):
    so_nnx.replace_dropout(_stack(), 1.5, only="decoder")
  with pytest.warns(UserWarning, match="no nnx.Dropout"):
    assert so_nnx.replace_dropout(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), 1.5) == 0
