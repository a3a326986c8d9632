"""At q = 2, sparseout and its layers equal Flax's Dropout bit for bit: outputs and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import sparseout_jax.linen as so_linen
import sparseout_jax.nnx as so_nnx
from sparseout_jax import sparseout

CASES = [((8, 16), ()), ((4, 6, 10), (1,)), ((4, 6, 10), (0, 2)), ((5, 7), (-1,))]


def _bits(a):
  return np.asarray(a).view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


def _assert_bits(a, b):
  assert a.dtype == b.dtype and a.shape == b.shape
  np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape,dims", CASES)
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_function_and_layers_equal_flax_dropout(dtype, shape, dims, rate):
  x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
  key = jax.random.key(42)
  ref_l = nn.Dropout(rate, broadcast_dims=dims, deterministic=False)
  ours_l = so_linen.Sparseout(rate, q=2.0, broadcast_dims=dims, deterministic=False)

  def linen_loss(mod):
    return lambda x: (mod.apply({}, x, rngs={"dropout": key}).astype(jnp.float32) ** 2).sum()

  # The bare function against Linen's Dropout given the same key at call time.
  want = ref_l.apply({}, x, rng=key)
  _assert_bits(sparseout(key, x, rate, 2.0, broadcast_dims=dims), want)
  _assert_bits(ours_l.apply({}, x, rng=key), want)
  _assert_bits(
    jax.grad(
      lambda x: (sparseout(key, x, rate, 2.0, broadcast_dims=dims).astype(jnp.float32) ** 2).sum()
    )(x),
    jax.grad(lambda x: (ref_l.apply({}, x, rng=key).astype(jnp.float32) ** 2).sum())(x),
  )
  # The layers through the rng collection (make_rng).
  _assert_bits(
    ours_l.apply({}, x, rngs={"dropout": key}), ref_l.apply({}, x, rngs={"dropout": key})
  )
  _assert_bits(jax.grad(linen_loss(ours_l))(x), jax.grad(linen_loss(ref_l))(x))

  ref_n = nnx.Dropout(rate, broadcast_dims=dims, rngs=nnx.Rngs(dropout=3))
  ours_n = so_nnx.Sparseout(rate, 2.0, broadcast_dims=dims, rngs=nnx.Rngs(dropout=3))
  for _ in range(2):  # the forked streams advance identically
    _assert_bits(ours_n(x), ref_n(x))
  _assert_bits(ours_n(x, rngs=key), ref_n(x, rngs=key))


class _NnxMLP(nnx.Module):
  def __init__(self, make_drop, rngs):
    self.l1 = nnx.Linear(12, 32, rngs=rngs)
    self.drop = make_drop(rngs)
    self.l2 = nnx.Linear(32, 3, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.drop(nnx.relu(self.l1(x))))


def test_nnx_model_with_sparseout_q2_trains_exactly_like_dropout():
  x = jax.random.normal(jax.random.key(1), (16, 12))
  models = [
    _NnxMLP(lambda r: nnx.Dropout(0.3, rngs=r), nnx.Rngs(0)),
    _NnxMLP(lambda r: so_nnx.Sparseout(0.3, q=2.0, rngs=r), nnx.Rngs(0)),
  ]
  outs = []
  for m in models:
    loss, grads = nnx.value_and_grad(lambda m: (m(x) ** 2).mean())(m)
    outs.append((loss, grads, m(x)))
  _assert_bits(outs[0][0], outs[1][0])
  _assert_bits(outs[0][2], outs[1][2])
  for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1]), strict=True):
    _assert_bits(a, b)
  # model.eval() turns both off.
  for m in models:
    m.eval()
  _assert_bits(models[0](x), models[1](x))


class _LinenMLP(nn.Module):
  drop: type
  kwargs: dict

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.Dense(32)(x))
    # Linen folds the module name into make_rng's key: the swap keeps the name.
    x = self.drop(**self.kwargs, name="drop")(x, deterministic=not train)
    return nn.Dense(3)(x)


def test_linen_model_with_sparseout_q2_equals_dropout_model():
  x = jax.random.normal(jax.random.key(1), (16, 12))
  ref = _LinenMLP(nn.Dropout, {"rate": 0.3})
  ours = _LinenMLP(so_linen.Sparseout, {"rate": 0.3, "q": 2.0})
  params = ref.init(jax.random.key(0), x, train=False)
  assert jax.tree.structure(params) == jax.tree.structure(
    ours.init(jax.random.key(0), x, train=False)
  )
  rngs = {"dropout": jax.random.key(5)}

  def loss(model):
    return lambda p: (model.apply(p, x, train=True, rngs=rngs) ** 2).mean()

  _assert_bits(loss(ref)(params), loss(ours)(params))
  for a, b in zip(
    jax.tree.leaves(jax.grad(loss(ref))(params)),
    jax.tree.leaves(jax.grad(loss(ours))(params)),
    strict=True,
  ):
    _assert_bits(a, b)
  _assert_bits(ref.apply(params, x, train=False), ours.apply(params, x, train=False))
