"""Sparseout under meshes: explicit and auto sharding, shard_map, pmap (8 CPU devices).

Each device must draw only its shard's random bits (read from the compiled HLO), q = 2 must
equal nnx.Dropout bit for bit under the same mesh, and gradients must equal the unsharded ones.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sparseout_jax import bridgeout_dense, embedding_sparseout, sparseout, weight_sparseout
from sparseout_jax.nnx import Sparseout

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(1), (64, 256))


def _mesh(axis_type):
  if len(jax.devices()) < 8:
    pytest.fail("needs the 8 CPU devices of tests/conftest.py")
  return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


def _largest_random_bits(compiled_text: str) -> int:
  """The most uint32 elements any RNG op of a compiled (per-device) program makes."""
  sizes = [0]
  for line in compiled_text.splitlines():
    if re.search(r"bernoulli|_uniform|random_bits|threefry|while/body", line):  # CPU threefry loop
      for dims in re.findall(r"u32\[([\d,]+)\]", line):
        sizes.append(int(np.prod([int(d) for d in dims.split(",")])))
  return max(sizes)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("q", [2.0, 1.5])
def test_each_device_draws_only_its_shard(axis_type, q):
  mesh = _mesh(axis_type)
  x = jax.device_put(X, NamedSharding(mesh, P("data")))
  with jax.set_mesh(mesh):
    f = jax.jit(lambda k, x: sparseout(k, x, 0.5, q))
    text = f.lower(KEY, x).compile().as_text()
    y = f(KEY, x)
  # Each of the 8 devices makes the bits of its (8, 256) shard, not of the whole (64, 256).
  assert _largest_random_bits(text) == 8 * 256
  assert y.sharding.spec[0] == "data"
  # The mask is the same bits on one device or eight (which entries are dropped); the arithmetic
  # is compiled once per partitioning, so the values agree to float32 rounding.
  whole = np.asarray(sparseout(KEY, X, 0.5, q))
  np.testing.assert_array_equal(np.asarray(y) == 0, whole == 0)
  np.testing.assert_allclose(np.asarray(y), whole, rtol=1e-6, atol=0)


def test_q2_layer_bit_equal_to_nnx_dropout_under_explicit_mesh():
  mesh = _mesh(AxisType.Explicit)
  x = jax.device_put(X, NamedSharding(mesh, P("data")))
  with jax.set_mesh(mesh):
    so = jax.jit(lambda k, x: Sparseout(0.5, q=2.0)(x, rngs=k))(KEY, x)
    do = jax.jit(lambda k, x: nnx.Dropout(0.5)(x, rngs=k))(KEY, x)
  np.testing.assert_array_equal(np.asarray(so), np.asarray(do))


@pytest.mark.parametrize("q", [2.0, 1.5])
@pytest.mark.parametrize("residual", ["mask", "key"])
def test_gradients_under_explicit_mesh_equal_unsharded(q, residual):
  mesh = _mesh(AxisType.Explicit)
  w = jnp.cos(X)

  def loss(x):
    return jnp.vdot(w, sparseout(KEY, x, 0.3, q, broadcast_dims=(1,), residual=residual))

  want = jax.grad(loss)(X)
  x = jax.device_put(X, NamedSharding(mesh, P("data")))
  with jax.set_mesh(mesh):
    got = jax.jit(jax.grad(loss))(x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def _shard_map_grad(f, w, mesh):
  """d/dw of sum over devices of f(device key, w), w replicated, inside shard_map."""

  def per_device(key, w):
    k = jax.random.fold_in(key, jax.lax.axis_index("data"))
    return jax.lax.psum(jnp.sum(jnp.sin(f(k, w))), "data")

  sm = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P()), out_specs=P())
  return jax.jit(jax.grad(sm, argnums=1))(KEY, w)


def _unsharded_grad(f, w):
  def total(w):
    keys = [jax.random.fold_in(KEY, i) for i in range(8)]
    return sum(jnp.sum(jnp.sin(f(k, w))) for k in keys)

  return jax.grad(total)(w)


VARIANTS = {
  "weight": lambda q: lambda k, w: weight_sparseout(k, w, 0.5, q),
  "sparseout_key": lambda q: lambda k, w: sparseout(k, w, 0.5, q, residual="key"),
  "locked": lambda q: lambda k, w: sparseout(k, w, 0.5, q, broadcast_dims=(0,)),
  "embedding": lambda q: lambda k, w: embedding_sparseout(k, w, jnp.array([[1, 3, 1]]), 0.5, q),
  "bridgeout": lambda q: lambda k, w: bridgeout_dense(k, jnp.ones((2, 6)), w, 0.5, q),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("q", [2.0, 1.5, 2.5])
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_shard_map_replicated_input_per_device_key(variant, q, axis_type):
  mesh = _mesh(axis_type)
  w = jax.random.normal(jax.random.key(2), (6, 5))
  f = VARIANTS[variant](q)
  got = _shard_map_grad(f, w, mesh)
  np.testing.assert_allclose(np.asarray(got), np.asarray(_unsharded_grad(f, w)), rtol=2e-5)


def test_pmap_per_device_keys_and_gradient():
  devices = jax.devices()[:8]
  keys = jax.random.split(KEY, 8)
  xs = jnp.stack([X[:8]] * 8)
  f = jax.pmap(
    jax.grad(lambda k, x: jnp.sum(jnp.sin(sparseout(k, x, 0.5, 1.5))), 1), devices=devices
  )
  got = f(keys, xs)
  for i in range(8):
    want = jax.grad(lambda x, k=keys[i]: jnp.sum(jnp.sin(sparseout(k, x, 0.5, 1.5))))(X[:8])
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=1e-6, atol=1e-6)
