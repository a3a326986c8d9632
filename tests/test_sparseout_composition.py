"""sparseout composes with jit, vmap, grad, pmap and checkpoint; edge rates behave as Flax."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from sparseout_jax import sparseout

X = jax.random.normal(jax.random.key(0), (6, 32))


@pytest.mark.parametrize("q", [1.5, 2.0, 2.5])
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey], ids=["typed", "raw"])
def test_jit_and_eager_agree_for_typed_and_raw_keys(q, make_key):
  key = make_key(3)
  f = lambda k, x: sparseout(k, x, 0.4, q)  # noqa: E731
  # Under jit XLA fuses (and may contract to FMA) and rewrites x / keep into x * (1 / keep), which
  # jax 0.7.0 does not do eagerly: jit and eager agree to an ulp. At q = 2 each mode is Flax's
  # Dropout in that mode, bit for bit (its own jit and eager differ there too).
  if q == 2.0:
    drop = lambda k, x: nn.Dropout(0.4, deterministic=False).apply({}, x, rng=k)  # noqa: E731
    chex.assert_trees_all_equal(jax.jit(f)(key, X), jax.jit(drop)(key, X))
    chex.assert_trees_all_equal(f(key, X), drop(key, X))
  chex.assert_trees_all_close(jax.jit(f)(key, X), f(key, X), rtol=3e-7, atol=1e-7)
  g = lambda k, x: jax.grad(lambda x: (f(k, x) ** 2).sum())(x)  # noqa: E731
  chex.assert_trees_all_close(jax.jit(g)(key, X), g(key, X), rtol=1e-6, atol=1e-6)


def test_typed_and_raw_keys_draw_the_same_mask():
  a = sparseout(jax.random.key(3), X, 0.4, 1.5)
  b = sparseout(jax.random.PRNGKey(3), X, 0.4, 1.5)
  chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("q", [1.5, 2.0])
def test_vmap_over_keys_and_inputs_equals_a_loop(q):
  keys = jax.random.split(jax.random.key(1), X.shape[0])
  f = lambda k, x: sparseout(k, x, 0.5, q)  # noqa: E731
  got = jax.vmap(f)(keys, X)
  want = jnp.stack([f(k, x) for k, x in zip(keys, X, strict=True)])
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)
  kept = np.asarray(got * jnp.sign(X) > jnp.abs(X))
  assert not np.array_equal(kept[0], kept[1])  # distinct masks per key
  grads = jax.vmap(jax.grad(lambda k, x: f(k, x).sum(), argnums=1))(keys, X)
  want_g = jnp.stack([jax.grad(lambda x: f(k, x).sum())(x) for k, x in zip(keys, X, strict=True)])  # noqa: B023
  chex.assert_trees_all_close(grads, want_g, rtol=1e-6, atol=1e-6)


def test_vmap_over_inputs_with_one_key_shares_the_key():
  got = jax.vmap(lambda x: sparseout(jax.random.key(2), x, 0.5, 1.5))(X)
  want = jnp.stack([sparseout(jax.random.key(2), x, 0.5, 1.5) for x in X])
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("q", [1.5, 2.0])
def test_pmap_with_fold_in_gives_distinct_masks_per_device(q):
  n = 4
  xs = jnp.broadcast_to(jnp.abs(X[0]) + 0.5, (n, *X[0].shape))  # same input on every device

  def step(key, x):
    k = jax.random.fold_in(key, jax.lax.axis_index("d"))
    y = sparseout(k, x, 0.5, q)
    g = jax.grad(lambda x: sparseout(k, x, 0.5, q).sum())(x)
    return y, jax.lax.pmean(g, "d")

  y, g = jax.pmap(step, axis_name="d", in_axes=(None, 0), devices=jax.devices()[:n])(
    jax.random.key(9), xs
  )
  masks = np.asarray(y) > np.asarray(xs)
  assert len({m.tobytes() for m in masks}) == n
  for i in range(n):
    want = sparseout(jax.random.fold_in(jax.random.key(9), i), xs[i], 0.5, q)
    chex.assert_trees_all_close(y[i], want, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(g[0], g[n - 1])  # pmean'ed: identical on every device


@pytest.mark.parametrize("residual", ["mask", "key"])
def test_checkpoint_remat_gives_the_same_gradient(residual):
  key = jax.random.key(4)

  def layer(x):
    return jnp.tanh(sparseout(key, jnp.sin(x) * 2, 0.3, 1.5, residual=residual))

  loss = lambda f: lambda x: (f(x) ** 2).sum()  # noqa: E731
  # Remat is not bit-exact (the recomputation is compiled apart), and the q < 2 derivative
  # 1 - c |x|**(q/2 - 1) can cancel to a small number: float32 rounding, relative and absolute.
  chex.assert_trees_all_close(
    jax.grad(loss(jax.checkpoint(layer)))(X), jax.grad(loss(layer))(X), rtol=1e-6, atol=2e-6
  )


def test_saved_residuals_are_x_and_a_byte_mask_or_the_key(capsys):
  key = jax.random.key(0)
  print_saved_residuals(lambda x: sparseout(key, x, 0.5, 1.5), X)
  mask_res = capsys.readouterr().out
  # x itself (an argument, or x passed through the op's platform switch: the same buffer).
  assert "f32[6,32] from the argument x" in mask_res or "f32[6,32] output of cond" in mask_res
  assert "bool[6,32]" in mask_res
  print_saved_residuals(lambda x: sparseout(key, x, 0.5, 1.5, residual="key"), X)
  key_res = capsys.readouterr().out
  assert "key<fry>[]" in key_res and "bool" not in key_res
  for out in (mask_res, key_res):  # never a float noise tensor
    assert sum("f32[6,32]" in line for line in out.splitlines()) == 1
  # Variational: the mask saved is the broadcast (1, 32) mask, not a full one.
  print_saved_residuals(lambda x: sparseout(key, x, 0.5, 1.5, broadcast_dims=(0,)), X)
  assert "bool[1,32]" in capsys.readouterr().out


@pytest.mark.parametrize("q", [0.5, 1.5, 2.0, 3.0])
def test_rate_zero_and_deterministic_are_identity_rate_one_is_zeros(q):
  key = jax.random.key(0)
  chex.assert_trees_all_equal(sparseout(key, X, 0.0, q), X)
  chex.assert_trees_all_equal(
    jax.grad(lambda x: sparseout(key, x, 0.0, q).sum())(X), jnp.ones_like(X)
  )
  chex.assert_trees_all_equal(sparseout(key, X, 1.0, q), jnp.zeros_like(X))
  chex.assert_trees_all_equal(
    jax.grad(lambda x: sparseout(key, x, 1.0, q).sum())(X), jnp.zeros_like(X)
  )


@pytest.mark.parametrize("dims", [(0,), (1,), (-1,), (0, 1)])
def test_broadcast_dims_share_the_mask(dims):
  x = jnp.abs(X) + 1.0
  y = sparseout(jax.random.key(1), x, 0.5, 1.5, broadcast_dims=dims)
  kept = np.asarray(y > x)
  for d in dims:
    assert np.all(kept == np.take(kept, [0], axis=d % 2))
