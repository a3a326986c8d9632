"""Sparseout on attention weights (sparseout_jax.attention): Flax's attention dropout in a
small NNX and a small Linen transformer, converted by replace_dropout or given as
``attention_fn``. At q = 2 outputs and gradients equal Flax's bit for bit (the library's
promise); q != 2 changes them; a traced q = 2 takes the sparseout arithmetic with the key
and mask Flax draws, so it equals Flax's dropout to rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import sparseout_jax.linen as so_linen
import sparseout_jax.nnx as so_nnx
from sparseout_jax.attention import attention_weights_sparseout

D, HEADS = 8, 2
X = jnp.sin(jnp.arange(2 * 5 * D, dtype=jnp.float32)).reshape(2, 5, D)


def _equal(a, b) -> None:
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


def _close(a, b) -> None:
  # A traced q = 2 computes w + w (m/k - 1) where Flax computes w (m / k): a few ulp apart.
  # A gradient that cancels (the key bias's is exactly 0: softmax ignores a shift) is a sum of
  # terms of the tree's scale, so its rounding is too: the absolute tolerance is 1e-6 of the
  # largest leaf (measured: up to 1e-7 of it, with jax 0.8 and 0.10).
  scale = max(float(np.max(np.abs(np.asarray(u)))) for u in jax.tree.leaves(a))
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6 * scale), a, b)


# --- NNX: a pre-norm transformer block whose only noise sites are attention and one Dropout.
class NnxBlock(nnx.Module):
  def __init__(self, attn_rate: float, drop_rate: float, rngs: nnx.Rngs, **attn_kwargs):
    self.norm = nnx.LayerNorm(D, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      HEADS,
      D,
      dropout_rate=attn_rate,
      decode=False,
      deterministic=False,
      rngs=rngs,
      **attn_kwargs,
    )
    self.mlp = nnx.Linear(D, D, rngs=rngs)
    self.drop = nnx.Dropout(drop_rate, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.norm(x))
    return x + self.drop(nnx.gelu(self.mlp(x)))


def _nnx_model(attn_rate=0.3, drop_rate=0.2, **attn_kwargs):
  return NnxBlock(attn_rate, drop_rate, nnx.Rngs(params=0, dropout=1), **attn_kwargs)


def _nnx_run(model):
  def loss(m):
    y = m(X)
    return jnp.sum(jnp.tanh(y) * y), y

  (_, y), grads = nnx.value_and_grad(loss, has_aux=True)(model)
  return y, nnx.state(grads, nnx.Param)


def test_nnx_attention_dropout_converted_bit_equal_at_q2_and_changed_otherwise():
  base, q2, q15, no_attn = (_nnx_model() for _ in range(4))
  assert so_nnx.replace_dropout(q2, q=2.0) == 2  # the Dropout and the attention layer
  assert isinstance(q2.attn.attention_fn, so_nnx.SparseoutAttention)
  so_nnx.replace_dropout(q15, q=1.5)
  assert so_nnx.replace_dropout(no_attn, q=1.5, attention=False) == 1
  ref = _nnx_run(base)
  _equal(ref, _nnx_run(q2))
  assert not np.array_equal(ref[0], _nnx_run(q15)[0])
  assert type(no_attn.attn.attention_fn) is not so_nnx.SparseoutAttention
  # Attention the only noise: q != 2 changes it; attention=False leaves it dropout.
  plain, converted, kept = (_nnx_model(drop_rate=0.0) for _ in range(3))
  so_nnx.replace_dropout(converted, q=1.5)
  assert so_nnx.replace_dropout(kept, q=1.5, attention=False) == 1  # the rate-0 Dropout
  ref_attn = _nnx_run(plain)
  assert not np.array_equal(ref_attn[0], _nnx_run(converted)[0])
  _equal(ref_attn, _nnx_run(kept))


def test_nnx_traced_q2_uses_flax_key_and_mask():
  base, traced = _nnx_model(drop_rate=0.0), _nnx_model(drop_rate=0.0)
  so_nnx.replace_dropout(traced, q=nnx.Variable(jnp.float32(2.0)))
  _close(_nnx_run(base), _nnx_run(traced))


def test_nnx_attention_fn_given_to_the_constructor():
  default = _nnx_model(drop_rate=0.0)
  given = _nnx_model(drop_rate=0.0, attention_fn=so_nnx.attention_fn(2.0))
  _equal(_nnx_run(default), _nnx_run(given))
  given = _nnx_model(drop_rate=0.0, attention_fn=so_nnx.attention_fn(2.5))
  assert not np.array_equal(_nnx_run(default)[0], _nnx_run(given)[0])


# --- Linen: the same block with nn.MultiHeadDotProductAttention (SelfAttention).
class LinenBlock(nn.Module):
  attn_rate: float = 0.3
  drop_rate: float = 0.2

  @nn.compact
  def __call__(self, x, train: bool):
    x = x + nn.MultiHeadDotProductAttention(
      HEADS, dropout_rate=self.attn_rate, deterministic=not train
    )(nn.LayerNorm()(x))
    return x + nn.Dropout(self.drop_rate, deterministic=not train)(nn.gelu(nn.Dense(D)(x)))


def _linen_run(model, params, q=None):
  def loss(p, q):
    y = model.apply(p, X, True, rngs={"dropout": jax.random.key(3)})
    return jnp.sum(jnp.tanh(y) * y), y

  if q is None:
    return jax.value_and_grad(loss, has_aux=True)(params, None)

  def traced(p, q):
    with so_linen.replace_dropout(q):
      return jax.value_and_grad(loss, has_aux=True)(p, q)

  return jax.jit(traced)(params, q)


def test_linen_attention_dropout_converted_bit_equal_at_q2_and_changed_otherwise():
  model = LinenBlock()
  params = model.init(jax.random.key(0), X, False)
  ref = _linen_run(model, params)
  with so_linen.replace_dropout(2.0):
    _equal(ref, _linen_run(model, params))
  attn_only = LinenBlock(drop_rate=0.0)
  ref_attn = _linen_run(attn_only, params)
  with so_linen.replace_dropout(1.5):
    assert not np.array_equal(ref[0][1], _linen_run(model, params)[0][1])
    assert not np.array_equal(ref_attn[0][1], _linen_run(attn_only, params)[0][1])
  with so_linen.replace_dropout(1.5, attention=False):
    _equal(ref_attn, _linen_run(attn_only, params))
  _close(ref_attn, _linen_run(attn_only, params, q=jnp.float32(2.0)))


def test_linen_attention_fn_given_to_the_constructor():
  x = X
  plain = nn.MultiHeadDotProductAttention(HEADS, dropout_rate=0.3, deterministic=False)
  params = plain.init(jax.random.key(0), x)
  rngs = {"dropout": jax.random.key(5)}
  ref = plain.apply(params, x, rngs=rngs)
  for q, same in ((2.0, True), (1.5, False)):
    layer = nn.MultiHeadDotProductAttention(
      HEADS, dropout_rate=0.3, deterministic=False, attention_fn=so_linen.attention_fn(q)
    )
    out = layer.apply(params, x, rngs=rngs)
    assert np.array_equal(ref, out) is same


@pytest.mark.parametrize("q", [1.5, 2.5])
def test_weights_noise_is_unbiased_and_signs_follow_q(q):
  # Each weight w gets w + w**(q/2) eta: dropped ones become w - w**(q/2), negative for
  # q < 2 (w < 1), a fraction of w for q > 2; over many keys the mean is w (E[eta] = 0).
  w = jax.nn.softmax(jnp.linspace(-2.0, 2.0, 16).reshape(1, 1, 4, 4))
  keys = jax.random.split(jax.random.key(0), 4000)
  ys = jax.vmap(lambda k: attention_weights_sparseout(k, w, 0.5, q))(keys)
  dropped = ys < w
  below = np.asarray(w - w ** (q / 2))
  np.testing.assert_allclose(np.where(dropped, ys, below), np.broadcast_to(below, ys.shape), 1e-5)
  assert bool(((below < 0) if q < 2 else (below > 0)).all())
  # 4000 draws: the mean's standard error is w**(q/2) / sqrt(4000) (Var[eta] = 1 at rate 0.5).
  np.testing.assert_allclose(ys.mean(0), w, atol=float(5 * (w ** (q / 2)).max() / np.sqrt(4000)))
