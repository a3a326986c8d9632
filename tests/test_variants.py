"""Embedding, weight and Bridgeout variants; Hoyer's sparsity."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparseout_jax import (
  bridgeout_dense,
  embedding_sparseout,
  hoyer_sparsity,
  sparseout,
  weight_sparseout,
)
from sparseout_jax.nnx import BridgeoutLinear

K = jax.random.key(11)
TABLE = jax.random.normal(jax.random.key(1), (50, 6))
IDS = jnp.array([[1, 4, 4, 9], [9, 1, 0, 49]])


@pytest.mark.parametrize("q", [1.0, 1.5, 2.0, 2.5])
def test_embedding_sparseout_equals_perturbing_the_table_then_gathering(q):
  got = embedding_sparseout(K, TABLE, IDS, 0.3, q)
  want = sparseout(K, TABLE, 0.3, q, broadcast_dims=(1,))[IDS]
  chex.assert_trees_all_equal(got, want)
  # The gradients into the table match too (scatter-add of the same per-row rule).
  w = jax.random.normal(jax.random.key(2), got.shape)
  g1 = jax.grad(lambda t: jnp.vdot(w, embedding_sparseout(K, t, IDS, 0.3, q)))(TABLE)
  g2 = jax.grad(lambda t: jnp.vdot(w, sparseout(K, t, 0.3, q, broadcast_dims=(1,))[IDS]))(TABLE)
  chex.assert_trees_all_close(g1, g2, rtol=1e-6)


def test_embedding_mask_is_per_word_type():
  out = embedding_sparseout(K, jnp.abs(TABLE) + 1, jnp.tile(jnp.arange(50), (3, 1)), 0.5, 1.5)
  kept = np.asarray(out > jnp.abs(TABLE) + 1)
  assert np.all(kept == kept[:1])  # every occurrence of a word shares its row's mask
  assert np.all(kept.all(-1) | ~kept.any(-1))  # the whole row is kept or dropped
  assert 5 < kept[0, :, 0].sum() < 45


def test_embedding_does_not_materialise_vocab_sized_noise():
  table = jnp.ones((100_000, 64))
  jaxpr = str(jax.make_jaxpr(lambda t: embedding_sparseout(K, t, IDS, 0.1, 1.5))(table))
  # No op makes a V x E array (V x 1 uniforms for the row mask are inherent).
  assert ":f32[100000,64] =" not in jaxpr and ":bool[100000,64] =" not in jaxpr


def test_weight_sparseout_is_sparseout_on_the_weight():
  w = jax.random.normal(jax.random.key(3), (8, 8))
  chex.assert_trees_all_equal(weight_sparseout(K, w, 0.5, 1.5), sparseout(K, w, 0.5, 1.5))


def test_bridgeout_per_example_masks_and_moments():
  x = jnp.ones((4000, 3))
  w = jnp.array([[0.5, -2.0], [1.0, 0.1], [-0.3, 3.0]])
  y = np.asarray(bridgeout_dense(K, x, w, 0.5, 1.5), np.float64)
  # 2 x 3 binary weight masks: all 64 distinct rows appear when each example has its own.
  assert len({tuple(r) for r in np.round(y, 5)}) == 64
  var = (np.abs(np.asarray(w, np.float64)) ** 1.5).sum(0)  # Var[y_j] = sum_i |W_ij|**q (x = 1)
  np.testing.assert_array_less(np.abs(y.mean(0) - np.asarray(w).sum(0)), 5 * np.sqrt(var / 4000))
  np.testing.assert_allclose(y.var(0), var, rtol=0.15)
  shared = np.asarray(bridgeout_dense(K, x, w, 0.5, 1.5, per_example=False))
  assert np.all(shared == shared[:1])


def test_bridgeout_layer_eval_is_plain_dense():
  layer = BridgeoutLinear(3, 2, 0.5, 1.5, rngs=nnx.Rngs(0))
  x = jnp.ones((5, 3))
  layer.eval()
  chex.assert_trees_all_close(layer(x), x @ layer.kernel[...] + layer.bias[...])
  layer.train()
  assert not np.allclose(layer(x), x @ layer.kernel[...] + layer.bias[...])


def test_hoyer_sparsity_values():
  a = jnp.array(
    [[0.0, 0.0, 5.0, 0.0], [1.0, 1.0, 1.0, 1.0], [-2.0, 2.0, -2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
  )
  np.testing.assert_allclose(hoyer_sparsity(a), [1.0, 0.0, 0.0, 1.0], atol=1e-6)
  v = np.array([3.0, 0.0, 1.0, 0.0, 0.0])
  want = (np.sqrt(5) - np.abs(v).sum() / np.linalg.norm(v)) / (np.sqrt(5) - 1)
  np.testing.assert_allclose(hoyer_sparsity(jnp.asarray(v)), want, rtol=1e-6)
  # Scale invariant, and safe for huge and tiny values.
  for s in (1e-30, 1e30):
    np.testing.assert_allclose(hoyer_sparsity(jnp.asarray(v * s, jnp.float32)), want, rtol=1e-5)
  np.testing.assert_allclose(hoyer_sparsity(a.T, axis=0), hoyer_sparsity(a))
