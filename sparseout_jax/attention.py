"""Sparseout on attention weights: Flax's attention functions with sparseout where they drop.

Flax's ``MultiHeadAttention`` (NNX) and ``MultiHeadDotProductAttention`` (Linen) drop
attention weights inside their ``attention_fn``, not through a ``Dropout`` module. The
functions here are drop-in ``attention_fn``\\ s: the same weights, the same key and mask
shape as Flax's dropout, and sparseout (paper 3) applied to the weights instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.nnx.nn import attention as nnx_attention
from flax.nnx.nn import dtypes
from jax import random

from sparseout_jax import _validate
from sparseout_jax.core import sparseout_with_mask


def _is_two(q: Any) -> bool:
  """q is the static number 2 (the dropout case, computed by Flax's own code)."""
  return not _validate.is_traced(q) and not isinstance(q, jax.Array) and float(q) == 2.0


def attention_weights_sparseout(
  rng: jax.Array,
  weights: jax.Array,
  rate: float | jax.Array,
  q: float | jax.Array,
  *,
  broadcast_dropout: bool = True,
  gradient: str = "exact",
) -> jax.Array:
  r"""Sparseout on attention weights, with the key and mask Flax's attention dropout draws.

  For weights w >= 0 (a softmax), sign(w) |w|**(q/2) = w**(q/2), so

  .. math::
    \tilde w = w + w^{q/2}\,\eta, \qquad \eta = m / (1 - \text{rate}) - 1,
    \qquad E[\tilde w] = w, \quad \operatorname{Var}[\tilde w] = w^q\,\text{rate}/(1-\text{rate}).

  The mask m ~ Bernoulli(1 - rate) is drawn from ``rng`` over the last two axes (query,
  key) and shared by the batch and heads when ``broadcast_dropout``, else over the whole
  array, as Flax's ``dot_product_attention_weights`` draws it. At q = 2 the result is
  Flax's ``w * (m / (1 - rate))`` bit for bit. Since 0 <= w <= 1, w**(q/2) > w for
  q < 2: a dropped weight becomes negative (w - w**(q/2)) and a kept one grows more than
  dropout's, the small weights most in proportion; for q > 2 a dropped weight keeps part
  of itself and the noise falls on the large weights.

  Args:
    rng: a PRNG key (the ``dropout_rng`` Flax passes).
    weights: attention weights, (batch..., heads, q_length, kv_length).
    rate: the drop probability in [0, 1], a Python number or a traced scalar.
    q: the norm, > 0, a Python number or a traced scalar.
    broadcast_dropout: one mask for every batch element and head.
    gradient: ``"exact"`` or ``"reference"`` derivative rule.

  Returns:
    The perturbed weights, with the shape and dtype of ``weights``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparseout_jax.attention import attention_weights_sparseout
    >>> w = jax.nn.softmax(jnp.arange(8.0).reshape(1, 1, 2, 4))
    >>> y = attention_weights_sparseout(jax.random.key(0), w, 0.5, 1.5)
    >>> y.shape
    (1, 1, 2, 4)
  """
  rate = _validate.check_rate(rate, "rate", allow_traced=True)
  shape = (1,) * (weights.ndim - 2) + weights.shape[-2:] if broadcast_dropout else weights.shape
  keep_prob = 1.0 - rate
  keep = random.bernoulli(rng, keep_prob, shape)
  if _is_two(q) and not _validate.is_traced(rate):
    dtype = weights.dtype  # Flax's own arithmetic: keep / keep_prob in the weights' dtype
    return weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype=dtype))
  return sparseout_with_mask(weights, keep, rate, q, gradient=gradient)


def _weighted_values(weights: jax.Array, value: jax.Array, precision: Any) -> jax.Array:
  """The sum of values by weights, as Flax NNX's dot_product_attention (grouped heads too)."""
  if weights.shape[-3] == value.shape[-2]:
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)
  q_heads, v_heads = weights.shape[-3], value.shape[-2]
  if q_heads % v_heads != 0:
    raise ValueError(f"query heads ({q_heads}) must be a multiple of value heads ({v_heads}).")
  weights = weights.reshape(weights.shape[:-3] + (v_heads, q_heads // v_heads) + weights.shape[-2:])
  out = jnp.einsum(
    "...hgqk,...kh1d->...qhgd", weights, jnp.expand_dims(value, -2), precision=precision
  )
  return out.reshape(out.shape[:-3] + (q_heads, out.shape[-1]))


def dot_product_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  broadcast_dropout: bool = True,
  dropout_rng: jax.Array | None = None,
  dropout_rate: float = 0.0,
  deterministic: bool = False,
  dtype: Any = None,
  precision: Any = None,
  module: Any = None,
  promote_dtype: Callable = dtypes.promote_dtype,
  is_causal: bool = False,
  *,
  q: float | jax.Array = 2.0,
  gradient: str = "exact",
) -> jax.Array:
  r"""``flax.nnx.dot_product_attention`` with sparseout on the attention weights.

  softmax(q k^T / sqrt(d) + bias) as Flax computes it, then
  :func:`attention_weights_sparseout` in place of Flax's dropout (the same key and mask),
  then the weighted sum of the values. Deterministic, ``dropout_rate == 0`` or q = 2 (a
  Python number): Flax's own function is called, so the result is Flax's bit for bit.
  ``q`` may be a traced scalar (a schedule). Bind q with :func:`sparseout_jax.nnx.attention_fn`
  to pass it as ``nnx.MultiHeadAttention(..., attention_fn=...)``.

  Args:
    query: (batch..., q_length, heads, depth).
    key: (batch..., kv_length, kv_heads, depth).
    value: (batch..., kv_length, kv_heads, v_depth).
    bias: added to the logits, broadcastable to (batch..., heads, q_length, kv_length).
    mask: boolean, False where attention is masked out.
    broadcast_dropout: one mask for every batch element and head.
    dropout_rng: the key of the noise.
    dropout_rate: the drop probability.
    deterministic: no noise.
    dtype: the computation dtype.
    precision: of the einsums.
    module: the module that sows the (noise-free) weights, as Flax.
    promote_dtype: as Flax's.
    is_causal: a causal mask.
    q: the norm, > 0 (2 = Flax's dropout).
    gradient: ``"exact"`` or ``"reference"`` derivative rule.

  Returns:
    (batch..., q_length, heads, v_depth).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparseout_jax.attention import dot_product_attention
    >>> x = jnp.ones((2, 5, 4, 8))
    >>> out = dot_product_attention(x, x, x, dropout_rng=jax.random.key(0), dropout_rate=0.1, q=1.5)
    >>> out.shape
    (2, 5, 4, 8)
  """
  args = (query, key, value, bias, mask, broadcast_dropout, dropout_rng, dropout_rate)
  if deterministic or dropout_rate == 0.0 or _is_two(q):
    return nnx_attention.dot_product_attention(
      *args, deterministic, dtype, precision, module, promote_dtype, is_causal
    )
  query, key, value = promote_dtype((query, key, value), dtype=dtype)
  dtype = query.dtype
  weights = nnx_attention.dot_product_attention_weights(
    query, key, bias, mask, broadcast_dropout, None, 0.0, True, dtype, precision, module,
    promote_dtype, is_causal,
  )  # fmt: skip
  weights = attention_weights_sparseout(
    dropout_rng, weights, dropout_rate, q, broadcast_dropout=broadcast_dropout, gradient=gradient
  )
  return _weighted_values(weights, value, precision)


def linen_dot_product_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  broadcast_dropout: bool = True,
  dropout_rng: jax.Array | None = None,
  dropout_rate: float = 0.0,
  deterministic: bool = False,
  dtype: Any = None,
  precision: Any = None,
  module: Any = None,
  force_fp32_for_softmax: bool = False,
  einsum_dot_general: Callable | None = None,
  qk_attn_weights_einsum: Callable | None = None,
  attn_weights_value_einsum: Callable | None = None,
  *,
  q: float | jax.Array = 2.0,
  gradient: str = "exact",
) -> jax.Array:
  r"""``flax.linen.dot_product_attention`` with sparseout on the attention weights.

  Flax Linen's own function computes the weights (deterministically) and the weighted
  sum; :func:`attention_weights_sparseout` perturbs the weights between the two, with the
  key and mask Flax's dropout would draw. Deterministic, ``dropout_rate == 0`` or q = 2
  (a Python number): Flax's own function, bit for bit. Bind q with
  :func:`sparseout_jax.linen.attention_fn` to pass it as
  ``nn.MultiHeadDotProductAttention(..., attention_fn=...)``.

  Args:
    query: (batch..., q_length, heads, depth).
    key: (batch..., kv_length, heads, depth).
    value: (batch..., kv_length, heads, v_depth).
    bias: added to the logits.
    mask: boolean, False where attention is masked out.
    broadcast_dropout: one mask for every batch element and head.
    dropout_rng: the key of the noise.
    dropout_rate: the drop probability.
    deterministic: no noise.
    dtype: the computation dtype.
    precision: of the einsums.
    module: the module that sows the (noise-free) weights, as Flax.
    force_fp32_for_softmax: as Flax's.
    einsum_dot_general: as Flax's.
    qk_attn_weights_einsum: as Flax's.
    attn_weights_value_einsum: as Flax's.
    q: the norm, > 0 (2 = Flax's dropout).
    gradient: ``"exact"`` or ``"reference"`` derivative rule.

  Returns:
    (batch..., q_length, heads, v_depth).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparseout_jax.attention import linen_dot_product_attention
    >>> x = jnp.ones((2, 5, 4, 8))
    >>> out = linen_dot_product_attention(
    ...   x, x, x, dropout_rng=jax.random.key(0), dropout_rate=0.1, q=2.5)
    >>> out.shape
    (2, 5, 4, 8)
  """
  args = (query, key, value, bias, mask, broadcast_dropout, dropout_rng, dropout_rate)
  einsums = dict(
    einsum_dot_general=einsum_dot_general,
    qk_attn_weights_einsum=qk_attn_weights_einsum,
    attn_weights_value_einsum=attn_weights_value_einsum,
  )
  if deterministic or dropout_rate == 0.0 or _is_two(q):
    return nn.dot_product_attention(
      *args, deterministic, dtype, precision, module, force_fp32_for_softmax, **einsums
    )
  if attn_weights_value_einsum is None:  # Flax's default einsum, with its precision
    attn_weights_value_einsum = functools.partial(
      jnp.einsum, precision=precision, _dot_general=einsum_dot_general or jax.lax.dot_general
    )
    qk_attn_weights_einsum = attn_weights_value_einsum
    precision = einsum_dot_general = None  # now carried by the einsums (Flax takes one or other)

  def noised_einsum(spec: str, weights: jax.Array, v: jax.Array) -> jax.Array:
    noised = attention_weights_sparseout(
      dropout_rng, weights, dropout_rate, q, broadcast_dropout=broadcast_dropout, gradient=gradient
    )
    return attn_weights_value_einsum(spec, noised, v)

  return nn.dot_product_attention(
    *args[:6], None, 0.0, True, dtype, precision, module, force_fp32_for_softmax,
    einsum_dot_general=einsum_dot_general, qk_attn_weights_einsum=qk_attn_weights_einsum,
    attn_weights_value_einsum=noised_einsum,
  )  # fmt: skip
